"""The Dagster instance of the stack (dagster.yaml: run, event-log and schedule storage in
Postgres via DAGSTER_PG_URL) can record a run. Found by bench/soak.py: with SQLAlchemy 2.1 a
bare ``postgresql://`` URL picks psycopg 3, every event write of dagster-postgres failed
(``NOTIFY run_events, $1``), and no sensor-launched ingestion run ever started."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import dagster as dg
import pytest

from devstack import servers
from devstack.cli import dagster_storage_url
from devstack.servers import PostgresServer

ROOT = Path(__file__).resolve().parents[2]


@dg.asset
def storage_probe() -> int:
    return 1


@pytest.mark.parametrize("given", ["postgresql://", "postgres://", "postgresql+psycopg2://"])
def test_stack_dagster_instance_records_runs_in_postgres(
    pg_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
):
    name = f"dagster_{uuid.uuid4().hex[:10]}"
    servers.ensure_database(pg_server.url(), name)
    try:
        url = servers.database_url(pg_server.url(), name)
        monkeypatch.setenv("DAGSTER_PG_URL", dagster_storage_url(given + url.split("://", 1)[1]))
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            result = dg.materialize([storage_probe], instance=instance)
            assert result.success
            runs = instance.get_run_records()
            assert [r.dagster_run.run_id for r in runs] == [result.run_id]
            assert instance.get_latest_materialization_event(storage_probe.key) is not None
    finally:
        servers.drop_database(pg_server.url(), name)
