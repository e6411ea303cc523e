"""Live streak reads from Redis (``user:{user_id}:streak_count``), batched and bounded.

Every recommendation reads its user's streak live. Concurrent reads are coalesced into one
``MGET`` (at most ``max_inflight`` round trips in flight, each bounded by ``timeout``), which
keeps Redis at a few round trips per event-loop tick however many requests are waiting.

A missing key is streak 0. A value that is not a non-negative integer is *garbage*: streak
0, counted as degraded. Redis down or slow: streak 0, counted as degraded, logged at most
once per interval; after a failure Redis is not asked again for ``retry_after`` seconds, so
an outage costs requests nothing but the first timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from serving.metrics import RECOMMENDATIONS_DEGRADED, RateLimitedLog

logger = logging.getLogger(__name__)

MAX_STREAK: Final = 2**63 - 1
KEY_FORMAT: Final = "user:{}:streak_count"


@dataclass(frozen=True, slots=True)
class StreakRead:
    value: int
    degraded: str | None = None  # "redis_unavailable" | "garbage_streak"


ZERO: Final = StreakRead(0)
UNAVAILABLE: Final = StreakRead(0, "redis_unavailable")
GARBAGE: Final = StreakRead(0, "garbage_streak")
_SMALL: Final = tuple(StreakRead(n) for n in range(1024))
_FAILED: Final = object()


def streak_key(user_id: int) -> str:
    return KEY_FORMAT.format(user_id)


def parse_streak(raw: bytes | str | None) -> StreakRead:
    """A stored value -> streak; missing is 0, anything but a non-negative integer is garbage."""
    if raw is None:
        return ZERO
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    if not raw.isdigit() or len(raw) > 19:  # bytes.isdigit: ASCII digits only
        return GARBAGE
    value = int(raw)
    if value < len(_SMALL):
        return _SMALL[value]
    return StreakRead(value) if value <= MAX_STREAK else GARBAGE


class StreakReader:
    def __init__(
        self,
        client: Redis,
        *,
        timeout: float,
        retry_after: float = 0.5,
        max_batch: int = 512,
        max_inflight: int = 2,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._retry_after = retry_after
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: list[tuple[str, asyncio.Future[object]]] = []
        self._inflight = 0
        self._flush_scheduled = False
        self._down_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._outage_log = RateLimitedLog(logger)
        self._garbage_log = RateLimitedLog(logger)

    async def get(self, user_id: int) -> StreakRead:
        if self._down_until and time.monotonic() < self._down_until:
            return self._degraded(UNAVAILABLE, user_id)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        self._queue.append((KEY_FORMAT.format(user_id), future))
        if not self._flush_scheduled and self._inflight < self._max_inflight:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        raw = await future
        if raw is _FAILED:
            return self._degraded(UNAVAILABLE, user_id)
        read = parse_streak(raw)  # type: ignore[arg-type]
        if read.degraded is not None:
            self._garbage_log.warning(
                "garbage streak value %r for user %s: answering streak 0", raw, user_id
            )
            return self._degraded(read, user_id)
        return read

    def _degraded(self, read: StreakRead, user_id: int) -> StreakRead:
        assert read.degraded is not None
        RECOMMENDATIONS_DEGRADED.labels(read.degraded).inc()
        return read

    def _flush(self) -> None:
        self._flush_scheduled = False
        loop = asyncio.get_running_loop()
        while self._queue and self._inflight < self._max_inflight:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self._inflight += 1
            task = loop.create_task(self._fetch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fetch(self, batch: list[tuple[str, asyncio.Future[object]]]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                values = await self._client.mget([key for key, _ in batch])
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self._retry_after
            self._outage_log.warning(
                "Redis unavailable (%s): recommendations answer streak 0",
                type(exc).__name__,
            )
            for _, future in batch:
                if not future.done():
                    future.set_result(_FAILED)
        except BaseException:
            for _, future in batch:
                if not future.done():
                    future.set_result(_FAILED)
            raise
        else:
            self._down_until = 0.0
            for (_, future), value in zip(batch, values, strict=True):
                if not future.done():
                    future.set_result(value)
        finally:
            self._inflight -= 1
            if self._queue and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for _, future in self._queue:
            if not future.done():
                future.set_result(_FAILED)
        self._queue.clear()
