"""Typed Dagster resources: the I/O edges of the code location.

Secrets and addresses come from the environment through `dg.EnvVar` (resolved when a
run starts, not at import). Tests construct these classes directly against the test
servers.
"""

from __future__ import annotations

import os

import dagster as dg
import psycopg

from pipelines.settings import libpq_url


class PostgresResource(dg.ConfigurableResource):
    """The application database (system of record)."""

    database_url: str

    @property
    def dsn(self) -> str:
        return libpq_url(self.database_url)

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=autocommit, connect_timeout=10)


class KafkaResource(dg.ConfigurableResource):
    """The Kafka cluster and the user-actions topic."""

    bootstrap_servers: str
    topic: str = "topic_user_actions"

    @property
    def brokers(self) -> list[str]:
        return [part.strip() for part in self.bootstrap_servers.split(",") if part.strip()]


class RedisResource(dg.ConfigurableResource):
    """Redis: streak counters and the online copy of published segments."""

    url: str


class LakeResource(dg.ConfigurableResource):
    """Root folder of the Parquet lake (hive-style partitions per day)."""

    root: str = ".local/lake"


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources of the code location; addresses and secrets resolve when a run starts."""
    return {
        "postgres": PostgresResource(database_url=dg.EnvVar("DATABASE_URL")),
        "kafka": KafkaResource(
            bootstrap_servers=dg.EnvVar("KAFKA_BROKER"),
            topic=os.environ.get("KAFKA_TOPIC", "topic_user_actions"),
        ),
        "redis": RedisResource(url=dg.EnvVar("REDIS_URL")),
        "lake": LakeResource(root=os.environ.get("DATA_LAKE_DIR", ".local/lake")),
    }
