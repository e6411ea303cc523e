"""Write requirements-runtime.lock: the pinned closure of the runtime dependencies only.

requirements.lock pins everything installed for development (runtime + the `dev` and
`local` extras). Production images and the dependency audit need only what
`[project.dependencies]` pulls in. This script walks that requirement graph through the
installed distributions' metadata (importlib.metadata; markers evaluated for this
interpreter, extras followed where a requirement names them) and writes each reached
distribution with the version pinned in requirements.lock.

It refuses (exit 1, one line) when a reached distribution is missing from
requirements.lock, or when the installed version differs from the pinned one: re-install
with `pip install -c requirements.lock -e '.[dev,local]'` first.

    .venv/bin/python scripts/lock_runtime.py           # rewrite requirements-runtime.lock
    .venv/bin/python scripts/lock_runtime.py --check   # exit 1 if the file is out of date
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# Pinned runtime dependency closure of cc-analytics-stack ([project.dependencies] only,
# no dev/local extras), for Linux/CPython 3.11. Generated from requirements.lock by
# `python scripts/lock_runtime.py`; do not edit by hand. Audited by `make audit`.
"""


class LockError(RuntimeError):
    pass


def read_lock(path: Path) -> dict[str, tuple[str, str]]:
    """canonical name -> (name as spelled in the lock, version)."""
    pins: dict[str, tuple[str, str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise LockError(f"{path.name}: {raw!r} is not a name==version pin")
        pins[canonicalize_name(name)] = (name.strip(), version.strip())
    return pins


def project_requirements(pyproject: Path) -> list[Requirement]:
    data = tomllib.loads(pyproject.read_text())
    return [Requirement(spec) for spec in data["project"]["dependencies"]]


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    if not extras:
        return req.marker.evaluate({**env, "extra": ""})
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in extras)


def closure(roots: list[Requirement]) -> dict[str, str]:
    """canonical name -> installed version, for everything `roots` needs here."""
    seen: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    stack: list[tuple[Requirement, frozenset[str]]] = [(req, frozenset()) for req in roots]
    while stack:
        req, parent_extras = stack.pop()
        if not _applies(req, parent_extras):
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise LockError(f"{req.name} is required but not installed") from None
        seen[name] = dist.version
        for child in dist.requires or []:
            stack.append((Requirement(child), frozenset(req.extras)))
    return seen


def render(pins: dict[str, tuple[str, str]], needed: dict[str, str]) -> str:
    lines = []
    for name in sorted(needed, key=str.lower):
        if name in {"cc-analytics-stack"}:
            continue
        if name not in pins:
            raise LockError(f"{name} {needed[name]} is a runtime dependency missing from the lock")
        spelled, pinned = pins[name]
        if pinned != needed[name]:
            raise LockError(
                f"{spelled}: installed {needed[name]} but requirements.lock pins {pinned}; "
                "reinstall with `pip install -c requirements.lock -e '.[dev,local]'`"
            )
        lines.append(f"{spelled}=={pinned}")
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--out", type=Path, default=ROOT / "requirements-runtime.lock")
    args = parser.parse_args(argv)
    try:
        text = render(read_lock(args.lock), closure(project_requirements(ROOT / "pyproject.toml")))
    except LockError as exc:
        print(f"lock_runtime: {exc}", file=sys.stderr)
        return 1
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(
                f"lock_runtime: {args.out.name} is out of date; "
                "run `python scripts/lock_runtime.py`",
                file=sys.stderr,
            )
            return 1
        print(f"{args.out.name} is up to date ({text.count('==')} pins)")
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out.name} ({text.count('==')} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
