"""A run SIGKILLed mid-batch (before or after COMMIT) and restarted ends exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.ingest.kafka_to_postgres import IngestConfig, ingest
from tests.ingest.conftest import BAD_RECORDS, assert_exactly_once, good_records, landed, produce

ROOT = Path(__file__).resolve().parents[2]


def assert_consistent(dsn: str, topic: str) -> int:
    """Rows + dead letters of each partition are exactly the offsets below the stored one."""
    got = landed(dsn, topic)
    stored = 0
    for partition in range(6):
        next_offset = got.offsets.get(partition, 0)
        positions = {o for p, o in got.rows.keys() | got.dead.keys() if p == partition}
        assert positions == set(range(next_offset)), partition
        stored += next_offset
    return stored


@pytest.mark.parametrize(("stage", "batch"), [("copied", 0), ("copied", 3), ("committed", 2)])
def test_sigkill_then_restart_is_exactly_once(
    database_url: str, brokers: list[str], kafka_topic: str, stage: str, batch: int
):
    records = good_records(600)
    records[100:100] = [(k, v) for k, v, _ in BAD_RECORDS[:6]]
    sent = produce(brokers[0], kafka_topic, records)

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.ingest.crash_runner",
            database_url,
            brokers[0],
            kafka_topic,
            stage,
            str(batch),
            "60",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    stored = assert_consistent(database_url, kafka_topic)
    if stage == "copied" and batch == 0:
        # killed inside the first transaction of its lane: that batch is gone; the other
        # lane may have committed its own first batch
        assert stored < len(sent)
    if stage == "committed":
        assert stored > 0  # the batch whose COMMIT returned is kept
    assert 0 <= stored < len(sent)

    restart = ingest(database_url, brokers, IngestConfig(topic=kafka_topic))
    assert restart.skipped_partitions == []  # the dead run's advisory locks are gone
    assert restart.records_read == len(sent) - stored
    got = assert_exactly_once(database_url, kafka_topic, sent)
    assert len(got.dead) == 6
