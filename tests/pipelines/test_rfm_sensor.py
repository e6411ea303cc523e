"""The late-data sensor against a real Postgres and a Dagster test instance."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg

from pipelines.defs import rfm
from pipelines.defs.resources import PostgresResource
from tests.pipelines.rfm_helpers import at, event, insert_events, materialize, query
from tests.pipelines.test_rfm_pipeline import DAY, D, known_dataset


def evaluate(instance: dg.DagsterInstance, url: str, cursor: str | None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"postgres": PostgresResource(database_url=url)}
    )
    result = rfm.rfm_late_data_sensor(context)
    new_cursor = getattr(result, "cursor", None) or context.cursor
    return result, new_cursor


def test_late_event_triggers_a_rebuild_newest_last(database_url: str, tmp_path: Path) -> None:
    insert_events(database_url, known_dataset())
    lake = tmp_path / "lake"
    with dg.instance_for_test() as instance:
        assert materialize(database_url, lake, D - 2 * DAY, D, instance=instance).success
        result, cursor = evaluate(instance, database_url, None)
        assert isinstance(result, dg.SkipReason), result

        # a late event for D-1 (user 9, new) is ingested after the snapshots were built
        now = dt.datetime.now(dt.UTC)
        insert_events(database_url, [event(9, at(D - DAY), spent=100, ingested_at=now)])
        # ... and a normal event for a day not built yet changes nothing
        insert_events(database_url, [event(10, at(D + DAY), ingested_at=now)])
        result, cursor = evaluate(instance, database_url, cursor)
        assert isinstance(result, dg.SensorResult)
        [request] = result.run_requests
        # one run over the stale range: D-1 first, D (the newest, which publishes) last
        assert request.tags["dagster/asset_partition_range_start"] == (D - DAY).isoformat()
        assert request.tags["dagster/asset_partition_range_end"] == D.isoformat()
        assert request.tags[rfm.LATE_DATA_TAG] == "late-data"

        # the sensor does not pile up runs while a rebuild is in flight
        instance.add_run(
            dg.DagsterRun(
                job_name="rfm_daily_job",
                run_id="a" * 36,
                status=dg.DagsterRunStatus.STARTED,
                tags={rfm.LATE_DATA_TAG: "late-data"},
            )
        )
        waiting, cursor = evaluate(instance, database_url, cursor)
        assert isinstance(waiting, dg.SkipReason)
        assert "waiting for rebuild run" in (waiting.skip_message or "")
        instance.delete_run("a" * 36)

        rebuild = materialize(database_url, lake, D - DAY, D, instance=instance)
        assert rebuild.success
        assert query(
            database_url,
            "SELECT snapshot_date, frequency, monetary FROM rfm_scores WHERE user_id = 9 "
            "ORDER BY 1",
        ) == [(D - DAY, 1, 100.0), (D, 1, 100.0)]
        assert query(
            database_url, "SELECT snapshot_date, recency_days FROM user_segments WHERE user_id = 9"
        ) == [(D, 1)]
        # rebuilt: the evidence is consumed, the next tick is quiet
        result, cursor = evaluate(instance, database_url, cursor)
        assert isinstance(result, dg.SkipReason), result
