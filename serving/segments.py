"""The API's online copy of ``user_segments``: in-process, kept fresh by LISTEN/NOTIFY.

Postgres stays the system of record. Each API process holds ``user_id -> (rfm_group,
risk_profile)`` in a dict of small integer codes (one shared tuple per distinct pair), so a
recommendation needs no database round trip.

Freshness: migration 0002 adds statement-level triggers on ``user_segments`` that NOTIFY
channel ``user_segments_changed`` on commit with the changed user ids (statements touching
up to 100 rows) or ``*`` (bigger statements, TRUNCATE: a daily publish). :class:`SegmentSync`
LISTENs on a dedicated connection and

- re-reads the named rows (a ``risk_profile`` UPDATE shows within milliseconds),
- reloads the whole table for ``*`` in a worker thread and swaps the dict atomically
  (1,000,000 rows take well under 2 s; the old copy serves meanwhile),
- on (re)connect: LISTEN first, then a full reload, so no change can fall in between.

While Postgres is unreachable the copy keeps serving what was committed before the
connection dropped (nothing can change in a stopped database); the listener reconnects
with backoff and reloads. Until the first load completes, lookups raise 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

import psycopg

from serving import repository
from serving.errors import DependencyUnavailable
from serving.metrics import (
    SEGMENT_COPY_CONNECTED,
    SEGMENT_COPY_RELOADS,
    SEGMENT_COPY_ROWS,
    RateLimitedLog,
)
from serving.repository import SegmentRow

logger = logging.getLogger(__name__)

Segment = tuple[str | None, str | None]
RELOAD: Final = "*"


class _Table:
    """Codes for distinct (rfm_group, risk_profile) pairs plus the user -> code dict."""

    __slots__ = ("codes", "index", "values")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.values: list[Segment] = []
        self.index: dict[Segment, int] = {}

    def code_for(self, segment: Segment) -> int:
        code = self.index.get(segment)
        if code is None:
            code = self.index[segment] = len(self.values)
            self.values.append(segment)
        return code

    def add_rows(self, rows: list[SegmentRow]) -> None:
        codes, index, code_for = self.codes, self.index, self.code_for
        for user_id, group, risk in rows:
            key = (group, risk)
            code = index.get(key)
            if code is None:
                code = code_for(key)
            codes[user_id] = code


class SegmentStore:
    def __init__(self) -> None:
        self._table: _Table | None = None
        self.loaded_at: float | None = None

    @property
    def loaded(self) -> bool:
        return self._table is not None

    def __len__(self) -> int:
        return len(self._table.codes) if self._table is not None else 0

    def get(self, user_id: int) -> Segment | None:
        """(rfm_group, risk_profile) of a user, None if absent; 503 before the first load."""
        table = self._table
        if table is None:
            raise DependencyUnavailable("postgres", "the segment copy is not loaded yet")
        code = table.codes.get(user_id)
        return None if code is None else table.values[code]

    def replace(self, table: _Table) -> None:
        self._table = table
        self.loaded_at = time.time()
        SEGMENT_COPY_ROWS.set(len(table.codes))

    def apply(self, user_ids: set[int], rows: list[SegmentRow]) -> None:
        """Set the given users to their current rows; users without a row are removed."""
        table = self._table
        if table is None:
            return
        for user_id, group, risk in rows:
            table.codes[user_id] = table.code_for((group, risk))
            user_ids.discard(user_id)
        for user_id in user_ids:
            table.codes.pop(user_id, None)
        SEGMENT_COPY_ROWS.set(len(table.codes))


def load_table(dsn: str, *, connect_timeout: int) -> _Table:
    """Read the whole table (blocking; run in a thread)."""
    table = _Table()
    with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
        for rows in repository.iter_all_segments(conn):
            table.add_rows(rows)
    return table


class SegmentSync:
    """Keeps a :class:`SegmentStore` equal to ``user_segments`` (see the module doc)."""

    def __init__(
        self,
        store: SegmentStore,
        dsn: str,
        *,
        timeout: float,
        heartbeat: float = 5.0,
        coalesce: float = 0.2,
        fallback_reload: float = 30.0,
    ) -> None:
        self.store = store
        self._dsn = dsn
        self._timeout = timeout
        self._heartbeat = heartbeat
        self._coalesce = coalesce
        self._task: asyncio.Task[None] | None = None
        self._first_load = asyncio.Event()
        self.listening = False
        self._notified = True
        self._fallback_reload = fallback_reload
        self._reloaded = 0.0
        self._log = RateLimitedLog(logger, interval=30.0)

    async def start(self, *, wait: float) -> None:
        """Start following; wait up to ``wait`` s for the first load (start-up never fails)."""
        self._task = asyncio.create_task(self._run(), name="segment-sync")
        try:
            await asyncio.wait_for(self._first_load.wait(), wait)
        except TimeoutError:
            logger.warning(
                "segment copy not loaded after %.0fs (Postgres unreachable?): "
                "recommendations answer 503 until it is",
                wait,
            )

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _set_listening(self, value: bool) -> None:
        self.listening = value
        SEGMENT_COPY_CONNECTED.set(1 if value else 0)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=max(1, round(self._timeout))
                )
                async with conn:
                    await conn.execute(f"LISTEN {repository.SEGMENTS_CHANNEL}")
                    self._notified = await repository.segments_notify(conn)
                    if not self._notified:
                        logger.warning(
                            "user_segments has no change notifications (migration 0002 not "
                            "applied? run `make migrate`): reloading the segment copy every "
                            "%.0fs instead",
                            self._fallback_reload,
                        )
                    await self._reload()
                    self._set_listening(True)
                    backoff = 0.2
                    await self._follow(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self._log.warning(
                    "segment copy lost Postgres (%s: %s); serving the last copy, reconnecting",
                    type(exc).__name__,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                )
            finally:
                self._set_listening(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _reload(self) -> None:
        started = time.monotonic()
        table = await asyncio.to_thread(
            load_table, self._dsn, connect_timeout=max(1, round(self._timeout))
        )
        self.store.replace(table)
        self._reloaded = time.monotonic()
        SEGMENT_COPY_RELOADS.inc()
        self._first_load.set()
        logger.info(
            "segment copy loaded: %d users in %.2fs", len(table.codes), time.monotonic() - started
        )

    async def _follow(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        while True:
            notes = [n async for n in conn.notifies(timeout=self._heartbeat, stop_after=1)]
            if not notes:
                async with asyncio.timeout(self._timeout):
                    await conn.execute("SELECT 1")
                if not self._notified and time.monotonic() - self._reloaded >= (
                    self._fallback_reload
                ):
                    await self._reload()
                continue
            payloads = [n.payload for n in notes]
            payloads += [n.payload async for n in conn.notifies(timeout=0.01)]
            user_ids = _parse_payloads(payloads)
            if user_ids is None:
                # a bulk change: let a multi-statement publish finish notifying, then reload
                await asyncio.sleep(self._coalesce)
                _ = [n async for n in conn.notifies(timeout=0.01)]
                await self._reload()
                continue
            async with asyncio.timeout(self._timeout):
                rows = await repository.fetch_segments(conn, sorted(user_ids))
            self.store.apply(user_ids, rows)


def _parse_payloads(payloads: list[str]) -> set[int] | None:
    """The user ids named by notifications; None means reload everything."""
    user_ids: set[int] = set()
    for payload in payloads:
        if payload == RELOAD:
            return None
        for part in payload.split(","):
            if not part.isdigit():
                return None  # unexpected payload: be safe
            user_ids.add(int(part))
    return user_ids
