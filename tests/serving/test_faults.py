"""Dependencies failing under the running API (real servers stopped and started again).

Each test starts its own server(s) with `private_servers`, so the session's stay up.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
import redis

from devstack import servers
from tests.serving.conftest import eventually, metric, new_user_id, running_app

pytestmark = pytest.mark.timeout(180)


def reco_url(user_id: int) -> str:
    return f"/api/user-segments/{user_id}/recommendation"


async def test_redis_stopped_mid_test_still_answers_200(
    api_env, monkeypatch, private_servers, tokens, seed_segments
):
    server = private_servers("redis")
    monkeypatch.setenv("REDIS_URL", server.url())
    uid = new_user_id()
    redis.Redis.from_url(server.url()).set(f"user:{uid}:streak_count", 5)
    seed_segments([(uid, "Whale", "High-Risk")])
    async with running_app() as api:
        headers = tokens.service_headers
        body = (await api.get(reco_url(uid), headers=headers)).json()
        assert (body["streak_count"], body["recommended_reward_probability"]) == (5, 0.8)

        server.stop()
        before = metric("cc_api_recommendations_degraded_total", {"reason": "redis_unavailable"})
        for _ in range(5):
            started = time.monotonic()
            response = await api.get(reco_url(uid), headers=headers)
            assert time.monotonic() - started < 2.0
            assert response.status_code == 200
            assert response.json()["streak_count"] == 0
            assert response.json()["recommended_reward_probability"] == 0.75
        after = metric("cc_api_recommendations_degraded_total", {"reason": "redis_unavailable"})
        assert after == before + 5
        ready = await api.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("failing")
        assert "redis" in ready.json()["detail"]

        server.start()
        redis.Redis.from_url(server.url()).set(f"user:{uid}:streak_count", 6)

        async def streak_back():
            response = await api.get(reco_url(uid), headers=headers)
            return response.json()["streak_count"] == 6

        await eventually(streak_back, timeout=10)
        assert (await api.get("/ready")).status_code == 200


async def test_postgres_stopped_503_then_recovery_without_restart(
    api_env, monkeypatch, private_servers, tokens
):
    server = private_servers("postgres")
    servers.ensure_database(server.url(), "app")
    url = servers.database_url(server.url(), "app")
    servers.migrate(url)
    monkeypatch.setenv("DATABASE_URL", url)
    uid = new_user_id()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO user_segments (user_id, rfm_group) VALUES (%s, 'Whale')",
            (uid,),
        )
    visit = {"user_id": uid, "source": "webapp_button"}
    async with running_app() as api:
        headers = tokens.service_headers
        assert (
            await api.post("/api/notify/site_visit", json=visit, headers=headers)
        ).status_code == 201
        assert (await api.get(reco_url(uid), headers=headers)).status_code == 200

        # fast shutdown: the test server runs with synchronous_commit=off, and an
        # immediate stop could drop the row inserted just before
        server.stop()
        started = time.monotonic()
        response = await api.post("/api/notify/site_visit", json=visit, headers=headers)
        assert time.monotonic() - started < 5.0
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        problem = response.json()
        assert problem["status"] == 503 and problem["dependency"] == "postgres"
        ready = await api.get("/ready")
        assert ready.status_code == 503 and "postgres" in ready.json()["detail"]
        # recommendations keep answering from the segment copy (nothing can change meanwhile)
        response = await api.get(reco_url(uid), headers=headers)
        assert response.status_code == 200 and response.json()["rfm_group"] == "Whale"

        server.start()

        async def stored():
            response = await api.post("/api/notify/site_visit", json=visit, headers=headers)
            return response.status_code == 201

        await eventually(stored, timeout=20, interval=0.25)
        # the segment copy is listening again: a change made now shows up
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "UPDATE user_segments SET risk_profile = 'High-Risk' WHERE user_id = %s", (uid,)
            )

        async def updated():
            response = await api.get(reco_url(uid), headers=headers)
            return response.json().get("recommended_reward_probability") == 0.75

        await eventually(updated, timeout=20, interval=0.25)
        assert (await api.get("/ready")).status_code == 200
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM site_visits").fetchone()[0] >= 2


async def test_broker_stopped_503_in_bounded_time_then_recovery(
    api_env, monkeypatch, private_servers, tokens
):
    broker = private_servers("kafka")
    topic = "actions_fault"
    servers.ensure_topic(broker.bootstrap, topic, partitions=2)
    monkeypatch.setenv("KAFKA_BROKER", broker.bootstrap)
    monkeypatch.setenv("KAFKA_TOPIC", topic)
    action = {"user_id": new_user_id(), "action_type": "LOGIN"}
    async with running_app() as api:
        headers = tokens.service_headers
        response = await api.post("/api/actions", json=action, headers=headers)
        assert response.status_code == 202, response.text

        broker.stop()
        failures_before = sum(
            metric("cc_api_action_publish_failures_total", {"reason": reason})
            for reason in ("timeout", "broker_error")
        )
        timeout = float(api_env["API_PUBLISH_TIMEOUT_S"])
        results = []
        for _ in range(3):
            started = time.monotonic()
            response = await api.post("/api/actions", json=action, headers=headers)
            results.append((response.status_code, time.monotonic() - started))
        for status, elapsed in results:
            assert status == 503
            assert elapsed < timeout + 1.5, results
        assert response.json()["dependency"] == "kafka"
        failures_after = sum(
            metric("cc_api_action_publish_failures_total", {"reason": reason})
            for reason in ("timeout", "broker_error")
        )
        assert failures_after == failures_before + 3
        ready = await api.get("/ready")
        assert ready.status_code == 503 and "kafka" in ready.json()["detail"]

        broker.start()  # memory storage: the topic is gone, create it again
        servers.ensure_topic(broker.bootstrap, topic, partitions=2)

        async def accepted():
            response = await api.post("/api/actions", json=action, headers=headers)
            return response if response.status_code == 202 else None

        response = await eventually(accepted, timeout=30, interval=0.5)
        assert response.json()["topic"] == topic
        assert (await api.get("/ready")).status_code == 200


async def test_api_starts_while_postgres_is_down_and_catches_up(
    api_env, monkeypatch, private_servers, tokens
):
    server = private_servers("postgres")
    servers.ensure_database(server.url(), "app")
    url = servers.database_url(server.url(), "app")
    servers.migrate(url)
    uid = new_user_id()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO user_segments (user_id, rfm_group) VALUES (%s, 'Medium')", (uid,))
    server.stop()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setattr("serving.main.SEGMENT_LOAD_WAIT_S", 1.0)
    async with running_app() as api:
        headers = tokens.service_headers
        response = await api.get(reco_url(uid), headers=headers)
        assert response.status_code == 503
        assert response.json()["dependency"] == "postgres"
        assert (await api.get("/health")).status_code == 200
        server.start()

        async def served():
            return (await api.get(reco_url(uid), headers=headers)).status_code == 200

        await eventually(served, timeout=20, interval=0.25)
        await asyncio.sleep(0)
