"""GET /api/user-segments/{user_id}/recommendation against the real Postgres and Redis."""

from __future__ import annotations

import json

import psycopg
import pytest
import redis

from tests.serving.conftest import eventually, metric, new_user_id, running_app


def reco_url(user_id: int) -> str:
    return f"/api/user-segments/{user_id}/recommendation"


async def get_reco(api, tokens, user_id: int):
    return await api.get(reco_url(user_id), headers=tokens.service_headers)


async def wait_visible(api, tokens, user_id: int, predicate=lambda body: True):
    async def check():
        response = await get_reco(api, tokens, user_id)
        return response if response.status_code == 200 and predicate(response.json()) else None

    return await eventually(check)


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


POLICY_ROWS = [
    ("Whale", "High-Risk", 0.75, "next 2 hours"),
    ("Medium", "Low-Risk", 0.50, "next 6 hours"),
    ("Low", "High-Risk", 0.25, "next 24 hours"),
    ("Low", "Low-Risk", 0.25, "next 24 hours"),
    ("High Engaged", "Low-Risk", 0.10, "any time"),
    ("Whale", "Low-Risk", 0.10, "any time"),
    ("Medium", "High-Risk", 0.10, "any time"),
]


async def test_every_policy_row(api, tokens, seed_segments):
    users = {new_user_id(): row for row in POLICY_ROWS}
    seed_segments([(uid, group, risk) for uid, (group, risk, _, _) in users.items()])
    for uid, (group, risk, probability, window) in users.items():
        response = await wait_visible(api, tokens, uid)
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "user_id": uid,
            "rfm_group": group,
            "risk_profile": risk,
            "streak_count": 0,
            "recommended_reward_probability": probability,
            "recommended_time_window": window,
        }


async def test_null_group_and_risk_default_to_low_and_unknown(api, tokens, seed_segments):
    both, group_only, risk_only = new_user_id(), new_user_id(), new_user_id()
    seed_segments([(both, None, None), (group_only, "Whale", None), (risk_only, None, "Low-Risk")])
    body = (await wait_visible(api, tokens, both)).json()
    assert (body["rfm_group"], body["risk_profile"]) == ("Low", "Unknown")
    assert body["recommended_reward_probability"] == 0.25
    assert body["recommended_time_window"] == "next 24 hours"
    body = (await wait_visible(api, tokens, group_only)).json()
    assert (body["rfm_group"], body["risk_profile"], body["recommended_reward_probability"]) == (
        "Whale",
        "Unknown",
        0.10,
    )
    body = (await wait_visible(api, tokens, risk_only)).json()
    assert (body["rfm_group"], body["recommended_reward_probability"]) == ("Low", 0.25)


async def test_missing_segment_is_404_problem(api, tokens):
    response = await get_reco(api, tokens, new_user_id())
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404
    assert "no published segment" in response.json()["detail"]


@pytest.mark.parametrize(
    ("group", "risk", "streak", "expected"),
    [
        ("Whale", "High-Risk", 3, 0.78),
        ("Medium", "Low-Risk", 7, 0.57),
        ("Low", None, 12, 0.37),
        ("Whale", "High-Risk", 20, 0.95),
        ("Whale", "High-Risk", 25, 0.95),  # capped
        ("High Engaged", "High-Risk", 1000, 0.95),
    ],
)
async def test_streak_boost_and_cap(api, tokens, seed_segments, r, group, risk, streak, expected):
    uid = new_user_id()
    r.set(f"user:{uid}:streak_count", streak)
    seed_segments([(uid, group, risk)])
    body = (await wait_visible(api, tokens, uid)).json()
    assert body["streak_count"] == streak
    assert body["recommended_reward_probability"] == expected


async def test_floor_with_a_configured_policy(
    api_env, monkeypatch, tmp_path, tokens, seed_segments
):
    policy = {
        "rules": [
            {
                "rfm_group": "Whale",
                "risk_profile": "*",
                "base_probability": 0.6,
                "time_window": "now",
            },
            {
                "rfm_group": "*",
                "risk_profile": "*",
                "base_probability": 0.0,
                "time_window": "whenever",
            },
        ]
    }
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    monkeypatch.setenv("RECOMMENDATION_POLICY_FILE", str(path))
    low, whale = new_user_id(), new_user_id()
    seed_segments([(low, "Low", None), (whale, "Whale", "Low-Risk")])
    async with running_app() as api:
        body = (await wait_visible(api, tokens, low)).json()
        assert (body["recommended_reward_probability"], body["recommended_time_window"]) == (
            0.05,
            "whenever",
        )
        body = (await wait_visible(api, tokens, whale)).json()
        assert (body["recommended_reward_probability"], body["recommended_time_window"]) == (
            0.6,
            "now",
        )


async def test_malformed_policy_file_stops_startup_naming_the_variable(
    api_env, monkeypatch, tmp_path
):
    from pipelines.settings import SettingsError

    path = tmp_path / "policy.json"
    path.write_text('{"rules": []}')
    monkeypatch.setenv("RECOMMENDATION_POLICY_FILE", str(path))
    with pytest.raises(SettingsError, match=r"^RECOMMENDATION_POLICY_FILE is malformed"):
        async with running_app():
            pass


async def test_missing_streak_is_zero_and_not_degraded(api, tokens, seed_segments):
    uid = new_user_id()
    seed_segments([(uid, "Whale", "High-Risk")])
    await wait_visible(api, tokens, uid)
    before = metric("cc_api_recommendations_degraded_total", {"reason": "garbage_streak"})
    before_down = metric("cc_api_recommendations_degraded_total", {"reason": "redis_unavailable"})
    body = (await get_reco(api, tokens, uid)).json()
    assert (body["streak_count"], body["recommended_reward_probability"]) == (0, 0.75)
    assert metric("cc_api_recommendations_degraded_total", {"reason": "garbage_streak"}) == before
    assert (
        metric("cc_api_recommendations_degraded_total", {"reason": "redis_unavailable"})
        == before_down
    )


@pytest.mark.parametrize("garbage", [b"abc", b"-3", b"1.5", b" 7", b"", b"9" * 30, b"\xff\xfe"])
async def test_garbage_streak_is_zero_and_counted(api, tokens, seed_segments, r, garbage):
    uid = new_user_id()
    r.set(f"user:{uid}:streak_count", garbage)
    seed_segments([(uid, "Medium", "Low-Risk")])
    await wait_visible(api, tokens, uid)
    before = metric("cc_api_recommendations_degraded_total", {"reason": "garbage_streak"})
    response = await get_reco(api, tokens, uid)
    assert response.status_code == 200
    assert (response.json()["streak_count"], response.json()["recommended_reward_probability"]) == (
        0,
        0.50,
    )
    assert metric("cc_api_recommendations_degraded_total", {"reason": "garbage_streak"}) == (
        before + 1
    )


async def test_streak_key_of_another_type_counts_as_missing(api, tokens, seed_segments, r):
    uid = new_user_id()
    r.hset(f"user:{uid}:streak_count", "x", "5")
    seed_segments([(uid, "Low", None)])
    body = (await wait_visible(api, tokens, uid)).json()
    assert (body["streak_count"], body["recommended_reward_probability"]) == (0, 0.25)


async def test_streak_is_read_live(api, tokens, seed_segments, r):
    uid = new_user_id()
    seed_segments([(uid, "Low", None)])
    await wait_visible(api, tokens, uid)
    for streak in (1, 2, 9):
        r.set(f"user:{uid}:streak_count", streak)
        body = (await get_reco(api, tokens, uid)).json()
        assert body["streak_count"] == streak
        assert body["recommended_reward_probability"] == round(0.25 + 0.01 * streak, 4)


async def test_concurrent_requests_each_get_their_own_streak(api, tokens, seed_segments, r):
    import asyncio

    users = [new_user_id() for _ in range(60)]
    for n, uid in enumerate(users):
        r.set(f"user:{uid}:streak_count", n)
    seed_segments([(uid, "Low", None) for uid in users])
    await wait_visible(api, tokens, users[-1])
    responses = await asyncio.gather(*(get_reco(api, tokens, uid) for uid in users))
    assert [resp.json()["streak_count"] for resp in responses] == list(range(60))


async def test_risk_profile_update_in_postgres_shows_within_seconds(
    api, tokens, seed_segments, api_env
):
    uid = new_user_id()
    seed_segments([(uid, "Whale", "Low-Risk")])
    body = (await wait_visible(api, tokens, uid)).json()
    assert body["recommended_reward_probability"] == 0.10
    with psycopg.connect(api_env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "UPDATE user_segments SET risk_profile = 'High-Risk' WHERE user_id = %s", (uid,)
        )
    body = (await wait_visible(api, tokens, uid, lambda b: b["risk_profile"] == "High-Risk")).json()
    assert body["recommended_reward_probability"] == 0.75


async def test_bulk_publish_and_deletes_show(api, tokens, seed_segments, api_env):
    """A statement over 100 rows triggers a full reload; deletes and TRUNCATE remove users."""
    base = new_user_id()
    users = list(range(base, base + 500))
    with psycopg.connect(api_env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO user_segments (user_id, rfm_group) "
            "SELECT g, 'Medium' FROM generate_series(%s::bigint, %s::bigint) g",
            (users[0], users[-1]),
        )
    await wait_visible(api, tokens, users[0])
    body = (await wait_visible(api, tokens, users[-1])).json()
    assert body["rfm_group"] == "Medium"
    with psycopg.connect(api_env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("DELETE FROM user_segments WHERE user_id = %s", (users[0],))

    async def gone(uid):
        return (await get_reco(api, tokens, uid)).status_code == 404

    await eventually(lambda: gone(users[0]))
    assert (await get_reco(api, tokens, users[1])).status_code == 200
    with psycopg.connect(api_env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("TRUNCATE user_segments")
    await eventually(lambda: gone(users[1]))
    assert len(api.app.state.services.segments) == 0


async def test_segments_published_before_startup_are_served(api_env, tokens, seed_segments):
    uid = new_user_id()
    seed_segments([(uid, "Whale", "High-Risk")])
    async with running_app() as api:
        # the first load completes before the app answers: no polling needed
        response = await get_reco(api, tokens, uid)
        assert response.status_code == 200
        assert response.json()["recommended_reward_probability"] == 0.75


async def test_without_the_notify_triggers_the_copy_reloads_periodically(
    api_env, monkeypatch, tokens, seed_segments, caplog
):
    """A database not migrated to 0002: a warning, and periodic reloads keep the copy fresh."""
    with psycopg.connect(api_env["DATABASE_URL"], autocommit=True) as conn:
        for trigger in ("insert", "update", "delete", "truncate"):
            conn.execute(f"DROP TRIGGER user_segments_notify_{trigger} ON user_segments")
    monkeypatch.setattr("serving.main.SEGMENT_HEARTBEAT_S", 0.2)
    monkeypatch.setattr("serving.main.SEGMENT_FALLBACK_RELOAD_S", 0.5)
    uid = new_user_id()
    seed_segments([(uid, "Whale", "Low-Risk")])
    async with running_app() as api:
        assert "migration 0002 not applied" in caplog.text
        assert (await get_reco(api, tokens, uid)).json()["risk_profile"] == "Low-Risk"
        with psycopg.connect(api_env["DATABASE_URL"], autocommit=True) as conn:
            conn.execute(
                "UPDATE user_segments SET risk_profile = 'High-Risk' WHERE user_id = %s", (uid,)
            )
        await wait_visible(api, tokens, uid, lambda b: b["risk_profile"] == "High-Risk")
