"""POST /api/actions: validated by the ingestion's validator, produced to Kafka after the ack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from pipelines.domain.events import parse_event
from tests.serving.conftest import metric, new_user_id


def read_record(bootstrap: str, topic: str, partition: int, offset: int):
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=10_000
    )
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        for record in consumer:
            return record
    finally:
        consumer.close()
    raise AssertionError("record not found")


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: off for tp, off in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


async def post(api, tokens, body, **kwargs):
    return await api.post("/api/actions", json=body, headers=tokens.service_headers, **kwargs)


async def test_action_is_produced_after_the_ack(api, tokens, api_env):
    uid = new_user_id()
    published_before = metric("cc_api_actions_published_total")
    body = {
        "user_id": uid,
        "action_type": "SPEND_CYBER_TOKENS",
        "action_timestamp": "2026-05-01T12:00:00+02:00",
        "metadata": {"spent_tokens": 150.5, "item": {"id": "skin_17", "tags": ["a", "b"]}},
    }
    response = await post(api, tokens, body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["topic"] == api_env["KAFKA_TOPIC"]
    assert set(answer) == {"topic", "partition", "offset"}
    record = read_record(
        api_env["KAFKA_BROKER"], answer["topic"], answer["partition"], answer["offset"]
    )
    assert record.key == str(uid).encode()
    event = parse_event(record.value, now=datetime.now(UTC))
    assert event.user_id == uid
    assert event.action_type == "SPEND_CYBER_TOKENS"
    assert event.action_timestamp == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    assert event.metadata == body["metadata"]
    assert orjson.loads(record.value)["action_timestamp"] == "2026-05-01T10:00:00+00:00"
    assert metric("cc_api_actions_published_total") == published_before + 1


async def test_timestamp_defaults_to_now_and_metadata_to_empty(api, tokens, api_env):
    before = datetime.now(UTC)
    response = await post(api, tokens, {"user_id": new_user_id(), "action_type": "LOGIN"})
    after = datetime.now(UTC)
    assert response.status_code == 202
    answer = response.json()
    record = read_record(
        api_env["KAFKA_BROKER"], answer["topic"], answer["partition"], answer["offset"]
    )
    event = parse_event(record.value, now=after)
    assert before <= event.action_timestamp <= after
    assert event.metadata == {}


async def test_naive_timestamp_is_utc_and_null_metadata_is_empty(api, tokens, api_env):
    body = {
        "user_id": new_user_id(),
        "action_type": "EARN_CYBER_TOKENS",
        "action_timestamp": "2026-05-01T12:00:00",
        "metadata": {"earned_tokens": 0},
    }
    answer = (await post(api, tokens, body)).json()
    record = read_record(
        api_env["KAFKA_BROKER"], answer["topic"], answer["partition"], answer["offset"]
    )
    assert orjson.loads(record.value)["action_timestamp"] == "2026-05-01T12:00:00+00:00"
    body2 = {"user_id": new_user_id(), "action_type": "LOGIN", "metadata": None}
    answer = (await post(api, tokens, body2)).json()
    record = read_record(
        api_env["KAFKA_BROKER"], answer["topic"], answer["partition"], answer["offset"]
    )
    assert orjson.loads(record.value)["metadata"] == {}


async def test_same_user_same_partition_in_order(api, tokens):
    uid = new_user_id()
    answers = [
        (await post(api, tokens, {"user_id": uid, "action_type": f"A{n}"})).json() for n in range(5)
    ]
    assert len({a["partition"] for a in answers}) == 1
    offsets = [a["offset"] for a in answers]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5


FUTURE = (datetime.now(UTC) + timedelta(hours=30)).isoformat()

INVALID = [
    ({"action_type": "LOGIN"}, "user_id"),
    ({"user_id": "5", "action_type": "LOGIN"}, "user_id"),
    ({"user_id": True, "action_type": "LOGIN"}, "user_id"),
    ({"user_id": 5.0, "action_type": "LOGIN"}, "user_id"),
    ({"user_id": 0, "action_type": "LOGIN"}, "user_id"),
    ({"user_id": -4, "action_type": "LOGIN"}, "user_id"),
    ({"user_id": 2**63, "action_type": "LOGIN"}, "user_id"),
    ({"user_id": 10**30, "action_type": "LOGIN"}, "user_id"),
    ({"user_id": None, "action_type": "LOGIN"}, "user_id"),
    ({"user_id": 5}, "action_type"),
    ({"user_id": 5, "action_type": ""}, "action_type"),
    ({"user_id": 5, "action_type": "   "}, "action_type"),
    ({"user_id": 5, "action_type": "x" * 65}, "action_type"),
    ({"user_id": 5, "action_type": 7}, "action_type"),
    ({"user_id": 5, "action_type": "A\u0000B"}, "action_type"),
    ({"user_id": 5, "action_type": "LOGIN", "action_timestamp": "yesterday"}, "action_timestamp"),
    ({"user_id": 5, "action_type": "LOGIN", "action_timestamp": ""}, "action_timestamp"),
    ({"user_id": 5, "action_type": "LOGIN", "action_timestamp": FUTURE}, "action_timestamp"),
    ({"user_id": 5, "action_type": "LOGIN", "action_timestamp": 1714564800}, "action_timestamp"),
    ({"user_id": 5, "action_type": "LOGIN", "action_timestamp": "2" * 80}, "action_timestamp"),
    ({"user_id": 5, "action_type": "LOGIN", "metadata": [1, 2]}, "metadata"),
    ({"user_id": 5, "action_type": "LOGIN", "metadata": "x"}, "metadata"),
    ({"user_id": 5, "action_type": "SPEND_CYBER_TOKENS"}, "metadata.spent_tokens"),
    (
        {"user_id": 5, "action_type": "SPEND_CYBER_TOKENS", "metadata": {"spent_tokens": -1}},
        "metadata.spent_tokens",
    ),
    (
        {"user_id": 5, "action_type": "SPEND_CYBER_TOKENS", "metadata": {"spent_tokens": "9"}},
        "metadata.spent_tokens",
    ),
    (
        {"user_id": 5, "action_type": "SPEND_CYBER_TOKENS", "metadata": {"spent_tokens": True}},
        "metadata.spent_tokens",
    ),
    ({"user_id": 5, "action_type": "EARN_CYBER_TOKENS", "metadata": {}}, "metadata.earned_tokens"),
    ({"user_id": 5, "action_type": "LOGIN", "metadata": {"k": "a\u0000"}}, "metadata.k"),
    ({"user_id": 5, "action_type": "LOGIN", "extra": 1}, "extra"),
]


@pytest.mark.parametrize(("body", "field"), INVALID)
async def test_invalid_actions_are_422_and_not_produced(api, tokens, api_env, body, field):
    before = end_offsets(api_env["KAFKA_BROKER"], api_env["KAFKA_TOPIC"])
    response = await post(api, tokens, body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert problem["errors"][0]["field"] == field, problem
    assert problem["errors"][0]["reason"]
    assert end_offsets(api_env["KAFKA_BROKER"], api_env["KAFKA_TOPIC"]) == before


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"", "application/json"),
        (b'{"user_id": 5, "action_type": "LOGIN", "metadata": {"x": NaN}}', "application/json"),
        (b'{"user_id": 5, "action_type": "LOGIN"}', "text/plain"),
        (b'{"user_id": 5, "action_type": "\xff"}', "application/json"),
        (b"[" * 5000 + b"]" * 5000, "application/json"),
    ],
)
async def test_unparseable_bodies_are_422(api, tokens, content, content_type):
    response = await api.post(
        "/api/actions",
        content=content,
        headers={**tokens.service_headers, "content-type": content_type},
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert errors and all(error["field"] and error["reason"] for error in errors)
    if content_type == "application/json" and content not in (b"[1, 2]", b""):
        assert errors[0]["field"] == "$" and errors[0]["reason"].startswith("invalid JSON")
