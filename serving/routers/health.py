"""Liveness (/health, no dependency calls) and readiness (/ready: Postgres, Redis, Kafka)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct

from fastapi import APIRouter
from starlette.responses import Response

from serving.deps import Services, ServicesDep
from serving.errors import Problem, problem_response
from serving.schemas import Health, Readiness

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

_correlation = itertools.count(1)


@router.get("/health", response_model=Health, summary="Liveness")
async def health() -> dict[str, str]:
    """Answers without calling any dependency."""
    return {"status": "healthy"}


async def _check_postgres(services: Services) -> None:
    async with services.db() as conn:
        await conn.execute("SELECT 1")


async def _check_redis(services: Services) -> None:
    async with asyncio.timeout(max(services.redis_timeout, 1.0)):
        await services.redis.ping()


async def kafka_api_versions(host: str, port: int, timeout: float) -> None:
    """Ask a broker for its API versions (Kafka protocol, ApiVersions v0); raise if it can't."""
    correlation = next(_correlation) & 0x7FFFFFFF
    client_id = b"cc-analytics-ready"
    header = struct.pack(">hhih", 18, 0, correlation, len(client_id)) + client_id
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(struct.pack(">i", len(header)) + header)
            await writer.drain()
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            body = await reader.readexactly(size)
        finally:
            writer.close()
    got_correlation, error_code = struct.unpack(">ih", body[:6])
    if got_correlation != correlation or error_code != 0:
        raise ConnectionError(f"unexpected ApiVersions answer (error {error_code})")


async def _check_kafka(services: Services) -> None:
    errors: list[BaseException] = []
    for broker in services.kafka_brokers:
        host, _, port = broker.rpartition(":")
        try:
            await kafka_api_versions(host.strip("[]"), int(port), timeout=1.0)
            return
        except (OSError, TimeoutError, ConnectionError, struct.error, ValueError) as exc:
            errors.append(exc)
    raise ConnectionError(f"no broker answered: {errors[-1]!r}" if errors else "no broker")


async def _check_segments(services: Services) -> None:
    if not services.segments.loaded:
        raise ConnectionError("the segment copy is not loaded yet")


@router.get(
    "/ready",
    response_model=Readiness,
    summary="Readiness: Postgres, Redis and Kafka answer",
    responses={503: {"model": Problem, "description": "A dependency does not answer"}},
)
async def ready(services: ServicesDep) -> Response | dict[str, object]:
    """200 when Postgres, Redis and Kafka answer (and the segment copy is loaded);
    503 problem details naming the failing ones otherwise."""
    names = ("postgres", "redis", "kafka", "segments")
    results = await asyncio.gather(
        _check_postgres(services),
        _check_redis(services),
        _check_kafka(services),
        _check_segments(services),
        return_exceptions=True,
    )
    checks: dict[str, str] = {}
    failing = []
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BaseException):
            failing.append(name)
            reason = str(result).strip().splitlines()[0] if str(result).strip() else ""
            checks[name] = f"failing: {type(result).__name__}" + (f": {reason}" if reason else "")
        else:
            checks[name] = "ok"
    if failing:
        return problem_response(
            503,
            "not ready: " + ", ".join(failing),
            title="Service Unavailable",
            type_="urn:cc-analytics:problem:dependency-unavailable",
            instance="/ready",
            checks=checks,
            dependency=failing[0],
        )
    return {"status": "ready", "checks": checks}
