"""Ingestion throughput: 1,000,000 events Kafka -> Postgres, against its two limits.

1. produces N valid events (default 1,000,000; ``BENCH_INGEST_EVENTS``) to a fresh
   6-partition topic, keyed by user id;
2. ``kafka_consume_rows_per_s``: the same client (librdkafka, the ingestion consumer
   settings) reading every record with no parsing or writing;
3. ``pg_copy_rows_per_s``: a raw binary COPY of the same rows into ``user_actions`` of a
   fresh migrated database, in the batches and parallel connections the ingestion uses
   (rows encoded beforehand, untimed); the table is truncated afterwards;
4. ``ingest_rows_per_s``: one ingestion run (:func:`pipelines.ingest.kafka_to_postgres.
   ingest`) from the stored offsets to the end, timed from start to return; every record
   is checked to be in ``user_actions`` exactly once;
5. ``ingest_vs_limit_ratio`` = ingest / min(consume, copy).

Uses DATABASE_URL / KAFKA_BROKER (`make bench`), or private servers (see bench/_stack.py).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench._stack import ensure_env
from devstack import servers
from pipelines.ingest import kafka_to_postgres as k2p
from pipelines.settings import libpq_url

EVENTS = int(os.environ.get("BENCH_INGEST_EVENTS", "1000000"))
PARTITIONS = 6
BATCH = 50_000
WRITERS = int(os.environ.get("BENCH_INGEST_WRITERS", "2"))
ACTIONS = ("LOGIN", "VIEW_PAGE", "SPEND_CYBER_TOKENS", "EARN_CYBER_TOKENS", "CLICK_BANNER")


def result(name: str, value: float, unit: str) -> None:
    print(
        f"RESULT {name} {value:.4g} {unit}"
        if unit == "ratio"
        else f"RESULT {name} {value:.0f} {unit}",
        flush=True,
    )


def info(text: str) -> None:
    print(f"  {text}", flush=True)


def make_events(n: int) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(42)
    # the last 60 days, in order of production (valid at any ingestion time)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=60)
    out: list[tuple[bytes, bytes]] = []
    for i in range(n):
        user = rnd.randint(1, 50_000)
        action = ACTIONS[i % len(ACTIONS)]
        if action == "SPEND_CYBER_TOKENS":
            metadata: dict[str, object] = {"spent_tokens": rnd.randint(1, 500)}
        elif action == "EARN_CYBER_TOKENS":
            metadata = {"earned_tokens": rnd.randint(1, 500)}
        elif action == "VIEW_PAGE":
            metadata = {"page": f"/shop/items/{i % 97}", "ref": "home"}
        else:
            metadata = {}
        stamp = (start + timedelta(seconds=i * 5 + rnd.randint(0, 4))).isoformat()
        value = {
            "user_id": user,
            "action_type": action,
            "action_timestamp": stamp,
            "metadata": metadata,
        }
        out.append((str(user).encode(), orjson.dumps(value)))
    return out


def produce(broker: str, topic: str, events: list[tuple[bytes, bytes]]) -> float:
    producer = Producer(
        {
            "bootstrap.servers": broker,
            "acks": "all",
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "enable.idempotence": False,
        }
    )
    failed: list[str] = []
    delivered = 0

    def on_delivery(err: object, _msg: object) -> None:
        nonlocal delivered
        if err is not None:
            failed.append(str(err))
        else:
            delivered += 1

    started = time.perf_counter()
    for k, v in events:
        while True:
            try:
                producer.produce(topic, key=k, value=v, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120) != 0 or failed or delivered != len(events):
        raise SystemExit(f"produce failed: {delivered} of {len(events)} delivered; {failed[:3]}")
    return time.perf_counter() - started


def consume_rate(broker: str, topic: str, expected: int) -> tuple[float, list[object]]:
    """Raw consume: same client and settings as ingestion, no parsing; keeps the messages."""
    config = k2p.IngestConfig(topic=topic)
    consumer = k2p._consumer([broker], config, k2p._ErrorLog())
    try:
        consumer.list_topics(topic, timeout=10)
        from confluent_kafka import TopicPartition

        started = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        kept: list[object] = []
        count = 0
        size = 0
        deadline = time.monotonic() + 300
        while count < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=BATCH, timeout=0.1):
                if message.error() is None:
                    size += len(message.value())
                    count += 1
                    kept.append(message)
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    if count != expected:
        raise SystemExit(f"consumed {count} of {expected} records")
    info(f"consumed {count:,} records ({size / 1e6:.0f} MB of values) in {elapsed:.2f}s")
    return count / elapsed, kept


def checkpoint(dsn: str) -> None:
    """Start both timed writes from a fresh checkpoint (same full-page-write cost)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error as exc:  # needs superuser or pg_checkpoint
        info(f"no CHECKPOINT ({exc.__class__.__name__})")


def copy_rate(dsn: str, topic: str, messages: list[object]) -> float:
    """Raw binary COPY of the same rows, batches and writer lanes as the ingestion."""
    parts = {p: k2p._Partition(topic, p, 0, lane=p % WRITERS) for p in range(PARTITIONS)}
    now = datetime.now(UTC)
    lanes: list[list[bytearray]] = [[] for _ in range(WRITERS)]
    for start in range(0, len(messages), BATCH):
        batches = [k2p._Batch(0) for _ in range(WRITERS)]
        k2p.encode_messages(messages[start : start + BATCH], topic, parts, now, batches)
        for lane, batch in enumerate(batches):
            if batch.rows:
                lanes[lane].append(batch.rows)

    def write(chunks: list[bytearray]) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for rows in chunks:
                with conn.transaction(), conn.cursor() as cur, cur.copy(k2p._COPY_ROWS) as copy:
                    copy.write(k2p._SIGNATURE)
                    copy.write(rows)
                    copy.write(k2p._TRAILER)

    checkpoint(dsn)  # the ingestion run starts after one too
    threads = [threading.Thread(target=write, args=(chunks,)) for chunks in lanes]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM user_actions").fetchone()
        copied = int(row[0]) if row else 0
        conn.execute("TRUNCATE user_actions")
    checkpoint(dsn)
    if copied != len(messages):
        raise SystemExit(f"raw COPY stored {copied} of {len(messages)} rows")
    info(f"raw COPY of {copied:,} rows in {elapsed:.2f}s ({WRITERS} connections)")
    return copied / elapsed


def fresh_database(base_url: str) -> tuple[str, str | None]:
    """A fresh migrated database next to DATABASE_URL (or DATABASE_URL itself)."""
    server = servers.database_url(base_url, "postgres")
    name = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    try:
        servers.ensure_database(server, name)
    except psycopg.Error as exc:
        info(f"cannot create a database ({exc}); using DATABASE_URL with a fresh topic")
        return base_url, None
    url = servers.database_url(base_url, name)
    servers.migrate(url)
    return url, name


def main() -> int:
    env = ensure_env()
    broker = env["KAFKA_BROKER"].split(",")[0]
    base_url = libpq_url(env["DATABASE_URL"])
    topic = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    dsn, created = fresh_database(base_url)
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[
        topic
    ].result(30)
    try:
        events = make_events(EVENTS)
        seconds = produce(broker, topic, events)
        info(f"produced {len(events):,} events to {topic} in {seconds:.1f}s")
        del events

        consume, messages = consume_rate(broker, topic, EVENTS)
        copy = copy_rate(dsn, topic, messages)
        del messages

        cpu_before = time.process_time()
        started = time.perf_counter()
        report = k2p.ingest(
            dsn,
            [broker],
            k2p.IngestConfig(topic=topic, batch_records=BATCH, writers=WRITERS),
        )
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset))"
                " FROM user_actions WHERE kafka_topic = %s",
                (topic,),
            ).fetchone()
        stored, distinct = (int(row[0]), int(row[1])) if row else (0, 0)
        if not (report.rows_written == stored == distinct == EVENTS and report.dead_letters == 0):
            raise SystemExit(
                f"ingestion stored {stored} rows ({distinct} distinct) of {EVENTS}; "
                f"report {report.rows_written} rows, {report.dead_letters} dead letters"
            )
        ingest = EVENTS / elapsed
        info(
            f"ingested {EVENTS:,} records in {elapsed:.2f}s ({report.batches} transactions, "
            f"{WRITERS} writers); main thread: consume {report.timings['consume']:.1f}s, "
            f"validate+encode {report.timings['encode']:.1f}s, waiting for writers "
            f"{report.timings['wait_writer']:.1f}s; writers busy {report.timings['write']:.1f}s;"
            f" CPU of this process {cpu:.1f}s ({cpu / EVENTS * 1e6:.1f} us/record)"
        )
        result("ingest_rows_per_s", ingest, "rows/s")
        result("kafka_consume_rows_per_s", consume, "rows/s")
        result("pg_copy_rows_per_s", copy, "rows/s")
        result("ingest_vs_limit_ratio", ingest / min(consume, copy), "ratio")
        return 0
    finally:
        for future in admin.delete_topics([topic], operation_timeout=30).values():
            try:
                future.result(30)
            except Exception as exc:  # the broker keeps it; nothing else depends on it
                info(f"could not delete topic {topic}: {exc}")
        if created:
            servers.drop_database(servers.database_url(base_url, "postgres"), created)


if __name__ == "__main__":
    raise SystemExit(main())
