"""`kafka_ingest_sensor` on a Dagster test instance, against the real broker and Postgres."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml

from pipelines.definitions import defs
from pipelines.defs import ingest as ingest_defs
from tests.ingest.conftest import good_records, produce
from tests.pipelines.test_ingest_asset import materialize, resources

ROOT = Path(__file__).resolve().parents[2]


def evaluate(instance: dg.DagsterInstance, database_url: str, bootstrap: str, topic: str):
    context = dg.build_sensor_context(
        instance=instance, resources=resources(database_url, bootstrap, topic)
    )
    return ingest_defs.kafka_ingest_sensor(context)


def test_requests_a_run_only_when_there_is_lag(
    database_url: str, kafka_bootstrap: str, kafka_topic: str
):
    with dg.instance_for_test() as instance:
        quiet = evaluate(instance, database_url, kafka_bootstrap, kafka_topic)
        assert isinstance(quiet, dg.SkipReason)
        assert "no lag" in (quiet.skip_message or "")

        produce(kafka_bootstrap, kafka_topic, good_records(40))
        request = evaluate(instance, database_url, kafka_bootstrap, kafka_topic)
        assert isinstance(request, dg.RunRequest)
        assert request.tags[ingest_defs.INGEST_TAG] == "all"
        assert request.tags["cc/ingest-lag"] == "40"
        assert int(request.tags["dagster/max_runtime"]) > ingest_defs.DEFAULT_MAX_SECONDS

        # no second run while one is in flight
        for status in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED):
            run_id = status.value.lower().ljust(36, "0")
            instance.add_run(
                dg.DagsterRun(
                    job_name=ingest_defs.user_actions_ingest_job.name,
                    run_id=run_id,
                    status=status,
                    tags={ingest_defs.INGEST_TAG: "all"},
                )
            )
            waiting = evaluate(instance, database_url, kafka_bootstrap, kafka_topic)
            assert isinstance(waiting, dg.SkipReason)
            assert run_id in (waiting.skip_message or "")
            instance.delete_run(run_id)

        # a finished (e.g. failed by run monitoring) run does not block
        instance.add_run(
            dg.DagsterRun(
                job_name=ingest_defs.user_actions_ingest_job.name,
                run_id="f" * 36,
                status=dg.DagsterRunStatus.FAILURE,
                tags={ingest_defs.INGEST_TAG: "all"},
            )
        )
        assert isinstance(
            evaluate(instance, database_url, kafka_bootstrap, kafka_topic), dg.RunRequest
        )

        assert materialize(database_url, kafka_bootstrap, kafka_topic).success
        drained = evaluate(instance, database_url, kafka_bootstrap, kafka_topic)
        assert isinstance(drained, dg.SkipReason)
        assert "no lag" in (drained.skip_message or "")


def test_broker_down_is_a_skip_with_the_reason(database_url: str, private_servers):
    broker = private_servers("kafka")
    broker.stop()
    with dg.instance_for_test() as instance:
        result = evaluate(instance, database_url, broker.bootstrap, "any_topic")
    assert isinstance(result, dg.SkipReason)
    assert "cannot measure the lag" in (result.skip_message or "")


def test_definitions_wire_sensor_job_and_run_limits():
    sensor = defs.get_sensor_def("kafka_ingest_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30
    job = defs.resolve_job_def("user_actions_ingest_job")
    assert job.tags[ingest_defs.INGEST_TAG] == "all"
    assert "dagster/max_runtime" in job.tags
    # the contiguity check runs in every ingestion run of the job
    assert "user_actions_offsets_contiguous" in {node.name for node in job.graph.node_defs}
    spec = defs.resolve_assets_def("user_actions").specs_by_key[dg.AssetKey("user_actions")]
    assert spec.group_name == "ingestion"
    assert {"kafka", "postgres"} <= set(spec.kinds)

    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    [limit] = [
        t for t in coordinator["config"]["tag_concurrency_limits"] if t["key"] == "cc/ingest"
    ]
    assert limit["limit"] == 1 and limit["value"] == {"applyLimitPerUniqueValue": True}
    # run monitoring fails runs whose worker died; ingestion runs carry a max runtime
    assert config["run_monitoring"]["enabled"] is True
