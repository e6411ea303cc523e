"""Kafka `topic_user_actions` -> Postgres, exactly once (SPEC §6). No Dagster in here.

One run (:func:`ingest`):

1. connects to Postgres and takes a session advisory lock per owned partition
   (``pg_try_advisory_lock``); a partition another run holds is *skipped*, never shared.
   The lock dies with the session, so a killed run never leaves a partition locked.
2. reads each partition's stored ``kafka_offsets.next_offset`` (the log start when there is
   none), assigns the partitions manually (no consumer-group rebalancing) at those offsets,
   and fixes each partition's drain target: its log end as seen at start.
3. consumes big batches (librdkafka prefetches in the background); every record is
   validated (:mod:`pipelines.domain.events`) and becomes a binary COPY row for
   ``user_actions`` or a dead-letter row (raw bytes + reason).
4. a writer thread writes each batch in ONE transaction: ``SELECT ... FOR UPDATE`` of the
   partitions' offset rows (they must still hold the offsets this run last wrote, or
   another writer interfered and the run aborts), COPY of the rows, COPY of the dead
   letters, upsert of the new ``next_offset`` values, COMMIT. The next batch is fetched
   and encoded meanwhile, so Kafka reads overlap Postgres writes.
5. stops when every partition reached its target, or at the record / time budget.

A crash at any instant loses at most uncommitted batches, whose records are re-read from
the stored offsets next time: rows and offsets commit together, and the unique Kafka
position of ``user_actions`` / ``user_actions_dead_letter`` rejects a double write even if
everything else failed. Kafka consumer-group offsets are only mirrored (optional, after
the Postgres commit) for lag dashboards; they are never read back.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipelines.domain.events import (
    MAX_EVENT_BYTES,
    EventValidationError,
    decode_event,
    orjson_checker,
    parse_event,
)

logger = logging.getLogger(__name__)

DEFAULT_CONSUMER = "user_actions"
_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext(%s), %s)"

Checkpoint = Callable[[str, int], None]
"""Called by the writer as ``checkpoint(stage, batch_no)`` with stage ``"copied"`` (rows and
offsets written, transaction still open) and ``"committed"``. Tests use it to kill the
process at exact points; production passes nothing."""

Log = logging.Logger | Any  # a logging.Logger or Dagster's context.log


class IngestionError(RuntimeError):
    """Ingestion cannot proceed; the message says why and what to do."""


class KafkaUnavailableError(IngestionError):
    """The broker cannot be reached or stopped answering."""


class OffsetsOutOfRangeError(IngestionError):
    """A stored offset lies outside the partition's log (topic recreated, data lost)."""


class ConcurrentWriterError(IngestionError):
    """Another writer changed a partition's stored offset under this run."""


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """What one run consumes and how much.

    ``partitions``: the partition subset this run owns (None: all of the topic). Runs on
    several machines split a topic by owning disjoint subsets.
    ``max_records`` / ``max_seconds``: budget; the run stops early when either is reached
    (batches already handed to the writer are still committed).
    ``batch_records`` / ``batch_seconds``: a batch is written when it holds that many
    records, is that old, or Kafka has nothing more right now.
    ``stall_timeout_seconds``: fail when Kafka delivers nothing for this long while
    partitions still lag (a broker that died mid-run).
    ``mirror_group_id``: when set, also commit the consumer-group offsets (after the
    Postgres commit) so Kafka lag dashboards see progress.
    ``writers``: Postgres connections writing in parallel; partition p is always written
    by writer p % writers, so each partition's batches still commit in order (index
    maintenance, not parsing, bounds one COPY stream).
    """

    topic: str
    consumer: str = DEFAULT_CONSUMER
    partitions: frozenset[int] | None = None
    max_records: int | None = None
    max_seconds: float | None = None
    batch_records: int = 50_000
    batch_seconds: float = 1.0
    stall_timeout_seconds: float = 30.0
    request_timeout_seconds: float = 10.0
    mirror_group_id: str | None = None
    writers: int = 2

    def __post_init__(self) -> None:
        if self.batch_records < 1:
            raise ValueError("batch_records must be >= 1")
        if not 1 <= self.writers <= 16:
            raise ValueError("writers must be between 1 and 16")
        if self.max_records is not None and self.max_records < 0:
            raise ValueError("max_records must be >= 0")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError("max_seconds must be > 0")
        if self.partitions is not None and any(p < 0 for p in self.partitions):
            raise ValueError("partitions must be >= 0")


@dataclass(slots=True)
class PartitionReport:
    partition: int
    start_offset: int
    target_offset: int
    next_offset: int
    records: int = 0
    rows: int = 0
    dead_letters: int = 0
    log_end_after: int | None = None

    @property
    def lag_after(self) -> int | None:
        if self.log_end_after is None:
            return None
        return max(self.log_end_after - self.next_offset, 0)


StopReason = Literal["drained", "max_records", "max_seconds", "nothing_to_do"]


@dataclass(slots=True)
class IngestReport:
    topic: str
    consumer: str
    partitions: dict[int, PartitionReport] = field(default_factory=dict)
    skipped_partitions: list[int] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0
    stopped_by: StopReason = "drained"
    #: where the time went: Kafka consume calls, validation/encoding and waiting for the
    #: writer (main thread), Postgres transactions (writer thread, overlapping the others)
    timings: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("consume", "encode", "wait_writer", "write"), 0.0)
    )

    @property
    def records_read(self) -> int:
        return sum(p.records for p in self.partitions.values())

    @property
    def rows_written(self) -> int:
        return sum(p.rows for p in self.partitions.values())

    @property
    def dead_letters(self) -> int:
        return sum(p.dead_letters for p in self.partitions.values())

    @property
    def records_per_second(self) -> float:
        return self.records_read / self.seconds if self.seconds > 0 else 0.0

    @property
    def lag_after(self) -> dict[int, int | None]:
        return {p: r.lag_after for p, r in sorted(self.partitions.items())}


# --- binary COPY encoding -------------------------------------------------------------

_COPY_ROWS = (
    "COPY user_actions (user_id, action_type, action_timestamp, metadata,"
    " kafka_topic, kafka_partition, kafka_offset) FROM STDIN (FORMAT BINARY)"
)
_COPY_DEAD = (
    "COPY user_actions_dead_letter (kafka_topic, kafka_partition, kafka_offset, raw, error)"
    " FROM STDIN"
)
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# field count (7), user_id (int8), then the length word of action_type
_HEAD = struct.Struct(">hiqi").pack
# action_timestamp (timestamptz = microseconds since 2000-01-01 UTC), then the jsonb
# length word and its version byte (jsonb binary = 0x01 + JSON text)
_MID = struct.Struct(">iqiB").pack
_OFFSET = struct.Struct(">q").pack


def _row_tail_prefix(topic: str, partition: int) -> bytes:
    """kafka_topic (text) + kafka_partition (int4) + the length word of kafka_offset."""
    name = topic.encode()
    return struct.pack(">i", len(name)) + name + struct.pack(">iii", 4, partition, 8)


class _Partition:
    """Consumer-side state of one owned partition."""

    __slots__ = (
        "high_watermark",
        "lane",
        "number",
        "pending_dead",
        "pending_records",
        "pending_rows",
        "position",
        "tail",
        "target",
    )

    def __init__(self, topic: str, number: int, position: int, lane: int = 0) -> None:
        self.number = number
        self.lane = lane  # index of the writer that owns the partition
        self.position = position  # next offset to encode
        self.target: int | None = None  # the log end seen at start, once confirmed
        self.high_watermark: int | None = None
        self.tail = _row_tail_prefix(topic, number)
        self.pending_records = 0
        self.pending_rows = 0
        self.pending_dead = 0


@dataclass(slots=True)
class _Batch:
    number: int
    rows: bytearray = field(default_factory=bytearray)
    dead: list[tuple[str, int, int, bytes | None, str]] = field(default_factory=list)
    #: partition -> next offset after this batch
    next_offsets: dict[int, int] = field(default_factory=dict)
    #: partition -> (records, rows, dead letters)
    counts: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    records: int = 0
    started: float = field(default_factory=time.monotonic)


def _dead_reason(raw: bytes | None) -> str:
    try:
        decode_event(raw)
    except EventValidationError as exc:
        return str(exc)
    return "not valid JSON"


class _KafkaFailure(Exception):
    """A non-record event from the consumer that must stop the run."""

    def __init__(self, partition: int, error: KafkaError) -> None:
        super().__init__(str(error))
        self.partition = partition
        self.error = error


def encode_messages(
    messages: Sequence[Any],
    topic: str,
    parts: dict[int, _Partition],
    now: datetime,
    batches: Sequence[_Batch],
) -> int:
    """Validate consumed messages into ``batches`` (one per writer lane); returns the number
    of records taken.

    The hot loop: one ``orjson.loads``, the domain check and a few ``struct`` packs per
    valid record. Records before a partition's position (redelivered) or at/after its
    target are not taken. Partition-EOF events update the high watermark.
    """
    rows = bytearray()
    dead: list[tuple[str, int, int, bytes | None, str]] = []
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    check = orjson_checker(now)
    epoch = _PG_EPOCH
    head, mid, offset_of = _HEAD, _MID, _OFFSET
    join = b"".join
    eof = KafkaError._PARTITION_EOF
    current = -1
    state: _Partition | None = None
    tail = b""
    low = limit = 0
    taken = 0
    for message in messages:
        error = message.error()
        if error is not None:
            if error.code() == eof:
                part = parts.get(message.partition())
                if part is not None:
                    part.high_watermark = max(part.high_watermark or 0, message.offset())
                continue
            raise _KafkaFailure(message.partition(), error)
        number = message.partition()
        if number != current:
            if state is not None:
                state.position = low
            state = parts[number]
            current = number
            batch = batches[state.lane]
            rows = batch.rows
            dead = batch.dead
            tail = state.tail
            low = state.position
            limit = state.target if state.target is not None else 1 << 62
        offset = message.offset()
        if offset < low or offset >= limit:
            continue
        assert state is not None
        low = offset + 1
        taken += 1
        batch.records += 1
        state.pending_records += 1
        raw = message.value()
        try:
            if raw is None or len(raw) > MAX_EVENT_BYTES:
                decode_event(raw)  # raises with the reason
            user_id, action_type, timestamp, metadata = check(loads(raw))
        except decode_error:
            dead.append((topic, number, offset, raw, _dead_reason(raw)))
            state.pending_dead += 1
            continue
        except EventValidationError as exc:
            dead.append((topic, number, offset, raw, str(exc)))
            state.pending_dead += 1
            continue
        name = action_type.encode()
        delta = timestamp - epoch
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        rows += join(
            (
                head(7, 8, user_id, len(name)),
                name,
                mid(8, micros, len(metadata) + 1, 1),
                metadata,
                tail,
                offset_of(offset),
            )
        )
        state.pending_rows += 1
    if state is not None:
        state.position = low
    return taken


def _seal(batches: Sequence[_Batch], parts: dict[int, _Partition]) -> None:
    """Move the partitions' pending counts and positions into their lane's batch."""
    for number, part in parts.items():
        if part.pending_records:
            batch = batches[part.lane]
            batch.next_offsets[number] = part.position
            batch.counts[number] = (part.pending_records, part.pending_rows, part.pending_dead)
            part.pending_records = part.pending_rows = part.pending_dead = 0


# --- Postgres side ----------------------------------------------------------------------


def _stored_offsets(
    conn: psycopg.Connection, consumer: str, topic: str, partitions: Iterable[int]
) -> dict[int, int]:
    rows = conn.execute(
        "SELECT partition, next_offset FROM kafka_offsets"
        " WHERE consumer = %s AND topic = %s AND partition = ANY(%s)",
        (consumer, topic, list(partitions)),
    ).fetchall()
    return {int(p): int(o) for p, o in rows}


class _Writer(threading.Thread):
    """Writes batches in order, one transaction each; the first error stops it."""

    def __init__(
        self,
        conn: psycopg.Connection,
        config: IngestConfig,
        expected: dict[int, int | None],
        checkpoint: Checkpoint | None,
        lane: int = 0,
    ) -> None:
        super().__init__(name=f"ingest-writer-{lane}", daemon=True)
        self.conn = conn
        self.config = config
        self.expected = dict(expected)  # partition -> stored next_offset (None: no row)
        self.checkpoint = checkpoint
        self.inbox: queue.Queue[_Batch | None] = queue.Queue(maxsize=2)
        self.committed: queue.Queue[_Batch] = queue.Queue()
        self.error: BaseException | None = None
        self.busy_seconds = 0.0

    def run(self) -> None:
        while True:
            batch = self.inbox.get()
            if batch is None:
                return
            if self.error is not None:
                continue  # keep draining so the consumer side never blocks on a dead writer
            began = time.perf_counter()
            try:
                self._write(batch)
            except BaseException as exc:
                self.error = exc
            self.busy_seconds += time.perf_counter() - began

    def _write(self, batch: _Batch) -> None:
        config = self.config
        parts = sorted(batch.next_offsets)
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(
                "SELECT partition, next_offset FROM kafka_offsets"
                " WHERE consumer = %s AND topic = %s AND partition = ANY(%s) FOR UPDATE",
                (config.consumer, config.topic, parts),
            )
            current = {int(p): int(o) for p, o in cur.fetchall()}
            for p in parts:
                if current.get(p) != self.expected[p]:
                    raise ConcurrentWriterError(
                        f"partition {p} of {config.topic!r}: stored next_offset is "
                        f"{current.get(p)}, this run expected {self.expected[p]}; another "
                        "writer ingested it (runs must own disjoint partitions); this batch "
                        "was rolled back"
                    )
            if batch.rows:
                with cur.copy(_COPY_ROWS) as copy:
                    copy.write(_SIGNATURE)
                    copy.write(batch.rows)
                    copy.write(_TRAILER)
            if batch.dead:
                with cur.copy(_COPY_DEAD) as copy:
                    for topic, partition, offset, raw, error in batch.dead:
                        # text cannot hold NUL; reasons never should, but must not block
                        copy.write_row((topic, partition, offset, raw, error.replace("\x00", "?")))
            cur.executemany(
                "INSERT INTO kafka_offsets (consumer, topic, partition, next_offset, updated_at)"
                " VALUES (%s, %s, %s, %s, now())"
                " ON CONFLICT (consumer, topic, partition)"
                " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
                [(config.consumer, config.topic, p, batch.next_offsets[p]) for p in parts],
            )
            if self.checkpoint is not None:
                self.checkpoint("copied", batch.number)
        for p in parts:
            self.expected[p] = batch.next_offsets[p]
        if self.checkpoint is not None:
            self.checkpoint("committed", batch.number)
        self.committed.put(batch)


# --- Kafka side -------------------------------------------------------------------------


class _ErrorLog:
    """librdkafka's global errors (broker down, ...), kept for clear failure messages."""

    def __init__(self) -> None:
        self.last: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        self.last = error
        logger.debug("kafka client error: %s", error)


def _consumer(
    brokers: Sequence[str],
    config: IngestConfig,
    errors: _ErrorLog,
    *,
    fetch_bytes: int = 16 * 1024 * 1024,
    group_id: str | None = None,
) -> Consumer:
    """A librdkafka consumer for manual assignment (it never joins a group)."""
    timeout_ms = int(config.request_timeout_seconds * 1000)
    return Consumer(
        {
            "bootstrap.servers": ",".join(brokers),
            "client.id": f"cc-ingest-{config.consumer}",
            # required by the client; only used when mirroring offsets (no subscribe)
            "group.id": group_id or f"cc-ingest-{config.consumer}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "enable.partition.eof": True,
            "allow.auto.create.topics": False,
            "fetch.max.bytes": max(fetch_bytes, 1024 * 1024) * 4,
            "max.partition.fetch.bytes": fetch_bytes,
            "fetch.wait.max.ms": 100,
            "queued.min.messages": 1_000_000,
            "queued.max.messages.kbytes": 256 * 1024,
            "fetch.queue.backoff.ms": 0,
            "socket.timeout.ms": timeout_ms,
            "socket.connection.setup.timeout.ms": timeout_ms,
            "error_cb": errors,
            "logger": logging.getLogger("pipelines.ingest.librdkafka"),
        }
    )


def _unavailable(brokers: Sequence[str], what: str, detail: object) -> KafkaUnavailableError:
    return KafkaUnavailableError(
        f"Kafka broker {','.join(brokers)} is unavailable: could not {what} ({detail})"
    )


def _topic_partitions(
    consumer: Consumer,
    brokers: Sequence[str],
    topic: str,
    wanted: frozenset[int] | None,
    timeout: float,
) -> list[int]:
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise _unavailable(brokers, f"read metadata of topic {topic!r}", exc.args[0]) from exc
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        detail = f" ({info.error})" if info is not None and info.error is not None else ""
        raise IngestionError(f"Kafka topic {topic!r} does not exist on {','.join(brokers)}{detail}")
    existing = set(info.partitions)
    if wanted is None:
        return sorted(existing)
    missing = sorted(set(wanted) - existing)
    if missing:
        raise IngestionError(
            f"partitions {missing} do not exist in topic {topic!r} (it has {len(existing)})"
        )
    return sorted(wanted)


def _watermarks(
    consumer: Consumer, brokers: Sequence[str], topic: str, partition: int, timeout: float
) -> tuple[int, int]:
    """(log start, log end) by ListOffsets. The end may be under-reported: see
    :func:`_confirm_target`."""
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout
        )
    except KafkaException as exc:
        raise _unavailable(
            brokers, f"read the offsets of partition {partition} of {topic!r}", exc.args[0]
        ) from exc
    return int(low), int(high)


def _cached_high_watermark(consumer: Consumer, topic: str, partition: int) -> int | None:
    """The high watermark of the last fetch response for the partition, if any yet."""
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
    except KafkaException:
        return None
    return int(high) if high is not None and high >= 0 else None


def _confirm_target(topic: str, part: _Partition, listed_end: int, high_watermark: int) -> None:
    """Fix the partition's drain target from a fetch response's high watermark.

    Some brokers under-report ListOffsets "latest": tansu 0.6 (the local broker) answers
    the base offset of the last record batch + 1, so the tail of a multi-record batch would
    look consumed. The high watermark carried by fetch responses is right, so the target is
    max(ListOffsets, first high watermark). A position past it means the stored offsets
    belong to an older incarnation of the log.
    """
    log_end = max(listed_end, high_watermark)
    if part.position > log_end:
        raise OffsetsOutOfRangeError(
            f"partition {part.number} of {topic!r}: stored next_offset {part.position} is "
            f"past the log end {log_end}; the topic was recreated or the broker lost its data "
            "(the local in-memory broker forgets everything when it stops). Ingest into a new "
            "topic, or delete this partition's kafka_offsets row once its old rows are archived."
        )
    part.target = log_end


def _check_log_start(topic: str, partition: int, stored: int, begin: int) -> None:
    if stored < begin:
        raise OffsetsOutOfRangeError(
            f"partition {partition} of {topic!r}: stored next_offset {stored} is before the log "
            f"start {begin}; records {stored}..{begin - 1} were deleted by retention before "
            "they were ingested"
        )


_LAST_INGESTED_SQL = (
    "SELECT false, user_id, action_type, action_timestamp, NULL::bytea FROM user_actions"
    " WHERE kafka_topic = %(t)s AND kafka_partition = %(p)s AND kafka_offset = %(o)s"
    " UNION ALL SELECT true, NULL, NULL, NULL, raw FROM user_actions_dead_letter"
    " WHERE kafka_topic = %(t)s AND kafka_partition = %(p)s AND kafka_offset = %(o)s"
)


_OLDER_LOG = (
    "the topic was recreated or the broker lost its data (the local in-memory broker "
    "forgets everything when it stops). Nothing was written. Ingest into a new topic, or "
    "delete this partition's kafka_offsets row once its old rows are archived."
)


def _same_record(stored: tuple[Any, ...], raw: bytes | None) -> bool:
    """Is ``raw`` (from Kafka) the record that became this row or dead letter?"""
    is_dead, user_id, action_type, timestamp, dead_raw = stored
    if is_dead:
        return (None if dead_raw is None else bytes(dead_raw)) == raw
    try:
        event = parse_event(raw, now=datetime.now(UTC))
    except EventValidationError:
        return False
    return (event.user_id, event.action_type, event.action_timestamp) == (
        user_id,
        action_type,
        timestamp,
    )


def _verify_same_log(
    kafka: Consumer,
    brokers: Sequence[str],
    conn: psycopg.Connection,
    topic: str,
    stored: dict[int, int],
    begins: dict[int, int],
    timeout: float,
) -> None:
    """Refuse stored offsets that belong to an older incarnation of the partition's log.

    A recreated topic, or a broker that lost its data (the local in-memory broker on
    restart), starts its logs at offset 0 again. While a new log is shorter than the stored
    ``next_offset`` that shows (:func:`_confirm_target`); once it has grown past it,
    resuming there would silently skip the new log's first records. So the record at
    ``next_offset - 1`` is fetched and must be the one stored (row or dead letter) for that
    position. Positions no longer in the log (retention) or no longer in Postgres (archived
    rows) cannot be checked and are not. ``kafka`` is (re)assigned for the probe.
    """
    probes: dict[int, tuple[int, tuple[Any, ...]]] = {}
    for p, next_offset in stored.items():
        last = next_offset - 1
        if last < begins[p]:
            continue
        row = conn.execute(_LAST_INGESTED_SQL, {"t": topic, "p": p, "o": last}).fetchone()
        if row is not None:
            probes[p] = (last, tuple(row))
    if not probes:
        return
    kafka.assign([TopicPartition(topic, p, last) for p, (last, _) in probes.items()])
    deadline = time.monotonic() + timeout
    while probes:
        if time.monotonic() > deadline:
            raise _unavailable(
                brokers,
                f"fetch partitions {sorted(probes)} of {topic!r} within {timeout:.0f}s",
                "no answer",
            )
        for message in kafka.consume(num_messages=100, timeout=0.1):
            p = message.partition()
            if p not in probes:
                continue
            last, row = probes[p]
            error = message.error()
            if error is not None:
                if error.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                    raise OffsetsOutOfRangeError(
                        f"partition {p} of {topic!r}: stored next_offset {last + 1} is outside "
                        f"the log ({error.str()}); {_OLDER_LOG}"
                    )
                if error.code() != KafkaError._PARTITION_EOF:
                    _raise_kafka_failure(brokers, topic, _KafkaFailure(p, error))
                if message.offset() <= last:  # the log ends before the stored offset
                    raise OffsetsOutOfRangeError(
                        f"partition {p} of {topic!r}: stored next_offset {last + 1} is past "
                        f"the log end {message.offset()}; {_OLDER_LOG}"
                    )
                del probes[p]  # no record at that position (compacted, control record)
            elif message.offset() > last:
                del probes[p]  # idem
            elif message.offset() == last:
                if not _same_record(row, message.value()):
                    raise OffsetsOutOfRangeError(
                        f"partition {p} of {topic!r}: the record at offset {last} is not the "
                        f"one ingested from there, so the stored next_offset {last + 1} "
                        "belongs to an older log and resuming there would skip the new log's "
                        f"first records; {_OLDER_LOG}"
                    )
                del probes[p]
        for p, (last, _) in probes.items():
            # a fetch past the end may bring neither records nor an error: the high
            # watermark of the fetch response tells (see _confirm_target)
            high = _cached_high_watermark(kafka, topic, p)
            if high is not None and high <= last:
                raise OffsetsOutOfRangeError(
                    f"partition {p} of {topic!r}: stored next_offset {last + 1} is past "
                    f"the log end {high}; {_OLDER_LOG}"
                )


def _raise_kafka_failure(brokers: Sequence[str], topic: str, failure: _KafkaFailure) -> None:
    code = failure.error.code()
    if code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
        raise OffsetsOutOfRangeError(
            f"partition {failure.partition} of {topic!r}: the stored offset is outside the log "
            f"({failure.error}); the topic was recreated or records were deleted"
        ) from None
    raise _unavailable(brokers, f"consume partition {failure.partition} of {topic!r}", failure)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    partition: int
    next_offset: int
    log_end: int

    @property
    def lag(self) -> int:
        return self.log_end - self.next_offset


def measure_lag(
    dsn: str,
    brokers: Sequence[str],
    topic: str,
    *,
    consumer: str = DEFAULT_CONSUMER,
    partitions: frozenset[int] | None = None,
    timeout_seconds: float = 10.0,
) -> dict[int, PartitionLag]:
    """Per-partition lag of the stored offsets behind the log end; writes nothing.

    Reads ``kafka_offsets`` and probes each partition with a tiny fetch at its stored
    offset, whose response carries the true high watermark (see :func:`_confirm_target`).
    Raises :class:`OffsetsOutOfRangeError` when stored offsets are ahead of the log or
    belong to an older log (see :func:`_verify_same_log`).
    """
    config = IngestConfig(topic=topic, consumer=consumer, request_timeout_seconds=timeout_seconds)
    errors = _ErrorLog()
    kafka = _consumer(brokers, config, errors, fetch_bytes=4096)
    try:
        owned = _topic_partitions(kafka, brokers, topic, partitions, timeout_seconds)
        parts: dict[int, _Partition] = {}
        listed: dict[int, int] = {}
        begins: dict[int, int] = {}
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            stored = _stored_offsets(conn, consumer, topic, owned)
            for p in owned:
                begins[p], listed[p] = _watermarks(kafka, brokers, topic, p, timeout_seconds)
                parts[p] = _Partition(topic, p, stored.get(p, begins[p]))
            _verify_same_log(kafka, brokers, conn, topic, stored, begins, timeout_seconds)
        kafka.assign([TopicPartition(topic, p, part.position) for p, part in parts.items()])
        deadline = time.monotonic() + timeout_seconds
        pending = set(owned)
        while pending:
            if time.monotonic() > deadline:
                raise _unavailable(
                    brokers,
                    f"fetch partitions {sorted(pending)} of {topic!r} within "
                    f"{timeout_seconds:.0f}s",
                    errors.last or "no answer",
                )
            for message in kafka.consume(num_messages=100, timeout=0.1):
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    _raise_kafka_failure(brokers, topic, _KafkaFailure(message.partition(), error))
            for p in list(pending):
                high = _cached_high_watermark(kafka, topic, p)
                if high is not None:
                    _confirm_target(topic, parts[p], listed[p], high)
                    pending.discard(p)
        return {
            p: PartitionLag(p, part.position, part.target or part.position)
            for p, part in parts.items()
        }
    finally:
        with contextlib.suppress(Exception):
            kafka.close()


# --- the run ----------------------------------------------------------------------------


def ingest(
    dsn: str,
    brokers: Sequence[str],
    config: IngestConfig,
    *,
    checkpoint: Checkpoint | None = None,
    log: Log = logger,
) -> IngestReport:
    """Drain the owned partitions of ``config.topic`` into Postgres, exactly once."""
    started = time.monotonic()
    report = IngestReport(topic=config.topic, consumer=config.consumer)
    connections: list[psycopg.Connection] = []
    errors = _ErrorLog()
    consumer: Consumer | None = None
    timeout = config.request_timeout_seconds
    try:
        conn = _connect(dsn)
        connections.append(conn)
        consumer = _consumer(brokers, config, errors, group_id=config.mirror_group_id)
        partitions = _topic_partitions(consumer, brokers, config.topic, config.partitions, timeout)
        lock_key = f"{config.consumer}:{config.topic}"
        owned: list[int] = []
        for p in partitions:
            row = conn.execute(_LOCK_SQL, (lock_key, p)).fetchone()
            if row is not None and row[0]:
                owned.append(p)
            else:
                report.skipped_partitions.append(p)
        if report.skipped_partitions:
            log.info(
                "partitions %s of %s are being ingested by another run; skipped",
                report.skipped_partitions,
                config.topic,
            )
        if not owned:
            report.stopped_by = "nothing_to_do"
        else:
            stored = _stored_offsets(conn, config.consumer, config.topic, owned)
            lanes = min(config.writers, len(owned))
            listed: dict[int, int] = {}
            begins: dict[int, int] = {}
            parts: dict[int, _Partition] = {}
            for i, p in enumerate(owned):
                begins[p], listed[p] = _watermarks(consumer, brokers, config.topic, p, timeout)
                start = stored.get(p, begins[p])
                _check_log_start(config.topic, p, start, begins[p])
                parts[p] = _Partition(config.topic, p, start, lane=i % lanes)
                report.partitions[p] = PartitionReport(p, start, listed[p], start)
            probe = _consumer(brokers, config, errors, fetch_bytes=4096)
            try:
                _verify_same_log(probe, brokers, conn, config.topic, stored, begins, timeout)
            finally:
                probe.close()
            while len(connections) < lanes:
                connections.append(_connect(dsn))
            writers = [
                _Writer(
                    connections[lane],
                    config,
                    {p: stored.get(p) for p, part in parts.items() if part.lane == lane},
                    checkpoint,
                    lane,
                )
                for lane in range(lanes)
            ]
            _drain(consumer, brokers, config, report, parts, listed, writers, errors, log)
            for p, part in parts.items():
                high = _cached_high_watermark(consumer, config.topic, p)
                report.partitions[p].target_offset = part.target or listed[p]
                report.partitions[p].log_end_after = max(
                    listed[p], high or 0, part.high_watermark or 0
                )
    finally:
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close()
        for each in connections:
            with contextlib.suppress(Exception):
                each.close()  # the first one holds the advisory locks
    report.seconds = time.monotonic() - started
    log.info(
        "ingested %s records from %s (%s rows, %s dead letters) in %.2fs: %.0f records/s, %s",
        report.records_read,
        config.topic,
        report.rows_written,
        report.dead_letters,
        report.seconds,
        report.records_per_second,
        report.stopped_by,
    )
    return report


def _connect(dsn: str) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise IngestionError(f"Postgres is unreachable: {exc}".strip()) from exc


def _drain(
    consumer: Consumer,
    brokers: Sequence[str],
    config: IngestConfig,
    report: IngestReport,
    parts: dict[int, _Partition],
    listed: dict[int, int],
    writers: list[_Writer],
    errors: _ErrorLog,
    log: Log,
) -> None:
    topic = config.topic
    consumer.assign([TopicPartition(topic, p, part.position) for p, part in parts.items()])
    active = set(parts)
    unconfirmed = set(parts)
    budget = config.max_records
    deadline = None if config.max_seconds is None else time.monotonic() + config.max_seconds
    timings = report.timings
    number = 0
    batches = [_Batch(number) for _ in writers]
    batch_started = time.monotonic()
    last_progress = time.monotonic()
    for writer in writers:
        writer.start()

    def pending() -> int:
        return sum(batch.records for batch in batches)

    def flush() -> None:
        nonlocal batches, number
        _seal(batches, parts)
        if pending():
            began = time.perf_counter()
            for writer, batch in zip(writers, batches, strict=True):
                if batch.records:
                    _put(writer, batch)
            timings["wait_writer"] += time.perf_counter() - began
            number += 1
        batches = [_Batch(number) for _ in writers]

    try:
        while active:
            if deadline is not None and time.monotonic() >= deadline:
                report.stopped_by = "max_seconds"
                break
            if budget is not None and budget <= 0:
                report.stopped_by = "max_records"
                break
            want = config.batch_records - pending()
            if budget is not None:
                want = min(want, budget)
            began = time.perf_counter()
            try:
                messages = consumer.consume(num_messages=want, timeout=0.1)
            except KafkaException as exc:
                raise _unavailable(brokers, f"consume {topic!r}", exc.args[0]) from exc
            timings["consume"] += time.perf_counter() - began
            _collect_committed(consumer, writers, config, report, log)
            for p in list(unconfirmed):
                high = _cached_high_watermark(consumer, topic, p)
                if high is not None:
                    _confirm_target(topic, parts[p], listed[p], high)
                    unconfirmed.discard(p)
            if messages:
                if not pending():
                    batch_started = time.monotonic()
                began = time.perf_counter()
                try:
                    taken = encode_messages(messages, topic, parts, datetime.now(UTC), batches)
                except _KafkaFailure as failure:
                    _raise_kafka_failure(brokers, topic, failure)
                timings["encode"] += time.perf_counter() - began
                if taken:
                    last_progress = time.monotonic()
                    if budget is not None:
                        budget -= taken
            done = [
                p
                for p in active
                if parts[p].target is not None and parts[p].position >= parts[p].target  # type: ignore[operator]
            ]
            if done:
                consumer.pause([TopicPartition(topic, p) for p in done])
                active.difference_update(done)
            size = pending()
            if size and (
                size >= config.batch_records
                or not messages
                or time.monotonic() - batch_started >= config.batch_seconds
            ):
                flush()
            if active and time.monotonic() - last_progress > config.stall_timeout_seconds:
                raise _unavailable(
                    brokers,
                    f"fetch records for {config.stall_timeout_seconds:.0f}s while partitions "
                    f"{sorted(active)} of {topic!r} still lag; batches committed so far are "
                    "kept, the rest is re-read by the next run",
                    errors.last or "no records",
                )
        flush()
    finally:
        for writer in writers:
            _put(writer, None)
        for writer in writers:
            writer.join()
        timings["write"] = sum(writer.busy_seconds for writer in writers)
    _collect_committed(consumer, writers, config, report, log)


def _put(writer: _Writer, item: _Batch | None) -> None:
    while True:
        if writer.error is not None and item is not None:
            raise writer.error
        try:
            writer.inbox.put(item, timeout=0.5)
            return
        except queue.Full:
            if not writer.is_alive():
                raise IngestionError("the Postgres writer stopped unexpectedly") from None


def _collect_committed(
    consumer: Consumer,
    writers: list[_Writer],
    config: IngestConfig,
    report: IngestReport,
    log: Log,
) -> None:
    """Account committed batches into the report, mirror offsets to the Kafka group, and
    raise the first writer error."""
    offsets: dict[int, int] = {}
    for writer in writers:
        while True:
            try:
                batch = writer.committed.get_nowait()
            except queue.Empty:
                break
            report.batches += 1
            for p, next_offset in batch.next_offsets.items():
                records, rows, dead = batch.counts[p]
                part = report.partitions[p]
                part.records += records
                part.rows += rows
                part.dead_letters += dead
                part.next_offset = next_offset
                offsets[p] = next_offset
    if offsets and config.mirror_group_id:
        try:
            consumer.commit(
                offsets=[TopicPartition(config.topic, p, o) for p, o in offsets.items()],
                asynchronous=True,
            )
        except KafkaException as exc:  # dashboards only: never fail the run for it
            log.warning("could not mirror offsets to group %s: %s", config.mirror_group_id, exc)
    for writer in writers:
        if writer.error is not None:
            raise writer.error
