"""`make bench`: start the local stack (as `make up` does), run every `bench/*.py`
script against it, and print all their `RESULT <name> <value> <unit>` lines.

Each script is a separate process that reads the stack's settings from the
environment and prints RESULT lines (plus the peer or limit each figure is compared
to). Scripts whose name starts with `soak` are long-running and excluded; run them by
hand (`python bench/soak.py`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from devstack import cli

HERE = Path(__file__).resolve().parent


def main() -> int:
    env_values = cli.up()
    env = {**os.environ, **env_values}
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith(("_", "soak")))
    only = os.environ.get("BENCH")
    if only:
        scripts = [p for p in scripts if p.stem in only.split(",")]
    results: list[str] = []
    failed: list[str] = []
    for script in scripts:
        print(f"== bench/{script.name}", flush=True)
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            cwd=HERE.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("RESULT "):
                results.append(line.rstrip())
        if proc.wait() != 0:
            failed.append(script.name)
        print(f"== bench/{script.name} took {time.monotonic() - started:.1f}s", flush=True)
    print("\n== RESULT summary")
    for line in results:
        print(line)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
