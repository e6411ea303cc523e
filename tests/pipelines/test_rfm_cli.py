"""`dagster asset materialize --select 'group:rfm'` with --partition and --partition-range."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.pipelines.rfm_helpers import insert_events, query
from tests.pipelines.test_rfm_pipeline import DAY, EXPECTED, D, known_dataset

ROOT = Path(__file__).resolve().parents[2]


def dagster(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "dagster"
    return subprocess.run(
        [str(exe), "asset", "materialize", "-m", "pipelines.definitions", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_cli_partition_and_partition_range(database_url: str, tmp_path: Path) -> None:
    insert_events(database_url, known_dataset())
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DATABASE_URL": database_url,
        "REDIS_URL": "redis://127.0.0.1:1/0",  # not used by the rfm group
        "KAFKA_BROKER": "127.0.0.1:1",
        "DATA_LAKE_DIR": str(tmp_path / "lake"),
        "RFM_START_DATE": "2026-01-01",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    ranged = dagster(
        ["--select", "group:rfm", "--partition-range", f"{D - 3 * DAY}...{D - DAY}"], env
    )
    assert ranged.returncode == 0, ranged.stderr[-3000:]
    snapshots = query(
        database_url, "SELECT DISTINCT run_id FROM rfm_partition_builds WHERE asset = 'rfm_scores'"
    )
    assert len(snapshots) == 1  # the whole range in one run
    assert query(database_url, "SELECT max(snapshot_date) FROM user_segments") == [(D - DAY,)]

    single = dagster(["--select", "group:rfm", "--partition", D.isoformat()], env)
    assert single.returncode == 0, single.stderr[-3000:]
    rows = query(
        database_url,
        "SELECT user_id, recency_days, frequency, monetary, rfm_group FROM user_segments "
        "ORDER BY user_id",
    )
    assert {row[0]: tuple(row[1:]) for row in rows} == EXPECTED
    days = query(database_url, "SELECT count(DISTINCT snapshot_date) FROM rfm_scores")
    assert days == [(4,)]
