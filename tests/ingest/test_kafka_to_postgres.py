"""Exactly-once ingestion against the real broker and Postgres."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipelines.domain.events import parse_event
from pipelines.ingest.kafka_to_postgres import (
    ConcurrentWriterError,
    IngestConfig,
    KafkaUnavailableError,
    OffsetsOutOfRangeError,
    ingest,
    measure_lag,
)
from tests.ingest.conftest import (
    BAD_RECORDS,
    assert_exactly_once,
    event,
    good_records,
    key,
    landed,
    produce,
)


def test_exact_rows_and_dead_letters(database_url: str, brokers: list[str], kafka_topic: str):
    good = good_records(240)
    bad = [(k, v) for k, v, _ in BAD_RECORDS]
    mixed = good[:100] + bad[:8] + good[100:] + bad[8:]
    sent = produce(brokers[0], kafka_topic, mixed)
    assert len({s.partition for s in sent}) >= 4  # keys spread over the partitions

    group = f"mirror-{kafka_topic}"
    report = ingest(
        database_url,
        brokers,
        IngestConfig(topic=kafka_topic, batch_records=64, mirror_group_id=group),
    )

    got = assert_exactly_once(database_url, kafka_topic, sent)
    assert (report.records_read, report.rows_written, report.dead_letters) == (256, 240, 16)
    assert len(got.rows) == 240 and len(got.dead) == 16
    assert report.lag_after == dict.fromkeys(range(6), 0)
    assert report.batches >= 4
    # the consumer group mirrors the stored offsets (for lag dashboards only)
    mirror = Consumer({"bootstrap.servers": brokers[0], "group.id": group})
    try:
        committed = mirror.committed(
            [TopicPartition(kafka_topic, p) for p in got.offsets], timeout=10
        )
    finally:
        mirror.close()
    assert {tp.partition: tp.offset for tp in committed} == got.offsets
    reasons = {v: reason for k, v, reason in BAD_RECORDS}
    now = datetime.now(UTC)
    for s in sent:
        position = (s.partition, s.offset)
        if s.value in reasons:
            raw, error = got.dead[position]
            assert raw == s.value  # raw bytes kept as they came, None for a tombstone
            assert reasons[s.value] in error
        else:
            expected = parse_event(s.value, now=now)
            user_id, action_type, timestamp, metadata = got.rows[position]
            assert (user_id, action_type, timestamp, metadata) == (
                expected.user_id,
                expected.action_type,
                expected.action_timestamp,
                expected.metadata,
            )
            assert s.key == key(user_id)  # per-user ordering: the key is the user id


def test_rerun_adds_nothing_and_picks_up_new_records(
    database_url: str, brokers: list[str], kafka_topic: str
):
    sent = produce(brokers[0], kafka_topic, good_records(50))
    first = ingest(database_url, brokers, IngestConfig(topic=kafka_topic))
    assert first.rows_written == 50
    before = landed(database_url, kafka_topic)

    again = ingest(database_url, brokers, IngestConfig(topic=kafka_topic))
    assert (again.records_read, again.batches) == (0, 0)
    assert landed(database_url, kafka_topic) == before

    sent += produce(brokers[0], kafka_topic, good_records(30, first_user=900))
    third = ingest(database_url, brokers, IngestConfig(topic=kafka_topic))
    assert third.rows_written == 30
    assert_exactly_once(database_url, kafka_topic, sent)


def test_budget_stops_early_and_the_next_run_continues(
    database_url: str, brokers: list[str], kafka_topic: str
):
    sent = produce(brokers[0], kafka_topic, good_records(40), partition=2)
    partial = ingest(
        database_url, brokers, IngestConfig(topic=kafka_topic, max_records=15, batch_records=10)
    )
    assert partial.stopped_by == "max_records"
    assert partial.records_read == 15
    assert partial.lag_after[2] == 25
    assert landed(database_url, kafka_topic).offsets == {2: 15}

    rest = ingest(database_url, brokers, IngestConfig(topic=kafka_topic))
    assert rest.records_read == 25
    assert_exactly_once(database_url, kafka_topic, sent)


def test_disjoint_partition_subsets_split_the_topic(
    database_url: str, brokers: list[str], kafka_topic: str
):
    sent = produce(brokers[0], kafka_topic, good_records(120))
    low = ingest(
        database_url, brokers, IngestConfig(topic=kafka_topic, partitions=frozenset({0, 1, 2}))
    )
    assert set(low.partitions) == {0, 1, 2}
    assert set(landed(database_url, kafka_topic).offsets) <= {0, 1, 2}
    high = ingest(
        database_url, brokers, IngestConfig(topic=kafka_topic, partitions=frozenset({3, 4, 5}))
    )
    assert low.records_read + high.records_read == 120
    assert_exactly_once(database_url, kafka_topic, sent)


def test_unknown_partition_or_topic_is_a_clear_error(
    database_url: str, brokers: list[str], kafka_topic: str
):
    with pytest.raises(Exception, match=r"partitions \[9\] do not exist"):
        ingest(database_url, brokers, IngestConfig(topic=kafka_topic, partitions=frozenset({9})))
    with pytest.raises(Exception, match="does not exist"):
        ingest(database_url, brokers, IngestConfig(topic="no_such_topic_xyz"))


def test_concurrent_runs_skip_each_other(database_url: str, brokers: list[str], kafka_topic: str):
    """A second run while the first holds its partitions writes nothing; no double write."""
    sent = produce(brokers[0], kafka_topic, good_records(200))
    holding = threading.Event()
    release = threading.Event()

    def hold(stage: str, number: int) -> None:
        if stage == "copied" and number == 0:
            holding.set()  # first batch written, transaction open, locks held
            assert release.wait(30)

    results: dict[str, object] = {}

    def first_run() -> None:
        try:
            results["first"] = ingest(
                database_url,
                brokers,
                IngestConfig(topic=kafka_topic, batch_records=50, writers=1),
                checkpoint=hold,
            )
        except BaseException as exc:  # pragma: no cover - reported below
            results["first"] = exc

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        assert holding.wait(30)
        second = ingest(database_url, brokers, IngestConfig(topic=kafka_topic))
        assert sorted(second.skipped_partitions) == list(range(6))
        assert second.records_read == 0
    finally:
        release.set()
        thread.join(60)
    first = results["first"]
    assert not isinstance(first, BaseException), first
    assert_exactly_once(database_url, kafka_topic, sent)
    # the locks died with the first run's session: a later run owns every partition
    third = ingest(database_url, brokers, IngestConfig(topic=kafka_topic))
    assert third.skipped_partitions == [] and third.records_read == 0


def test_a_writer_that_bypasses_the_lock_is_detected(
    database_url: str, brokers: list[str], kafka_topic: str
):
    """The FOR UPDATE check refuses a batch whose partition offset moved under the run."""
    produce(brokers[0], kafka_topic, good_records(60), partition=0)

    def rogue(stage: str, number: int) -> None:
        if stage == "committed" and number == 0:
            with psycopg.connect(database_url, autocommit=True) as other:
                other.execute(
                    "UPDATE kafka_offsets SET next_offset = next_offset + 5 WHERE partition = 0"
                )

    with pytest.raises(ConcurrentWriterError, match="another writer"):
        ingest(
            database_url,
            brokers,
            IngestConfig(topic=kafka_topic, batch_records=20, writers=1),
            checkpoint=rogue,
        )
    got = landed(database_url, kafka_topic)
    assert sorted(got.rows) == [(0, i) for i in range(20)]  # only the first batch landed
    assert got.offsets == {0: 25}


def test_broker_down_fails_clearly_and_writes_nothing(database_url: str, private_servers):
    broker = private_servers("kafka")
    from devstack import servers

    topic = "down_topic"
    servers.ensure_topic(broker.bootstrap, topic, partitions=2)
    produce(broker.bootstrap, topic, good_records(10))
    broker.stop()
    with pytest.raises(KafkaUnavailableError, match="unavailable"):
        ingest(
            database_url,
            [broker.bootstrap],
            IngestConfig(topic=topic, request_timeout_seconds=3, stall_timeout_seconds=3),
        )
    got = landed(database_url, topic)
    assert (got.rows, got.dead, got.offsets) == ({}, {}, {})


def test_offsets_ahead_of_the_log_fail_without_writing(
    database_url: str, brokers: list[str], kafka_topic: str
):
    produce(brokers[0], kafka_topic, good_records(5), partition=1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO kafka_offsets (consumer, topic, partition, next_offset)"
            " VALUES ('user_actions', %s, 1, 500)",
            (kafka_topic,),
        )
    with pytest.raises(OffsetsOutOfRangeError, match="past the log end"):
        ingest(database_url, brokers, IngestConfig(topic=kafka_topic))
    assert landed(database_url, kafka_topic).rows == {}


def test_measure_lag_sees_the_true_log_end(database_url: str, brokers: list[str], kafka_topic: str):
    # one produce call with linger packs the records into few batches per partition
    produce(brokers[0], kafka_topic, good_records(90), partition=4, linger_ms=200)
    produce(brokers[0], kafka_topic, [(key(1), event(1))], partition=5)
    lag = measure_lag(database_url, brokers, kafka_topic)
    assert {p: v.lag for p, v in lag.items()} == {0: 0, 1: 0, 2: 0, 3: 0, 4: 90, 5: 1}
    ingest(database_url, brokers, IngestConfig(topic=kafka_topic))
    assert all(v.lag == 0 for v in measure_lag(database_url, brokers, kafka_topic).values())


def test_metadata_json_round_trips(database_url: str, brokers: list[str], kafka_topic: str):
    metadata = {"s": 'quote" back\\ tab\t nl\n é 😀', "n": [1, 2.5, None, True], "o": {}}
    produce(brokers[0], kafka_topic, [(key(5), event(5, "X", metadata=metadata))])
    ingest(database_url, brokers, IngestConfig(topic=kafka_topic))
    (row,) = landed(database_url, kafka_topic).rows.values()
    assert row[3] == metadata
    assert orjson.loads(orjson.dumps(row[3])) == metadata
