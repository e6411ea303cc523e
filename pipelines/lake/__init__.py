"""The Parquet lake: hive-style folders per day under ``DATA_LAKE_DIR``, read with DuckDB.

Layout (one file per partition, replaced atomically when the partition is rebuilt)::

    <root>/user_actions/event_date=YYYY-MM-DD/part-0.parquet     raw events per event day
    <root>/user_daily_activity/activity_date=YYYY-MM-DD/...        per user and day aggregates
    <root>/rfm_scores/snapshot_date=YYYY-MM-DD/part-0.parquet    RFM snapshot per day
    <root>/site_visits/visit_date=YYYY-MM-DD/part-0.parquet      site visits per day

The partition column lives in the folder name only (DuckDB's ``hive_partitioning``
restores it). No Dagster, no Postgres here: callers hand in Polars frames.

A file written for a build recorded in Postgres carries that build's id in its Parquet
key-value metadata (``cc.build_id``). :func:`read_partition` returns a partition only
when its file carries the id asked for, so the RFM chain can read a day back from the
lake instead of Postgres exactly when the file holds the build Postgres recorded.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

__all__ = [
    "BUILD_ID_KEY",
    "DATASETS",
    "Dataset",
    "create_views",
    "partition_path",
    "read_partition",
    "write_partition",
]

#: Parquet key-value metadata key holding the id of the build that wrote the file.
BUILD_ID_KEY = "cc.build_id"


@dataclass(frozen=True)
class Dataset:
    """A lake dataset: its folder (also the DuckDB view name) and its partition column."""

    name: str
    partition_column: str


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("user_actions", "event_date"),
        Dataset("user_daily_activity", "activity_date"),
        Dataset("rfm_scores", "snapshot_date"),
        Dataset("site_visits", "visit_date"),
    )
}

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def partition_path(root: Path | str, dataset: Dataset, day: dt.date) -> Path:
    return Path(root) / dataset.name / f"{dataset.partition_column}={day.isoformat()}"


def write_partition(
    root: Path | str,
    dataset: Dataset,
    day: dt.date,
    frame: pl.DataFrame,
    *,
    build_id: str | None = None,
) -> Path:
    """Write ``frame`` as the partition ``day`` of ``dataset``; replaces it atomically.

    The file is written next to its final name and renamed, so a reader sees the old file
    or the new one, never a half-written one. A day without rows still gets a (zero-row)
    file, so "built, empty" is distinguishable from "not built". ``build_id`` is stored
    in the file's metadata (see :func:`read_partition`).
    """
    folder = partition_path(root, dataset, day)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / "part-0.parquet"
    tmp = folder / f".part-0.{uuid.uuid4().hex}.tmp"
    data = frame.drop(dataset.partition_column, strict=False)
    try:
        data.write_parquet(
            tmp,
            compression="zstd",
            compression_level=1,
            statistics=True,
            metadata={BUILD_ID_KEY: build_id} if build_id else None,
        )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def read_partition(
    root: Path | str, dataset: Dataset, day: dt.date, *, build_id: str, columns: list[str]
) -> pl.LazyFrame | None:
    """Partition ``day`` of ``dataset`` (``columns``, partition column included) if its
    file was written by build ``build_id``; None when the file is absent, unreadable or
    from another build."""
    path = partition_path(root, dataset, day) / "part-0.parquet"
    try:
        if pl.read_parquet_metadata(path).get(BUILD_ID_KEY) != build_id:
            return None
    except (OSError, pl.exceptions.ComputeError):
        return None
    stored = [c for c in columns if c != dataset.partition_column]
    frame = pl.scan_parquet(path).select(stored)
    if dataset.partition_column in columns:
        frame = frame.with_columns(pl.lit(day).alias(dataset.partition_column))
    return frame.select(columns)


def create_views(conn: Any, root: Path | str) -> list[str]:
    """Create one DuckDB view per lake dataset found under ``root``; returns their names.

    ``conn`` is a ``duckdb.DuckDBPyConnection``. Besides the known datasets, any other
    top-level folder holding hive-partitioned Parquet gets a view named after it.
    """
    root = Path(root)
    names: list[str] = []
    if not root.is_dir():
        return names
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not _NAME.match(folder.name) or not any(folder.glob("*=*/*.parquet")):
            continue
        pattern = str(folder / "*=*" / "*.parquet").replace("'", "''")
        conn.execute(
            f'CREATE OR REPLACE VIEW "{folder.name}" AS SELECT * FROM read_parquet('
            f"'{pattern}', hive_partitioning = true, union_by_name = true)"
        )
        names.append(folder.name)
    return names
