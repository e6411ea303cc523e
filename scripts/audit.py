"""`make audit`: pip-audit over the locked runtime dependencies, with a reasoned ignore file.

pip-audit has no ignore-file option, so this wrapper reads `.pip-audit-ignore` (one
vulnerability id per line followed by `# reason`; blank lines and comment lines allowed)
and passes `--ignore-vuln ID` for each entry. An entry without a reason is refused.

The audit runs with `--strict`: a dependency the vulnerability service could not be
asked about fails the audit (pip-audit would otherwise only warn and pass). When the
service cannot be reached at all, this script says so in one line and exits non-zero:
an audit that did not run never passes.

    python scripts/audit.py                                    # PyPI's vulnerability data
    python scripts/audit.py --vulnerability-service osv        # OSV instead
    python scripts/audit.py -r other.lock --ignore-file path   # other inputs

Extra arguments after the known options go to pip-audit unchanged.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9]*-[A-Za-z0-9][A-Za-z0-9:._-]*$")

# Exit code when the vulnerability service could not be queried (not a pass, not a finding).
EXIT_UNREACHABLE = 3

UNREACHABLE_MARKERS = (
    "Dependency not found on PyPI and could not be audited",
    "Could not connect to",
    "ConnectionError",
    "NameResolutionError",
    "Max retries exceeded",
    "Read timed out",
)


class IgnoreFileError(ValueError):
    """A malformed `.pip-audit-ignore` line; the message names the file and line."""


@dataclass(frozen=True)
class Ignored:
    vuln_id: str
    reason: str


def parse_ignore_file(text: str, source: str = ".pip-audit-ignore") -> list[Ignored]:
    """Entries of an ignore file: `ID  # reason`. Comment-only and blank lines are skipped."""
    entries: list[Ignored] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        vuln_id, _, reason = (part.strip() for part in line.partition("#"))
        if not ID_PATTERN.match(vuln_id):
            raise IgnoreFileError(
                f"{source}:{number}: {vuln_id!r} is not a vulnerability id "
                "(e.g. GHSA-xxxx-xxxx-xxxx)"
            )
        if not reason:
            raise IgnoreFileError(
                f"{source}:{number}: {vuln_id} has no reason; write `{vuln_id}  # why it is safe`"
            )
        if vuln_id in seen:
            raise IgnoreFileError(f"{source}:{number}: {vuln_id} is listed twice")
        seen.add(vuln_id)
        entries.append(Ignored(vuln_id, reason))
    return entries


def pip_audit_command(
    requirements: Path, ignored: list[Ignored], extra: list[str], pip_audit: str
) -> list[str]:
    cmd = [
        pip_audit,
        "--strict",
        "--requirement",
        str(requirements),
        # the file is a complete pinned closure: audit exactly these pins, no resolver
        "--no-deps",
        "--disable-pip",
        "--progress-spinner",
        "off",
    ]
    for entry in ignored:
        cmd += ["--ignore-vuln", entry.vuln_id]
    return cmd + extra


def _default_pip_audit() -> str:
    candidate = Path(sys.executable).parent / "pip-audit"
    return str(candidate) if candidate.exists() else "pip-audit"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-r", "--requirement", type=Path, default=ROOT / "requirements-runtime.lock"
    )
    parser.add_argument("--ignore-file", type=Path, default=ROOT / ".pip-audit-ignore")
    parser.add_argument("--pip-audit", default=_default_pip_audit(), help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(argv)

    if not args.requirement.exists():
        print(f"audit: {args.requirement} does not exist", file=sys.stderr)
        return 2
    try:
        text = args.ignore_file.read_text() if args.ignore_file.exists() else ""
        ignored = parse_ignore_file(text, args.ignore_file.name)
    except IgnoreFileError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    for entry in ignored:
        print(f"audit: ignoring {entry.vuln_id} ({entry.reason})", file=sys.stderr)

    cmd = pip_audit_command(args.requirement, ignored, extra, args.pip_audit)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode == 0:
        print(f"audit: no known vulnerabilities in {args.requirement.name}", file=sys.stderr)
        return 0
    if "Traceback" in proc.stderr or any(m in proc.stderr for m in UNREACHABLE_MARKERS):
        print(
            "audit: FAILED - the vulnerability service could not be queried for every "
            "dependency (network or service problem), so the audit did not run; it is not "
            "a pass. Check access to https://pypi.org/pypi/<name>/<version>/json, or try "
            "`--vulnerability-service osv` (https://api.osv.dev).",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    print(
        "audit: FAILED - known vulnerabilities above. Upgrade the package (requirements.lock, "
        "then `python scripts/lock_runtime.py`) or list the id with a reason in "
        f"{args.ignore_file.name}.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
