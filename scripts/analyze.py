"""`make analyze SQL=path.sql`: run a SQL file in DuckDB over views of the Parquet lake.

Every dataset folder under ``DATA_LAKE_DIR`` (default ``.local/lake``; ``make up`` writes
it to ``.local/stack.env``) becomes a view named after it: ``user_actions``,
``rfm_scores``, ``site_visits`` (hive partition columns ``event_date``, ``snapshot_date``,
``visit_date``). The file may hold several statements; the result of the last one is
printed as a table.

Usage: python -m scripts.analyze PATH [--lake DIR] [--max-rows N] [--csv]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import duckdb

from pipelines.lake import create_views

ROOT = Path(__file__).resolve().parent.parent


def lake_dir(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("DATA_LAKE_DIR"):
        return Path(os.environ["DATA_LAKE_DIR"])
    state = Path(os.environ.get("CC_STATE_DIR") or ROOT / ".local")
    stack_env = state / "stack.env"
    if stack_env.exists():
        for line in stack_env.read_text().splitlines():
            if line.startswith("export DATA_LAKE_DIR="):
                import shlex

                return Path(shlex.split(line.split("=", 1)[1])[0])
    return ROOT / ".local" / "lake"


def run(sql_path: Path, lake: Path, *, max_rows: int = 200, csv: bool = False) -> str:
    """Execute the file; returns the printed form of the last statement's result."""
    sql = sql_path.read_text()
    conn = duckdb.connect()
    try:
        views = create_views(conn, lake)
        if not views:
            raise SystemExit(f"analyze: no Parquet datasets under {lake} (run `make run` first)")
        relation = None
        statements = [s for s in _split(sql) if s.strip()]
        for statement in statements:
            relation = conn.sql(statement)
        if relation is None:
            return ""
        frame = relation.pl()
        if csv:
            return frame.write_csv()
        import polars as pl

        with pl.Config(tbl_rows=max_rows, tbl_cols=50, fmt_str_lengths=60, tbl_width_chars=200):
            return str(frame)
    finally:
        conn.close()


def _split(sql: str) -> list[str]:
    """Split on semicolons outside quotes and comments (enough for analysis files)."""
    parts: list[str] = []
    current: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(sql):
        ch = sql[i]
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            current.append(ch)
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = len(sql) if end == -1 else end
            current.append(sql[i:end])
            i = end
            continue
        elif ch == ";":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return [p for p in parts if p.strip() and not _only_comments(p)]


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="analyze", description=__doc__.split("\n")[0])
    parser.add_argument("sql", type=Path)
    parser.add_argument("--lake", help="lake root (default: DATA_LAKE_DIR or .local/lake)")
    parser.add_argument("--max-rows", type=int, default=200)
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    args = parser.parse_args(argv)
    if not args.sql.is_file():
        print(f"analyze: no such SQL file: {args.sql}", file=sys.stderr)
        return 2
    lake = lake_dir(args.lake)
    try:
        output = run(args.sql, lake, max_rows=args.max_rows, csv=args.csv)
    except duckdb.Error as exc:
        print(f"analyze: {args.sql}: {exc}", file=sys.stderr)
        return 1
    print(f"-- {args.sql} over lake {lake}")
    print(output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
