"""Dependencies injected per request: the services built by the lifespan, and the caller."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import psycopg
from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.asyncio import Redis

from pipelines.domain.recommendation import RecommendationPolicy
from serving.auth import PRINCIPAL_SCOPE_KEY, Principal
from serving.errors import DependencyUnavailable, Unauthorized
from serving.publisher import ActionPublisher
from serving.segments import SegmentStore, SegmentSync
from serving.streaks import StreakReader


@dataclass
class Services:
    """Everything a request may use; one instance per app, built in the lifespan."""

    pool: AsyncConnectionPool
    redis: Redis
    publisher: ActionPublisher
    segments: SegmentStore
    segment_sync: SegmentSync
    streaks: StreakReader
    policy: RecommendationPolicy
    kafka_brokers: list[str]
    db_timeout: float
    redis_timeout: float

    @contextlib.asynccontextmanager
    async def db(self) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
        """A pooled connection; Postgres down or slow -> 503 within ``db_timeout``."""
        try:
            async with asyncio.timeout(self.db_timeout):
                async with self.pool.connection(timeout=self.db_timeout) as conn:
                    yield conn
        except (psycopg.OperationalError, PoolTimeout, TimeoutError) as exc:
            raise DependencyUnavailable(
                "postgres", f"the database did not answer within {self.db_timeout:g}s"
            ) from exc


async def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise DependencyUnavailable("api", "the API is starting")
    return services


async def get_principal(request: Request) -> Principal:
    """The caller, authenticated by :class:`serving.auth.ApiGuard` (fails closed)."""
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if principal is None:
        raise Unauthorized("missing bearer token", invalid_token=False)
    assert isinstance(principal, Principal)
    return principal


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated ``/api/*`` request: who calls, and the services it may use."""

    principal: Principal
    services: Services


async def get_caller(request: Request) -> Caller:
    """One dependency for the API routes (each FastAPI dependency costs ~10 us)."""
    return Caller(await get_principal(request), await get_services(request))


ServicesDep = Annotated[Services, Depends(get_services)]
CallerDep = Annotated[Caller, Depends(get_caller)]
