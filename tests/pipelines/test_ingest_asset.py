"""The `user_actions` asset and its checks, materialized with real resources."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from pipelines.defs import ingest as ingest_defs
from pipelines.defs.resources import KafkaResource, PostgresResource
from tests.ingest.conftest import BAD_RECORDS, assert_exactly_once, good_records, produce


def resources(database_url: str, bootstrap: str, topic: str) -> dict[str, object]:
    return {
        "postgres": PostgresResource(database_url=database_url),
        "kafka": KafkaResource(bootstrap_servers=bootstrap, topic=topic),
    }


def materialize(database_url: str, bootstrap: str, topic: str, **config: object):
    return dg.materialize(
        [ingest_defs.user_actions, ingest_defs.offsets_contiguous],
        resources=resources(database_url, bootstrap, topic),
        run_config={"ops": {"user_actions": {"config": config}}} if config else None,
    )


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_materialize_shows_metadata_and_checks(
    database_url: str, kafka_bootstrap: str, kafka_topic: str
):
    records = good_records(90) + [(k, v) for k, v, _ in BAD_RECORDS[:10]]
    sent = produce(kafka_bootstrap, kafka_topic, records)

    result = materialize(database_url, kafka_bootstrap, kafka_topic, batch_records=25)
    assert result.success
    [materialization] = result.asset_materializations_for_node("user_actions")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["records_read"] == 100
    assert meta["rows_written"] == 90
    assert meta["dead_letters"] == 10
    assert meta["lag_after"] == 0
    assert meta["lag_after_by_partition"] == {str(p): 0 for p in range(6)}
    assert meta["records_per_second"] > 0
    assert meta["stopped_by"] == "drained"
    assert "| partition |" in meta["partitions"]
    assert_exactly_once(database_url, kafka_topic, sent)

    checks = check_results(result)
    share = checks[ingest_defs.DEAD_LETTER_SHARE_CHECK]
    assert not share.passed  # 10% > the 5% default
    assert share.severity == dg.AssetCheckSeverity.WARN
    assert share.metadata["share"].value == pytest.approx(0.1)
    contiguous = checks[ingest_defs.CONTIGUOUS_CHECK]
    assert contiguous.passed, contiguous.description
    assert contiguous.metadata["positions"].value == 100

    # a second materialization reads nothing and still passes both checks
    again = materialize(database_url, kafka_bootstrap, kafka_topic, max_dead_letter_share=0.2)
    [materialization] = again.asset_materializations_for_node("user_actions")
    assert materialization.metadata["records_read"].value == 0
    assert all(e.passed for e in again.get_asset_check_evaluations())


def test_partition_subset_and_budget_config(
    database_url: str, kafka_bootstrap: str, kafka_topic: str
):
    produce(kafka_bootstrap, kafka_topic, good_records(30), partition=3)
    produce(kafka_bootstrap, kafka_topic, good_records(10), partition=4)
    result = materialize(database_url, kafka_bootstrap, kafka_topic, partitions=[3], max_records=20)
    [materialization] = result.asset_materializations_for_node("user_actions")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["partitions_owned"] == [3]
    assert meta["records_read"] == 20
    assert meta["lag_after_by_partition"] == {"3": 10}
    assert meta["stopped_by"] == "max_records"


def test_contiguity_check_catches_a_gap_and_a_double(
    database_url: str, kafka_bootstrap: str, kafka_topic: str
):
    produce(kafka_bootstrap, kafka_topic, good_records(20), partition=0)
    assert materialize(database_url, kafka_bootstrap, kafka_topic).success
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM user_actions WHERE kafka_partition = 0 AND kafka_offset = 7")
        conn.execute(
            "INSERT INTO user_actions_dead_letter (kafka_topic, kafka_partition, kafka_offset,"
            " raw, error) VALUES (%s, 0, 3, 'x', 'planted')",
            (kafka_topic,),
        )
    result = dg.materialize(
        [ingest_defs.user_actions, ingest_defs.offsets_contiguous],
        resources=resources(database_url, kafka_bootstrap, kafka_topic),
        selection=dg.AssetSelection.checks(ingest_defs.offsets_contiguous),
        raise_on_error=False,
    )
    contiguous = check_results(result)[ingest_defs.CONTIGUOUS_CHECK]
    assert not contiguous.passed
    assert contiguous.severity == dg.AssetCheckSeverity.ERROR
    problems = contiguous.metadata["problems"].value
    assert any("both as a row and as a dead letter" in p for p in problems)
    assert any("1 offsets missing" in p for p in problems)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([(0, 10, 10, 10, 0, 9)], []),
        ([(0, 10, 9, 9, 0, 9)], ["1 offsets missing"]),
        ([(0, 10, 11, 10, 0, 9)], ["both as a row and as a dead letter"]),
        ([(0, 8, 10, 10, 0, 9)], ["beyond the stored next_offset 8"]),
        ([(0, 12, 10, 10, 0, 9)], ["stored next_offset 12 but the last row is at offset 9"]),
        ([(1, None, 3, 3, 0, 2)], ["rows without a stored offset"]),
        ([(2, 5, None, 0, None, None)], []),
        ([(3, 120, 20, 20, 100, 119)], []),  # log start past 0 (retention before first run)
    ],
)
def test_contiguity_rules(rows, expected):
    problems = ingest_defs.contiguity_problems(rows)
    assert len(problems) == len(expected)
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem
