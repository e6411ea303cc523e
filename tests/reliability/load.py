"""A small closed-loop HTTP load for fault-injection tests: N workers call the API
back to back and record every answer with its send and receive times."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    sent: float  # time.monotonic() when sent
    done: float  # ... when answered (or failed)
    status: int | None  # None: no HTTP answer (connection refused, reset, timeout)
    content_type: str | None
    body: dict | None
    error: str | None = None


Request = tuple[str, str, str, dict | None]  # (name, method, path, json body)


@dataclass
class Load:
    """Runs ``workers`` loops of ``next_request()`` until :meth:`stop`."""

    base_url: str
    headers: dict[str, str]
    next_request: Callable[[], Request]
    workers: int = 6
    timeout: float = 10.0
    calls: list[Call] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Load:
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout
        )
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)
            self._tasks = []
            await self._client.aclose()

    async def _worker(self) -> None:
        while not self._stop.is_set():
            name, method, path, body = self.next_request()
            sent = time.monotonic()
            try:
                response = await self._client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                self.calls.append(Call(name, sent, time.monotonic(), None, None, None, repr(exc)))
                await asyncio.sleep(0.01)
                continue
            content_type = response.headers.get("content-type")
            try:
                parsed = response.json()
            except ValueError:
                parsed = None
            self.calls.append(
                Call(name, sent, time.monotonic(), response.status_code, content_type, parsed)
            )
            if response.status_code >= 500:
                await asyncio.sleep(0.01)  # like a client honouring Retry-After, briefly


def round_robin(requests: list[Request]) -> Callable[[], Request]:
    cycle = itertools.cycle(requests)
    return lambda: next(cycle)
