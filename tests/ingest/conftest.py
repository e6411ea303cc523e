"""Helpers for ingestion tests: produce records with known positions, read what landed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Producer


@dataclass(frozen=True)
class Sent:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None]],
    *,
    partition: int | None = None,
    linger_ms: int = 20,
) -> list[Sent]:
    """Produce (key, value) pairs with acks=all; returns where each one landed.

    A positive linger makes the producer pack several records per batch (the shape that
    trips brokers whose ListOffsets under-reports the log end).
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": linger_ms,
            "enable.idempotence": False,
            "message.max.bytes": 4 * 1024 * 1024,
        }
    )
    sent: list[Sent | None] = [None] * len(records)
    failures: list[str] = []

    def delivered(index: int) -> Any:
        def callback(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                sent[index] = Sent(msg.partition(), msg.offset(), msg.key(), msg.value())

        return callback

    for index, (key, value) in enumerate(records):
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": delivered(index)}
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0 and not failures, failures
    assert all(s is not None for s in sent)
    return [s for s in sent if s is not None]


def event(user_id: int, action_type: str = "LOGIN", **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "user_id": user_id,
        "action_type": action_type,
        "action_timestamp": fields.pop("action_timestamp", "2026-05-01T10:00:00+00:00"),
    }
    body.update(fields)
    return orjson.dumps(body)


def key(user_id: int) -> bytes:
    return str(user_id).encode()


BAD_RECORDS: list[tuple[bytes | None, bytes | None, str]] = [
    (b"1", b"not json at all", "not valid UTF-8 JSON"),
    (b"2", b"[1, 2, 3]", "must be a JSON object"),
    (b"3", None, "no value"),
    (b"4", event(0), "user_id: must be >= 1"),
    (b"5", event(-3), "user_id: must be >= 1"),
    (
        b"6",
        orjson.dumps({"user_id": "6", "action_type": "X", "action_timestamp": "2026-05-01"}),
        "user_id: must be an integer",
    ),
    (b"7", event(7, ""), "action_type: must be a non-empty string"),
    (b"8", event(8, "A" * 65), "action_type: must be at most 64 characters"),
    (b"9", event(9, action_timestamp="not a time"), "action_timestamp: is not an ISO-8601"),
    (
        b"10",
        event(10, action_timestamp=(datetime.now(UTC) + timedelta(days=3)).isoformat()),
        "in the future",
    ),
    (b"11", event(11, "SPEND_CYBER_TOKENS", metadata={"spent_tokens": -5}), "must be >= 0"),
    (b"12", event(12, "SPEND_CYBER_TOKENS", metadata={"spent_tokens": "lots"}), "must be a number"),
    (b"13", event(13, metadata=[1, 2]), "metadata: must be a JSON object"),
    (b"14", event(14, metadata={"blob": "x" * 70_000}), "byte limit"),
    (b"15", b"\xff\xfe\x00garbage", "not valid UTF-8 JSON"),
    (b"16", event(16, metadata={"a": "nul\u0000inside"}), "NUL"),
]


def good_records(n: int, *, first_user: int = 100) -> list[tuple[bytes, bytes]]:
    """n valid records of varied shapes, keyed by user id."""
    out: list[tuple[bytes, bytes]] = []
    for i in range(n):
        user = first_user + i % 37
        kind = i % 4
        if kind == 0:
            value = event(user, "SPEND_CYBER_TOKENS", metadata={"spent_tokens": i % 500 + 0.5})
        elif kind == 1:
            value = event(user, "EARN_CYBER_TOKENS", metadata={"earned_tokens": i})
        elif kind == 2:
            value = event(
                user,
                "VIEW_PAGE\ttab\\slash",
                action_timestamp=f"2026-04-{1 + i % 28:02d}T{i % 24:02d}:00:00",
                metadata={"page": f"/p/{i}", "nested": {"l": [1, "two", None, True]}},
            )
        else:
            value = event(user, "LOGIN", action_timestamp=f"2026-04-02T10:00:00.{i:06d}+02:00")
        out.append((key(user), value))
    return out


@dataclass
class Landed:
    rows: dict[tuple[int, int], tuple[Any, ...]]
    dead: dict[tuple[int, int], tuple[bytes | None, str]]
    offsets: dict[int, int]


def landed(dsn: str, topic: str, consumer: str = "user_actions") -> Landed:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT kafka_partition, kafka_offset, user_id, action_type, action_timestamp,"
            " metadata FROM user_actions WHERE kafka_topic = %s",
            (topic,),
        ).fetchall()
        dead = conn.execute(
            "SELECT kafka_partition, kafka_offset, raw, error FROM user_actions_dead_letter"
            " WHERE kafka_topic = %s",
            (topic,),
        ).fetchall()
        offsets = conn.execute(
            "SELECT partition, next_offset FROM kafka_offsets WHERE topic = %s AND consumer = %s",
            (topic, consumer),
        ).fetchall()
    return Landed(
        rows={(r[0], r[1]): tuple(r[2:]) for r in rows},
        dead={(r[0], r[1]): (None if r[2] is None else bytes(r[2]), r[3]) for r in dead},
        offsets={int(p): int(o) for p, o in offsets},
    )


def assert_exactly_once(dsn: str, topic: str, sent: list[Sent]) -> Landed:
    """Every produced record is exactly one row or one dead letter, offsets at the end."""
    got = landed(dsn, topic)
    positions = {(s.partition, s.offset) for s in sent}
    assert len(positions) == len(sent)
    assert not (got.rows.keys() & got.dead.keys())
    assert got.rows.keys() | got.dead.keys() == positions
    ends: dict[int, int] = {}
    for s in sent:
        ends[s.partition] = max(ends.get(s.partition, 0), s.offset + 1)
    assert {p: o for p, o in got.offsets.items() if p in ends} == ends
    return got


@pytest.fixture
def brokers(kafka_bootstrap: str) -> list[str]:
    return [kafka_bootstrap]
