"""Bearer-JWT auth on every /api/* endpoint (SPEC §8 Auth, issue 6 part 1)."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time

import jwt
import pytest

from serving.auth import TokenVerifier, mint_token
from serving.errors import Unauthorized
from tests.serving.conftest import new_user_id, running_app, wait_segment


def endpoints(user_id: int) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", f"/api/user-segments/{user_id}/recommendation", None),
        ("POST", "/api/actions", {"user_id": user_id, "action_type": "LOGIN"}),
        ("POST", "/api/notify/site_visit", {"user_id": user_id, "source": "webapp_button"}),
    ]


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def assert_401(response, detail_part: str | None = None) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 401 and body["title"] == "Unauthorized"
    if detail_part:
        assert detail_part in body["detail"]


async def call(api, method, path, body, headers):
    return await api.request(method, path, json=body, headers=headers)


async def test_missing_token_is_401_on_every_api_endpoint(api):
    for method, path, body in endpoints(new_user_id()):
        response = await call(api, method, path, body, {})
        assert_401(response, "missing bearer token")
        assert response.headers["www-authenticate"] == 'Bearer realm="cc-analytics"'


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "bearer-token abc", "Token abc", "Bearer a.b"],
)
async def test_malformed_authorization_is_401(api, header):
    for method, path, body in endpoints(new_user_id()):
        response = await call(api, method, path, body, {"Authorization": header})
        assert_401(response)
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_bad_tokens_are_401(api, tokens):
    uid = new_user_id()
    now = int(time.time())
    secret = tokens.secret
    cases = {
        "expired": jwt.encode({"sub": str(uid), "exp": now - 5}, secret, algorithm="HS256"),
        "wrong signature": mint_token("another-secret-" + "x" * 40, uid),
        "alg none": (
            f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': str(uid), 'exp': now + 60})}."
        ),
        "alg none, service": (
            f"{b64({'alg': 'none', 'typ': 'JWT'})}."
            f"{b64({'sub': 'x', 'role': 'service', 'exp': now + 60})}."
        ),
        "HS512": jwt.encode({"sub": str(uid), "exp": now + 60}, secret, algorithm="HS512"),
        "no exp": jwt.encode({"sub": str(uid)}, secret, algorithm="HS256"),
        "no sub": jwt.encode({"exp": now + 60, "role": "service"}, secret, algorithm="HS256"),
        "numeric sub": jwt.encode({"sub": uid, "exp": now + 60}, secret, algorithm="HS256"),
        "not yet valid": jwt.encode(
            {"sub": str(uid), "exp": now + 600, "nbf": now + 300}, secret, algorithm="HS256"
        ),
        "tampered payload": (
            lambda t: (
                t.split(".")[0]
                + "."
                + b64({"sub": str(uid), "role": "service", "exp": now + 60})
                + "."
                + t.split(".")[2]
            )
        )(mint_token(secret, uid)),
        "garbage": "not-a-jwt",
        "non-ascii": "tökén",
    }
    for name, token in cases.items():
        for method, path, body in endpoints(uid):
            headers = {"Authorization": f"Bearer {token}".encode()}
            response = await call(api, method, path, body, headers)
            assert response.status_code == 401, (name, path, response.text)
            assert_401(response)


async def test_expired_detail_says_expired(api, tokens):
    uid = new_user_id()
    token = mint_token(tokens.secret, uid, ttl=-10)
    response = await api.get(
        f"/api/user-segments/{uid}/recommendation", headers=tokens.headers(token)
    )
    assert_401(response, "expired")


async def test_user_token_acts_only_on_its_own_user(api, tokens, seed_segments):
    me, other = new_user_id(), new_user_id()
    seed_segments([(me, "Whale", "High-Risk"), (other, "Low", None)])
    await wait_segment(api, tokens, me)
    await wait_segment(api, tokens, other)
    mine = tokens.headers(tokens.user(me))
    for method, path, body in endpoints(other):
        response = await call(api, method, path, body, mine)
        assert response.status_code == 403, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 403
    expected = {"GET": 200, "POST": None}
    for method, path, body in endpoints(me):
        response = await call(api, method, path, body, mine)
        wanted = expected[method] or (202 if path == "/api/actions" else 201)
        assert response.status_code == wanted, (path, response.text)


async def test_service_token_acts_on_any_user(api, tokens, seed_segments):
    uid = new_user_id()
    seed_segments([(uid, "Low", None)])
    await wait_segment(api, tokens, uid)
    statuses = []
    for method, path, body in endpoints(uid):
        response = await call(api, method, path, body, tokens.service_headers)
        statuses.append(response.status_code)
    assert statuses == [200, 202, 201]


async def test_a_token_without_a_user_id_and_without_the_service_role_acts_on_nobody(api, tokens):
    uid = new_user_id()
    for sub, role in (("dashboard", None), ("0042", None), (str(uid), "admin"), ("-1", None)):
        token = mint_token(tokens.secret, sub, role=role)
        for method, path, body in endpoints(uid):
            response = await call(api, method, path, body, tokens.headers(token))
            if role == "admin":  # a user token with another role is still a user token
                assert response.status_code in (201, 202, 404), response.text
            else:
                assert response.status_code == 403, (sub, path, response.text)


async def test_forbidden_before_not_found(api, tokens):
    """A user token cannot probe which other users have segments."""
    me = new_user_id()
    response = await api.get(
        f"/api/user-segments/{new_user_id()}/recommendation",
        headers=tokens.headers(tokens.user(me)),
    )
    assert response.status_code == 403


async def test_auth_comes_before_body_parsing(api):
    response = await api.post(
        "/api/actions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_401(response)


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/docs", "/openapi.json"])
async def test_open_endpoints_need_no_token(api, path):
    response = await api.get(path)
    assert response.status_code == 200, response.text


async def test_unknown_api_path_without_token_is_401_not_404(api):
    assert_401(await api.get("/api/nothing-here"))


async def test_unknown_api_path_with_token_is_404_problem(api, tokens):
    response = await api.get("/api/nothing-here", headers=tokens.service_headers)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_verifier_rechecks_expiry_of_cached_tokens(monkeypatch):
    secret = "s" * 40
    verifier = TokenVerifier(secret)
    token = mint_token(secret, 7, ttl=60)
    assert verifier.verify(token).user_id == 7
    real_time = time.time
    monkeypatch.setattr("serving.auth.time.time", lambda: real_time() + 120)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token)


def test_verifier_cache_is_bounded():
    secret = "s" * 40
    verifier = TokenVerifier(secret, cache_size=10)
    for uid in range(1, 50):
        verifier.verify(mint_token(secret, uid))
    assert len(verifier._cache) == 10


def test_mint_token_claims():
    secret = "s" * 40
    claims = jwt.decode(
        mint_token(secret, "svc", role="service", ttl=120), secret, algorithms=["HS256"]
    )
    assert claims["sub"] == "svc" and claims["role"] == "service"
    assert 110 <= claims["exp"] - time.time() <= 121
    assert set(claims) == {"sub", "role", "exp", "iat"}


async def test_startup_refused_without_jwt_secret(api_env, monkeypatch):
    from pipelines.settings import SettingsError

    monkeypatch.delenv("JWT_SECRET")
    monkeypatch.setenv("AUTH_DISABLED", "false")
    with pytest.raises(SettingsError, match=r"^JWT_SECRET is not set"):
        async with running_app():
            pass


@pytest.mark.parametrize("secret", ["short", "change-me-to-a-long-random-string"])
async def test_startup_refused_with_a_weak_or_placeholder_secret(api_env, monkeypatch, secret):
    from pipelines.settings import SettingsError

    monkeypatch.setenv("JWT_SECRET", secret)
    with pytest.raises(SettingsError, match=r"^JWT_SECRET is malformed"):
        async with running_app():
            pass


async def test_auth_disabled_explicitly_logs_a_warning_and_lets_calls_in(
    api_env, monkeypatch, caplog, seed_segments
):
    monkeypatch.delenv("JWT_SECRET")
    monkeypatch.setenv("AUTH_DISABLED", "true")
    uid = new_user_id()
    seed_segments([(uid, "Low", None)])
    with caplog.at_level(logging.WARNING, logger="serving.main"):
        async with running_app() as api:
            response = await api.get(f"/api/user-segments/{uid}/recommendation")
            assert response.status_code == 200
    assert any("AUTH_DISABLED=true" in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize(
    ("missing", "message"),
    [("JWT_SECRET", "JWT_SECRET is not set"), ("DATABASE_URL", "DATABASE_URL is not set")],
)
def test_uvicorn_refuses_to_start_without_a_setting_in_one_line(api_env, missing, message):
    env = {k: v for k, v in os.environ.items() if k != missing}
    env["AUTH_DISABLED"] = "false"
    proc = subprocess.run(
        [sys.executable, "-m", "uvicorn", "serving.main:app", "--port", "0"],
        env=env,
        cwd="/",  # no .env file to fall back on
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if missing in line]
    assert lines and all(message in line for line in lines), proc.stderr
