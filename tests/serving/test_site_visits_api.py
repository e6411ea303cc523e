"""POST /api/notify/site_visit: a row in site_visits with the server's time."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from tests.serving.conftest import new_user_id


async def test_visit_is_stored_with_server_time(api, tokens, api_env):
    uid = new_user_id()
    before = datetime.now(UTC)
    response = await api.post(
        "/api/notify/site_visit",
        json={"user_id": uid, "source": "webapp_button"},
        headers=tokens.headers(tokens.user(uid)),
    )
    after = datetime.now(UTC)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user_id"] == uid and body["source"] == "webapp_button"
    stamp = datetime.fromisoformat(body["visit_timestamp"])
    assert before <= stamp <= after
    with psycopg.connect(api_env["DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT id, user_id, source, visit_timestamp FROM site_visits WHERE id = %s",
            (body["id"],),
        ).fetchone()
    assert row == (body["id"], uid, "webapp_button", stamp)


async def test_client_cannot_choose_the_timestamp(api, tokens):
    response = await api.post(
        "/api/notify/site_visit",
        json={"user_id": 5, "source": "x", "visit_timestamp": "2020-01-01T00:00:00Z"},
        headers=tokens.service_headers,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "visit_timestamp"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"source": "x"}, "user_id"),
        ({"user_id": "5", "source": "x"}, "user_id"),
        ({"user_id": 5.0, "source": "x"}, "user_id"),
        ({"user_id": False, "source": "x"}, "user_id"),
        ({"user_id": 0, "source": "x"}, "user_id"),
        ({"user_id": -2, "source": "x"}, "user_id"),
        ({"user_id": 5}, "source"),
        ({"user_id": 5, "source": ""}, "source"),
        ({"user_id": 5, "source": "  "}, "source"),
        ({"user_id": 5, "source": "s" * 65}, "source"),
        ({"user_id": 5, "source": 12}, "source"),
        ({"user_id": 5, "source": None}, "source"),
        ({"user_id": 5, "source": "a\u0000b"}, "source"),
    ],
)
async def test_invalid_visits_are_422_and_not_stored(api, tokens, api_env, body, field):
    response = await api.post("/api/notify/site_visit", json=body, headers=tokens.service_headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == field
    with psycopg.connect(api_env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM site_visits").fetchone() == (0,)


async def test_source_of_64_characters_is_fine(api, tokens):
    response = await api.post(
        "/api/notify/site_visit",
        json={"user_id": 5, "source": "é" * 64},
        headers=tokens.service_headers,
    )
    assert response.status_code == 201
    assert response.json()["source"] == "é" * 64
