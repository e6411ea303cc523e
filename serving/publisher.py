"""One long-lived Kafka producer for POST /api/actions, with a bounded wait for the ack.

kafka-python's producer is synchronous (a sender thread plus futures). ``send()`` runs in a
small dedicated thread pool (it can block while topic metadata is fetched) and the
broker's acknowledgement is bridged back to the event loop by a callback, so the loop
never blocks. Every publish has one deadline (``API_PUBLISH_TIMEOUT_S``): the answer is
the broker's ack (partition, offset) or :class:`~serving.errors.DependencyUnavailable`
(503) when the deadline passes, never a hang and never a 202 for a record the broker
did not store. ``delivery_timeout_ms`` equals the deadline, so a record that was not
acknowledged in time expires in the producer instead of being sent late.

The producer is created in the background at start-up and again after a failed
creation; kafka-python reconnects to a broker that comes back on its own, and a producer
that failed a publish (Kafka error or timeout) is replaced by a fresh one (see
:meth:`ActionPublisher._discard`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from serving.errors import DependencyUnavailable
from serving.metrics import ACTIONS_PUBLISHED, PUBLISH_FAILURES, RateLimitedLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Published:
    topic: str
    partition: int
    offset: int


class ActionPublisher:
    def __init__(self, brokers: list[str], topic: str, *, timeout: float) -> None:
        self.brokers = brokers
        self.topic = topic
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kafka-send")
        self._producer: KafkaProducer | None = None
        self._creating: asyncio.Future[KafkaProducer] | None = None
        self._log = RateLimitedLog(logger)
        self._closed = False
        self._next_discard = 0.0

    def _config(self) -> dict[str, Any]:
        timeout_ms = int(self.timeout * 1000)
        return {
            "bootstrap_servers": self.brokers,
            "client_id": "cc-analytics-api",
            "acks": "all",
            "linger_ms": 0,
            "max_block_ms": timeout_ms,
            "request_timeout_ms": max(timeout_ms - 100, 500),
            "delivery_timeout_ms": max(timeout_ms, 600),
            "bootstrap_timeout_ms": timeout_ms,
            "reconnect_backoff_ms": 50,
            "reconnect_backoff_max_ms": 1000,
            "max_request_size": 1024 * 1024,
        }

    def start(self) -> None:
        """Begin creating the producer in the background (start-up never waits for Kafka)."""
        self._ensure_creating()

    def _ensure_creating(self) -> asyncio.Future[KafkaProducer]:
        if self._creating is None or (
            self._creating.done()
            and (self._creating.cancelled() or self._creating.exception() is not None)
        ):
            loop = asyncio.get_running_loop()
            self._creating = loop.run_in_executor(self._executor, self._create)
            self._creating.add_done_callback(self._created)
        return self._creating

    def _create(self) -> KafkaProducer:
        return KafkaProducer(**self._config())

    def _created(self, future: asyncio.Future[KafkaProducer]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._log.warning("Kafka producer could not connect: %s", exc)
            return
        if self._closed:
            self._executor.submit(future.result().close, 1)
            return
        self._producer = future.result()
        logger.info("Kafka producer connected to %s", ",".join(self.brokers))

    async def _get_producer(self, remaining: float) -> KafkaProducer:
        if self._producer is not None:
            return self._producer
        creating = self._ensure_creating()
        return await asyncio.wait_for(asyncio.shield(creating), remaining)

    async def publish(self, key: bytes, value: bytes) -> Published:
        """Produce one record and wait for the broker's ack (bounded by ``timeout``)."""
        deadline = time.monotonic() + self.timeout
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[Any] = loop.create_future()

        def on_success(metadata: Any) -> None:
            loop.call_soon_threadsafe(_resolve, acked, metadata, None)

        def on_error(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_resolve, acked, None, exc)

        def send(producer: KafkaProducer) -> None:
            if time.monotonic() >= deadline:  # the caller already gave up: do not send late
                raise TimeoutError("publish deadline passed before send")
            future = producer.send(self.topic, key=key, value=value)
            future.add_callback(on_success)
            future.add_errback(on_error)

        producer: KafkaProducer | None = None
        try:
            producer = await self._get_producer(deadline - time.monotonic())
            async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                await loop.run_in_executor(self._executor, send, producer)
                metadata = await acked
        except (TimeoutError, KafkaError, OSError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else "broker_error"
            # a timeout too: kafka-python's idempotent producer never recovers from a broker
            # that hung (requests timed out, batches expired) - every later send times out
            self._discard(producer)
            PUBLISH_FAILURES.labels(reason).inc()
            self._log.warning("publish to %s failed (%s): %r", self.topic, reason, exc)
            raise DependencyUnavailable(
                "kafka", f"the broker did not acknowledge the action within {self.timeout:g}s"
            ) from None
        ACTIONS_PUBLISHED.inc()
        return Published(metadata.topic, metadata.partition, metadata.offset)

    def _discard(self, producer: KafkaProducer | None) -> None:
        """Replace a producer that failed a publish (at most once per second).

        An idempotent producer whose batches expired while the broker was away may need a
        new producer id, and a broker that lost its state (a restarted local broker) can
        refuse that for good; after a broker that hung (SIGSTOP, a network partition) comes
        back, kafka-python's producer times out every send for good. A fresh producer
        starts over cleanly.
        """
        now = time.monotonic()
        if producer is not self._producer or now < self._next_discard:
            return
        if producer is None:
            return
        self._next_discard = now + 1.0
        self._producer = None
        self._creating = None
        logger.warning("Kafka producer reported an error: replacing it")
        self._executor.submit(producer.close, 1)

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def aclose(self) -> None:
        self._closed = True
        producer, self._producer = self._producer, None
        loop = asyncio.get_running_loop()
        if producer is not None:
            try:
                await loop.run_in_executor(self._executor, lambda: producer.close(timeout=2))
            except KafkaError as exc:  # shutting down with the broker away: go on closing
                logger.warning("Kafka producer did not close cleanly: %r", exc)
        if self._creating is not None and not self._creating.done():
            self._creating.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _resolve(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
