"""The one place the Dagster `Definitions` of the code location are built."""

from __future__ import annotations

import os

import dagster as dg

from pipelines.defs.resources import KafkaResource, LakeResource, PostgresResource, RedisResource


def build_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "postgres": PostgresResource(database_url=dg.EnvVar("DATABASE_URL")),
        "kafka": KafkaResource(
            bootstrap_servers=dg.EnvVar("KAFKA_BROKER"),
            topic=os.environ.get("KAFKA_TOPIC", "topic_user_actions"),
        ),
        "redis": RedisResource(url=dg.EnvVar("REDIS_URL")),
        "lake": LakeResource(root=os.environ.get("DATA_LAKE_DIR", ".local/lake")),
    }


defs = dg.Definitions(
    assets=[],
    asset_checks=[],
    jobs=[],
    schedules=[],
    sensors=[],
    resources=build_resources(),
)
