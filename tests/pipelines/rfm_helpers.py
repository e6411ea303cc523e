"""Helpers of the RFM pipeline tests: load events with COPY, run the chain in process."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import psycopg

from pipelines.defs import rfm
from pipelines.defs.resources import LakeResource, PostgresResource
from pipelines.settings import libpq_url

UTC = dt.UTC
_offsets = itertools.count(1)


def at(day: dt.date, hour: int = 12, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), UTC)


def event(
    user_id: int,
    when: dt.datetime,
    action_type: str = "PLAY_GAME",
    spent: float | None = None,
    ingested_at: dt.datetime | None = None,
) -> tuple[Any, ...]:
    metadata: dict[str, Any] = {}
    if spent is not None:
        action_type = "SPEND_CYBER_TOKENS"
        metadata["spent_tokens"] = spent
    return (user_id, action_type, when, metadata, ingested_at)


def insert_events(database_url: str, events: Iterable[Sequence[Any]]) -> int:
    """COPY events into user_actions; ingested_at defaults to the action time + 1 minute."""
    n = 0
    with (
        psycopg.connect(libpq_url(database_url)) as conn,
        conn.cursor().copy(
            "COPY user_actions (user_id, action_type, action_timestamp, metadata, kafka_topic, "
            "kafka_partition, kafka_offset, ingested_at) FROM STDIN"
        ) as copy,
    ):
        for user_id, action_type, when, metadata, ingested_at in events:
            copy.write_row(
                (
                    user_id,
                    action_type,
                    when,
                    orjson.dumps(metadata).decode(),
                    "test_rfm",
                    0,
                    next(_offsets),
                    ingested_at or when + dt.timedelta(minutes=1),
                )
            )
            n += 1
    return n


def resources(database_url: str, lake_dir: Path) -> dict[str, Any]:
    return {
        "postgres": PostgresResource(database_url=database_url),
        "lake": LakeResource(root=str(lake_dir)),
    }


ALL_ASSETS = [
    dg.AssetSpec("user_actions"),
    rfm.user_daily_activity,
    rfm.rfm_scores,
    rfm.user_segments,
    rfm.site_visits_lake,
]


def materialize(
    database_url: str,
    lake_dir: Path,
    first: dt.date,
    last: dt.date | None = None,
    *,
    instance: dg.DagsterInstance | None = None,
    selection: str | Sequence[str] | None = None,
    raise_on_error: bool = True,
    run_config: dict[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    """Run the rfm chain for ``first`` (one partition) or ``first..last`` (one run)."""
    kwargs: dict[str, Any] = {}
    if last is None or last == first:
        kwargs["partition_key"] = first.isoformat()
    else:
        kwargs["tags"] = {
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        }
    # the result reads its events through a weak reference to the instance: keep it alive
    instance = instance or dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        ALL_ASSETS,
        resources=resources(database_url, lake_dir),
        instance=instance,
        selection=selection
        or ["user_daily_activity", "rfm_scores", "user_segments", "site_visits_lake"],
        raise_on_error=raise_on_error,
        run_config=run_config,
        **kwargs,
    )
    result._rfm_test_instance = instance  # type: ignore[attr-defined]
    return result


def query(database_url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []
