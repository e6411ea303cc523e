"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis, issue 6 part 3).

The app runs as a real uvicorn process (lifespan, pools, producer) on the session's real
Postgres, Redis and Kafka, with its own database and topic. Every operation gets a bounded
number of generated requests (valid and invalid: examples, boundary values, fuzzing),
once with a valid service token and once without any token. Checks: no 5xx, status code,
content type, headers and body conform to the schema, invalid input is refused, and
without a token every ``/api/*`` call is a 401 problem with a Bearer challenge.
"""

from __future__ import annotations

import secrets
import socket
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devstack import servers
from devstack.servers import PostgresServer
from serving.auth import mint_token
from serving.main import app as serving_app
from tests.reliability.api_process import ApiProcess

pytestmark = pytest.mark.timeout(240)

MAX_EXAMPLES = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
#: published segments for small user ids (generated ids are often small), so the
#: recommendation's 200 path is fuzzed too, not only its 404
SEEDED_USERS = 64
GROUPS = ("Whale", "High Engaged", "Medium", "Low", None)
RISKS = ("High-Risk", "Low-Risk", None)


class FuzzApi:
    def __init__(self, api: ApiProcess, secret: str) -> None:
        self.api = api
        self.service_headers = {
            "Authorization": f"Bearer {mint_token(secret, 'fuzz-service', role='service')}"
        }


@pytest.fixture(scope="module")
def fuzz_api(
    pg_server: PostgresServer,
    pg_template: str,
    redis_url: str,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FuzzApi]:
    name = f"fuzz_{uuid.uuid4().hex[:12]}"
    servers.ensure_database(pg_server.url(), name, template=pg_template)
    database_url = servers.database_url(pg_server.url(), name)
    topic = f"fuzz_actions_{uuid.uuid4().hex[:10]}"
    servers.ensure_topic(kafka_bootstrap, topic, partitions=3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.cursor().executemany(
            "INSERT INTO user_segments (user_id, rfm_group, risk_profile, snapshot_date)"
            " VALUES (%s, %s, %s, DATE '2026-03-01')",
            [
                (uid, GROUPS[uid % len(GROUPS)], RISKS[uid % len(RISKS)])
                for uid in range(1, SEEDED_USERS + 1)
            ],
        )
    secret = secrets.token_urlsafe(48)
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "KAFKA_BROKER": kafka_bootstrap,
        "KAFKA_TOPIC": topic,
        "JWT_SECRET": secret,
        "DATA_LAKE_DIR": str(tmp_path_factory.mktemp("fuzz-lake")),
    }
    api = ApiProcess(env, tmp_path_factory.mktemp("fuzz-api") / "api.log")
    api.start()
    try:
        yield FuzzApi(api, secret)
        assert api.alive(), f"the API died during fuzzing:\n{api.log_tail()}"
        log = api.log_tail(200_000)
        assert "Traceback" not in log and "unhandled error" not in log, log[-4000:]
    finally:
        api.stop()
        servers.drop_database(pg_server.url(), name)


# The schema is static (built from the routes, no settings or I/O), so it is loaded from the
# app object at import; the calls go to the running server. (schemathesis' lazy
# ``from_fixture`` loader does not work with pytest 9: it sets ``Node._nodeid``.)
schema = schemathesis.openapi.from_dict(serving_app.openapi())


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_with_a_service_token(case: schemathesis.Case, fuzz_api: FuzzApi) -> None:
    case.call_and_validate(
        base_url=fuzz_api.api.url, headers=fuzz_api.service_headers, checks=CHECKS, timeout=30
    )


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_without_a_token(case: schemathesis.Case, fuzz_api: FuzzApi) -> None:
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    response = case.call_and_validate(base_url=fuzz_api.api.url, checks=CHECKS, timeout=30)
    if case.path.startswith("/api/"):
        assert response.status_code == 401, (case.method, case.formatted_path, response.text)
        headers = {k.lower(): v for k, v in response.headers.items()}  # name -> [values]
        assert headers["www-authenticate"][0].startswith("Bearer")
        assert headers["content-type"] == ["application/problem+json"]


@pytest.mark.parametrize("timestamp", ["", " ", "now", "2026-13-01T00:00:00Z"])
def test_invalid_action_timestamp_is_422_not_now(fuzz_api: FuzzApi, timestamp: str) -> None:
    """Found by this fuzzer: ``"action_timestamp": ""`` was taken as "now" (202)."""
    response = httpx.post(
        f"{fuzz_api.api.url}/api/actions",
        json={"user_id": 7, "action_type": "LOGIN", "action_timestamp": timestamp},
        headers=fuzz_api.service_headers,
        timeout=30,
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "action_timestamp"


def raw_request(port: int, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request with the request target exactly as given (no client-side
    normalisation), no Authorization header; returns (status, response head + body)."""
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/api/actions"),
        ("POST", "//api/actions"),
        ("POST", "/api//actions"),
        ("POST", "/api/./actions"),
        ("POST", "/api/../api/actions"),
        ("POST", "/%61pi/actions"),
        ("POST", "/api%2factions"),
        ("POST", "/api/actions/"),
        ("POST", "/api/actions?token=x"),
        ("POST", "http://127.0.0.1/api/actions"),
        ("POST", "/api/notify/site_visit"),
        ("POST", "/API/notify/site_visit"),
        ("GET", "/api/user-segments/1/recommendation"),
        ("HEAD", "/api/user-segments/1/recommendation"),
        ("GET", "/api/user-segments/1/recommendation/"),
        ("GET", "//api/user-segments/1/recommendation"),
        ("GET", "/api/user-segments/%31/recommendation"),
        ("OPTIONS", "/api/actions"),
    ],
)
def test_no_request_target_reaches_an_api_handler_without_a_token(
    fuzz_api: FuzzApi, method: str, target: str
) -> None:
    """However the path is spelled, an anonymous request never gets past the auth guard:
    it is refused (401) or matches no route (404/405); never handled (2xx, 422, 5xx)."""
    body = b'{"user_id": 1, "action_type": "LOGIN", "source": "x"}' if method == "POST" else b""
    status, answer = raw_request(fuzz_api.api.port, method, target, body)
    assert status in (401, 404, 405), answer[:500]
    if status == 401:
        assert b"www-authenticate: Bearer" in answer.lower().replace(b"bearer", b"Bearer")
