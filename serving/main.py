"""FastAPI application `serving.main:app` (SPEC §8).

Settings are read and every client is built in the lifespan (never at import), so tests
and tools can set the environment first:

- psycopg ``AsyncConnectionPool`` (site visits, readiness), opened without waiting: the
  API starts while Postgres is down and recovers when it is back;
- ``redis.asyncio`` client (live streaks, batched), every call bounded;
- one long-lived Kafka producer (:mod:`serving.publisher`);
- the online copy of ``user_segments`` (:mod:`serving.segments`).

The app refuses to start without ``JWT_SECRET`` unless ``AUTH_DISABLED=true`` (then a
warning is logged); a missing or malformed setting stops start-up with one line naming it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_fastapi_instrumentator import Instrumentator
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from pipelines.domain.recommendation import (
    DEFAULT_POLICY,
    PolicyError,
    RecommendationPolicy,
    policy_from_json,
)
from pipelines.settings import Settings, SettingsError, get_settings
from serving.auth import ApiGuard, Authenticator, check_secret
from serving.deps import Services
from serving.errors import FieldError, Problem, install_error_handlers
from serving.metrics import RequestMetrics
from serving.publisher import ActionPublisher
from serving.routers import actions, health, recommendations, site_visits
from serving.segments import SegmentStore, SegmentSync
from serving.streaks import StreakReader

logger = logging.getLogger(__name__)

API_VERSION = "1.0.0"
SEGMENT_LOAD_WAIT_S = 30.0
SEGMENT_HEARTBEAT_S = 5.0
SEGMENT_FALLBACK_RELOAD_S = 30.0
GC_THRESHOLD0 = 10_000


def load_policy(settings: Settings) -> RecommendationPolicy:
    path = settings.recommendation_policy_file
    if path is None:
        return DEFAULT_POLICY
    try:
        return policy_from_json(path.read_bytes())
    except OSError as exc:
        raise SettingsError(
            f"RECOMMENDATION_POLICY_FILE is malformed: cannot read {path}: {exc.strerror}"
        ) from None
    except PolicyError as exc:
        raise SettingsError(f"RECOMMENDATION_POLICY_FILE is malformed: {exc}") from None


def tune_gc() -> tuple[int, int, int]:
    """Keep the cyclic garbage collector off the hot path; returns the old thresholds.

    Under load the objects of in-flight requests survive young collections and trigger
    full ones, each walking every module, class and closure of the app: tens of ms, the
    p99 of the recommendation endpoint (measured). So: freeze what start-up built (never
    garbage) and collect the young generation every 10,000 net allocations instead of
    700; request objects are freed by reference counting long before that.
    """
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(old[0], GC_THRESHOLD0), old[1], old[2])
    return old


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if not logging.getLogger().handlers:  # e.g. under uvicorn: make our INFO lines visible
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
        logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = get_settings()
    secret = check_secret(
        settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
        auth_disabled=settings.auth_disabled,
    )
    if secret is None:
        logger.warning(
            "AUTH_DISABLED=true: the API accepts every /api/* call without a token "
            "(local experiments only)"
        )
    policy = load_policy(settings)
    db_timeout = settings.api_db_timeout_s
    dsn = settings.psycopg_dsn
    async with contextlib.AsyncExitStack() as stack:  # closes in reverse order of opening
        pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=10,
            open=False,
            timeout=db_timeout,
            check=AsyncConnectionPool.check_connection,
            name="api",
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, round(db_timeout)),
                "options": f"-c statement_timeout={int(db_timeout * 1000)}",
            },
        )
        await pool.open(wait=False)  # start even while Postgres is down
        stack.push_async_callback(pool.close)
        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.api_redis_timeout_s,
            socket_connect_timeout=settings.api_redis_timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=32,
        )
        stack.push_async_callback(redis.aclose)  # type: ignore[attr-defined]  # old stubs
        publisher = ActionPublisher(
            settings.kafka_broker, settings.kafka_topic, timeout=settings.api_publish_timeout_s
        )
        publisher.start()
        stack.push_async_callback(publisher.aclose)
        streaks = StreakReader(redis, timeout=settings.api_redis_timeout_s)
        stack.push_async_callback(streaks.aclose)
        store = SegmentStore()
        sync = SegmentSync(
            store,
            dsn,
            timeout=db_timeout,
            heartbeat=SEGMENT_HEARTBEAT_S,
            fallback_reload=SEGMENT_FALLBACK_RELOAD_S,
        )
        stack.push_async_callback(sync.aclose)
        await sync.start(wait=SEGMENT_LOAD_WAIT_S)
        app.state.services = Services(
            pool=pool,
            redis=redis,
            publisher=publisher,
            segments=store,
            segment_sync=sync,
            streaks=streaks,
            policy=policy,
            kafka_brokers=settings.kafka_broker,
            db_timeout=db_timeout,
            redis_timeout=settings.api_redis_timeout_s,
        )
        app.state.authenticator = Authenticator(secret)
        stack.callback(_detach, app)
        stack.callback(_restore_gc, tune_gc())
        yield


def _detach(app: FastAPI) -> None:
    app.state.authenticator = None
    app.state.services = None


def _restore_gc(thresholds: tuple[int, int, int]) -> None:
    gc.unfreeze()
    gc.set_threshold(*thresholds)


_ERROR_RESPONSES = {
    "401": "Missing, malformed, expired or invalid bearer token",
    "403": "The token may not act on this user",
    "413": "Request body larger than 64 KiB",
    "422": "Invalid input",
    "503": "A dependency did not answer in time; retry later",
}


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """OpenAPI with the bearer scheme on /api/* and problem details for every error."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas["FieldError"] = FieldError.model_json_schema()
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        problem.pop("$defs", None)
        schemas["Problem"] = problem
        components["securitySchemes"] = {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "HS256 JWT signed with JWT_SECRET: `sub` = user id (user "
                'token) or `role` = "service" (service token); `exp` required.',
            }
        }
        problem_content = {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                if path.startswith("/api/"):
                    operation["security"] = [{"bearerAuth": []}]
                    wanted = ["401", "403", "422", "503"]
                    if method in {"post", "put", "patch"}:
                        wanted.append("413")
                    for status in wanted:
                        responses.setdefault(status, {"description": _ERROR_RESPONSES[status]})
                for status, response in responses.items():
                    if status.isdigit() and int(status) >= 400:
                        response["content"] = problem_content
        app.openapi_schema = schema
        return schema

    return build


def create_app() -> FastAPI:
    app = FastAPI(
        title="CC Analytics API",
        version=API_VERSION,
        description=(
            "User actions (to Kafka), corporate-site visits (to Postgres) and reward "
            "recommendations (published RFM segments + live Redis streaks). Every `/api/*` "
            "call needs a bearer JWT; errors are RFC 9457 problem details."
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(recommendations.router)
    app.include_router(actions.router)
    app.include_router(site_visits.router)
    app.include_router(health.router)
    app.add_middleware(ApiGuard)
    app.add_middleware(RequestMetrics)
    # /metrics (and PROMETHEUS_MULTIPROC_DIR support) from the instrumentator; its own
    # per-request middleware is not installed: RequestMetrics records the same metrics
    # at a fraction of the cost (the hot path's budget is ~100 us per request)
    Instrumentator().expose(app, include_in_schema=False, should_gzip=False)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


app = create_app()
