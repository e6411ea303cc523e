"""Session fixtures: real PostgreSQL, Redis and a Kafka-protocol broker on free ports.

Every integration test uses these. Servers live in a temp dir for the whole session and
are stopped at the end. Isolation per test: a fresh database cloned from a migrated
template (`database_url`), a unique Kafka topic (`kafka_topic`), and unique user ids or
key prefixes in Redis. Tests that stop a server (fault injection) start their own with
the `private_*` factories so the shared ones stay up.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack import servers
from devstack.servers import KafkaBroker, PostgresServer, RedisServer

TEMPLATE_DB = "cc_template"


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def pg_server(stack_dir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(stack_dir / "postgres", servers.free_port(), durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop(mode="immediate")


@pytest.fixture(scope="session")
def pg_template(pg_server: PostgresServer) -> str:
    """A database migrated to head once per session; tests clone it."""
    servers.ensure_database(pg_server.url(), TEMPLATE_DB)
    servers.migrate(servers.database_url(pg_server.url(), TEMPLATE_DB))
    return TEMPLATE_DB


@pytest.fixture
def database_url(pg_server: PostgresServer, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test (cloned from the template), dropped after."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    servers.ensure_database(pg_server.url(), name, template=pg_template)
    try:
        yield servers.database_url(pg_server.url(), name)
    finally:
        servers.drop_database(pg_server.url(), name)


@pytest.fixture
def empty_database_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    servers.ensure_database(pg_server.url(), name)
    try:
        yield servers.database_url(pg_server.url(), name)
    finally:
        servers.drop_database(pg_server.url(), name)


@pytest.fixture(scope="session")
def redis_server(stack_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(stack_dir / "redis", servers.free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url()


@pytest.fixture(scope="session")
def kafka_broker(stack_dir: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(stack_dir / "kafka", servers.free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def kafka_topic(kafka_bootstrap: str) -> str:
    """A unique 6-partition topic for one test (the broker is shared)."""
    name = f"test_actions_{uuid.uuid4().hex[:10]}"
    servers.ensure_topic(kafka_bootstrap, name, partitions=6)
    return name


@pytest.fixture
def stack_env(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    redis_url: str,
    kafka_bootstrap: str,
    kafka_topic: str,
    tmp_path: Path,
) -> dict[str, str]:
    """Environment of a full stack for one test; settings caches are cleared."""
    from pipelines.settings import get_settings

    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "KAFKA_BROKER": kafka_bootstrap,
        "KAFKA_TOPIC": kafka_topic,
        "JWT_SECRET": "test-secret-" + uuid.uuid4().hex,
        "DATA_LAKE_DIR": str(tmp_path / "lake"),
        "RFM_START_DATE": "2026-01-01",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


@pytest.fixture
def private_servers(tmp_path: Path) -> Iterator[Callable[[str], object]]:
    """Factory for servers a test may stop and restart (fault injection)."""
    started: list[PostgresServer | RedisServer | KafkaBroker] = []

    def make(kind: str) -> PostgresServer | RedisServer | KafkaBroker:
        port = servers.free_port()
        server: PostgresServer | RedisServer | KafkaBroker
        if kind == "postgres":
            server = PostgresServer(tmp_path / f"pg-{port}", port, durable=False)
        elif kind == "redis":
            server = RedisServer(tmp_path / f"redis-{port}", port)
        elif kind == "kafka":
            server = KafkaBroker(tmp_path / f"kafka-{port}", port)
        else:
            raise ValueError(kind)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        if isinstance(server, PostgresServer):
            server.stop(mode="immediate")
        else:
            server.stop()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
