"""The API as a real ``uvicorn`` process on a free port, for fuzzing and fault injection.

Tests that stop dependencies under load, or fuzz the API over HTTP, run the app exactly as
`make up` does (its own process, its own event loop, real sockets), not in the test's loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from devstack import servers

ROOT = Path(__file__).resolve().parents[2]

#: the API's dependency bounds in these tests (short, so faults show within seconds)
FAST_TIMEOUTS = {
    "API_PUBLISH_TIMEOUT_S": "2",
    "API_DB_TIMEOUT_S": "1",
    "API_REDIS_TIMEOUT_S": "0.2",
}

_STACK_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "KAFKA_BROKER",
    "KAFKA_TOPIC",
    "JWT_SECRET",
    "AUTH_DISABLED",
    "DATA_LAKE_DIR",
    "RFM_START_DATE",
    "RECOMMENDATION_POLICY_FILE",
    *FAST_TIMEOUTS,
)


class ApiProcess:
    """``uvicorn serving.main:app`` on 127.0.0.1:<free port>, output in ``log``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        base = {k: v for k, v in os.environ.items() if k not in _STACK_VARS}
        self.env = {**base, **FAST_TIMEOUTS, **env}
        self.log = log
        self.port = servers.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "serving.main:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited during start-up:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the API did not answer /health within {timeout:.0f}s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def api_process(env: dict[str, str], log: Path) -> Iterator[ApiProcess]:
    api = ApiProcess(env, log)
    api.start()
    try:
        yield api
    finally:
        api.stop()
