"""Prometheus metrics of the API (exposed at ``/metrics`` by prometheus-fastapi-instrumentator).

HTTP request metrics come from :class:`RequestMetrics`; the counters below are the API's
own. They live in the default registry, created once per
process at import (prometheus_client's model), so several app instances in one test
process share them: tests compare values before and after.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

ACTIONS_PUBLISHED = Counter(
    "cc_api_actions_published_total",
    "User actions produced to Kafka and acknowledged by the broker (POST /api/actions 202).",
)
PUBLISH_FAILURES = Counter(
    "cc_api_action_publish_failures_total",
    "POST /api/actions answered 503: the broker did not acknowledge in time.",
    ["reason"],
)
RECOMMENDATIONS_DEGRADED = Counter(
    "cc_api_recommendations_degraded_total",
    "Recommendations answered with streak 0 because the streak could not be read.",
    ["reason"],
)
SEGMENT_COPY_ROWS = Gauge(
    "cc_api_segment_copy_rows",
    "Rows in the API's in-memory copy of user_segments.",
    multiprocess_mode="liveall",
)
SEGMENT_COPY_RELOADS = Counter(
    "cc_api_segment_copy_reloads_total",
    "Full reloads of the in-memory copy of user_segments.",
)
SEGMENT_COPY_CONNECTED = Gauge(
    "cc_api_segment_copy_listening",
    "1 while the copy of user_segments is listening for changes (fresh), else 0.",
    multiprocess_mode="liveall",
)


class RateLimitedLog:
    """Log a recurring problem once per ``interval`` seconds, with the count in between."""

    def __init__(self, log: logging.Logger, interval: float = 30.0) -> None:
        self._log = log
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        suppressed, self._suppressed = self._suppressed, 0
        self._next = now + self._interval
        if suppressed:
            self._log.warning(message + " (%d more since the last report)", *args, suppressed)
        else:
            self._log.warning(message, *args)


REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by route template, method and status class.",
    ["handler", "method", "status"],
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Latency of HTTP requests by route template and method (until the response is sent).",
    ["handler", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
_STATUS_CLASS: Final = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


class RequestMetrics:
    """Pure ASGI middleware: request count and latency per route template.

    Same metric names and labels as prometheus-fastapi-instrumentator's defaults
    (``http_requests_total``, ``http_request_duration_seconds``; status grouped as
    ``2xx``...), at a fraction of its per-request cost: the route template is read from
    the scope after routing instead of matching every route again.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            handler = getattr(route, "path", None) or "none"
            if handler != "/metrics":
                method = scope["method"]
                children = self._children.get((handler, method))
                if children is None:
                    children = (
                        {s: REQUESTS.labels(handler, method, s) for s in _STATUS_CLASS},
                        LATENCY.labels(handler, method),
                    )
                    self._children[(handler, method)] = children
                counters, histogram = children
                index = status // 100
                counters[_STATUS_CLASS[index] if 0 <= index < 6 else "5xx"].inc()
                histogram.observe(time.perf_counter() - start)
