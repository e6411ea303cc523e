"""Issue 6 part 4: the broker fails under the API and the ingestion.

- A *hung* broker (SIGSTOP: connections open, nothing answers; the hardest case for
  timeouts) keeps its log: POST /api/actions answers 503 within its publish timeout, an
  ingestion run fails with a clear error and changes nothing, and once the broker answers
  again the API accepts actions and the next run catches up exactly once.
- A broker *restarted with an empty log* (the local tansu broker keeps messages in memory;
  a recreated topic is the same thing on Apache Kafka): the offsets stored in Postgres
  belong to the old log. Ingestion must never guess: it refuses with a clear error and
  writes nothing, both while the new log is shorter than the stored offsets and after it
  has grown past them (where resuming at the stored offsets would silently skip the new
  log's first records). ``measure_lag`` (the sensor's probe) refuses the same way, so the
  sensor skips with the reason instead of launching failing runs.
(A broker that is simply stopped is covered by tests/serving/test_faults.py for the API and
tests/ingest/test_kafka_to_postgres.py for a run that starts while it is down.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from devstack import servers
from devstack.servers import KafkaBroker
from pipelines.ingest.kafka_to_postgres import (
    IngestConfig,
    KafkaUnavailableError,
    OffsetsOutOfRangeError,
    ingest,
    measure_lag,
)
from serving.auth import mint_token
from tests.ingest.conftest import Sent, assert_exactly_once, good_records, landed, produce
from tests.reliability.api_process import FAST_TIMEOUTS, api_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FAIL_FAST = {"request_timeout_seconds": 3.0, "stall_timeout_seconds": 3.0}


@contextlib.contextmanager
def hung(broker: KafkaBroker) -> Iterator[None]:
    """The broker process stopped (SIGSTOP) for the block: it keeps its sockets and its
    in-memory log but answers nothing; resumed (SIGCONT) afterwards, whatever happens."""
    pid = servers.read_pid(broker.pid_file)
    assert pid is not None and servers.pid_alive(pid)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_hung_broker_api_503_in_time_ingestion_fails_clean_then_catches_up(
    private_servers, database_url, redis_url, tmp_path
):
    broker = private_servers("kafka")
    topic = "actions_hung"
    servers.ensure_topic(broker.bootstrap, topic, partitions=3)
    sent = produce(broker.bootstrap, topic, good_records(300))
    partial = ingest(database_url, [broker.bootstrap], IngestConfig(topic=topic, max_records=120))
    assert partial.records_read == 120
    before = landed(database_url, topic)

    secret = secrets.token_urlsafe(48)
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "KAFKA_BROKER": broker.bootstrap,
        "KAFKA_TOPIC": topic,
        "JWT_SECRET": secret,
        "DATA_LAKE_DIR": str(tmp_path / "lake"),
    }
    headers = {"Authorization": f"Bearer {mint_token(secret, 'svc', role='service')}"}
    publish_timeout = float(FAST_TIMEOUTS["API_PUBLISH_TIMEOUT_S"])
    with (
        api_process(env, tmp_path / "api.log") as api,
        httpx.Client(base_url=api.url, headers=headers, timeout=30) as client,
    ):

        def post(user_id: int) -> httpx.Response:
            return client.post("/api/actions", json={"user_id": user_id, "action_type": "LOGIN"})

        assert post(1).status_code == 202
        with hung(broker):
            for user_id in (2, 3, 4):
                started = time.monotonic()
                response = post(user_id)
                elapsed = time.monotonic() - started
                assert response.status_code == 503, response.text
                assert elapsed < publish_timeout + 1.5, elapsed
                problem = response.json()
                assert problem["dependency"] == "kafka" and response.headers["retry-after"]
            started = time.monotonic()
            with pytest.raises(KafkaUnavailableError, match="is unavailable"):
                ingest(database_url, [broker.bootstrap], IngestConfig(topic=topic, **FAIL_FAST))
            failed_after = time.monotonic() - started
            assert landed(database_url, topic) == before  # no partial state
        print(f"ingestion against the hung broker failed after {failed_after:.1f}s")

        deadline = time.monotonic() + 30
        while (response := post(5)).status_code != 202:
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, "the API did not recover from the hung broker"
            time.sleep(0.2)
        accepted = [post(100 + i).json() for i in range(20)]
        assert api.alive(), api.log_tail()

    # the next run catches up: the whole log (including any 503'd action the broker got
    # anyway - a 503 means "not acknowledged", never "not stored") exactly once
    report = ingest(database_url, [broker.bootstrap], IngestConfig(topic=topic))
    assert report.records_read >= 180 + 1 + 1 + 20
    ends = {
        p: lag.log_end for p, lag in measure_lag(database_url, [broker.bootstrap], topic).items()
    }
    log = [Sent(p, o, None, None) for p, end in ends.items() for o in range(end)]
    got = assert_exactly_once(database_url, topic, log)
    assert {(s.partition, s.offset) for s in sent} <= set(got.rows)
    assert {(a["partition"], a["offset"]) for a in accepted} <= set(got.rows)


def test_broker_restarted_with_an_empty_log_is_refused_never_skipped(private_servers, database_url):
    broker = private_servers("kafka")
    topic = "actions_restarted"
    brokers = [broker.bootstrap]
    servers.ensure_topic(broker.bootstrap, topic, partitions=2)
    first = produce(broker.bootstrap, topic, good_records(50), partition=0)
    first += produce(broker.bootstrap, topic, good_records(30, first_user=500), partition=1)
    ingest(database_url, brokers, IngestConfig(topic=topic))
    before = assert_exactly_once(database_url, topic, first)
    assert before.offsets == {0: 50, 1: 30}

    broker.stop()
    with pytest.raises(KafkaUnavailableError, match="is unavailable"):
        ingest(database_url, brokers, IngestConfig(topic=topic, **FAIL_FAST))
    assert landed(database_url, topic) == before

    broker.start()  # memory storage: an empty broker; the topic is created again
    servers.ensure_topic(broker.bootstrap, topic, partitions=2)
    # the new log is shorter than the stored offsets
    produce(broker.bootstrap, topic, good_records(10, first_user=900), partition=0)
    with pytest.raises(OffsetsOutOfRangeError, match="recreated or the broker lost its data"):
        ingest(database_url, brokers, IngestConfig(topic=topic))
    with pytest.raises(OffsetsOutOfRangeError):
        measure_lag(database_url, brokers, topic)
    assert landed(database_url, topic) == before

    # ... and after it has grown past them: resuming at 50 / 30 would silently skip the new
    # log's first 50 / 30 records (and store the rest under positions of the old log)
    produce(broker.bootstrap, topic, good_records(60, first_user=2000), partition=0)
    produce(broker.bootstrap, topic, good_records(40, first_user=3000), partition=1)
    with pytest.raises(OffsetsOutOfRangeError, match="recreated or the broker lost its data"):
        ingest(database_url, brokers, IngestConfig(topic=topic))
    with pytest.raises(OffsetsOutOfRangeError, match="recreated or the broker lost its data"):
        measure_lag(database_url, brokers, topic)
    assert landed(database_url, topic) == before
