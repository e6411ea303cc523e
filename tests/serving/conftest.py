"""Fixtures for the API tests: the real app (lifespan and all) on the session's real servers.

`api` gives an httpx AsyncClient bound to a fresh app (ASGI transport, lifespan running)
over the test's own database and Kafka topic; `tokens` mints bearer tokens for it. Redis
is shared by the session, so tests use random user ids (`new_user_id`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY

from serving.auth import mint_token

FAST_TIMEOUTS = {
    "API_PUBLISH_TIMEOUT_S": "2",
    "API_DB_TIMEOUT_S": "1",
    "API_REDIS_TIMEOUT_S": "0.2",
}


def new_user_id() -> int:
    """A random user id, unlikely to collide in the shared Redis."""
    return random.randint(10**9, 10**15)


@dataclass
class Tokens:
    secret: str

    @property
    def service(self) -> str:
        return mint_token(self.secret, "test-service", role="service")

    def user(self, user_id: int) -> str:
        return mint_token(self.secret, user_id)

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    @property
    def service_headers(self) -> dict[str, str]:
        return self.headers(self.service)


@pytest.fixture
def api_env(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in FAST_TIMEOUTS.items():
        monkeypatch.setenv(key, value)
    from pipelines.settings import get_settings

    get_settings.cache_clear()
    return {**stack_env, **FAST_TIMEOUTS}


@contextlib.asynccontextmanager
async def running_app() -> AsyncIterator[httpx.AsyncClient]:
    """A fresh app with its lifespan running, and a client for it (settings from env)."""
    from pipelines.settings import get_settings
    from serving.main import create_app

    get_settings.cache_clear()
    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test", timeout=30
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def api(api_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app() as client:
        yield client


@pytest.fixture
def tokens(api_env: dict[str, str]) -> Tokens:
    return Tokens(api_env["JWT_SECRET"])


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


SegmentSeed = tuple[int, str | None, str | None]


@pytest.fixture
def seed_segments(api_env: dict[str, str]) -> Callable[[list[SegmentSeed]], None]:
    def seed(rows: list[SegmentSeed]) -> None:
        with psycopg.connect(api_env["DATABASE_URL"], autocommit=True) as conn:
            conn.cursor().executemany(
                "INSERT INTO user_segments (user_id, rfm_group, risk_profile, snapshot_date) "
                "VALUES (%s, %s, %s, DATE '2026-03-01') "
                "ON CONFLICT (user_id) DO UPDATE SET rfm_group = excluded.rfm_group, "
                "risk_profile = excluded.risk_profile",
                rows,
            )

    return seed


async def eventually(
    check: Callable[[], object], *, timeout: float = 5.0, interval: float = 0.05
) -> object:
    """Await/call ``check`` until it returns a truthy value (or raise after ``timeout``)."""
    import asyncio
    import inspect
    import time

    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


async def wait_segment(api: httpx.AsyncClient, tokens: Tokens, user_id: int) -> None:
    """Wait until the app's segment copy has ``user_id`` (seeded after start-up)."""

    async def check() -> bool:
        response = await api.get(
            f"/api/user-segments/{user_id}/recommendation", headers=tokens.service_headers
        )
        return response.status_code == 200

    await eventually(check)
