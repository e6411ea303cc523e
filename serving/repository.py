"""SQL of the API (psycopg 3). Postgres is the system of record for segments and visits."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import tuple_row

from pipelines.db import SEGMENTS_CHANNEL as SEGMENTS_CHANNEL  # re-exported

SegmentRow = tuple[int, str | None, str | None]


@dataclass(frozen=True, slots=True)
class SiteVisit:
    id: int
    user_id: int
    source: str
    visit_timestamp: datetime


async def insert_site_visit(
    conn: psycopg.AsyncConnection[tuple[object, ...]], *, user_id: int, source: str
) -> SiteVisit:
    """Store a visit stamped with the server's time (``now()`` of the transaction)."""
    cur = await conn.execute(
        "INSERT INTO site_visits (user_id, source, visit_timestamp) VALUES (%s, %s, now()) "
        "RETURNING id, user_id, source, visit_timestamp",
        (user_id, source),
    )
    row = await cur.fetchone()
    assert row is not None
    return SiteVisit(*row)  # type: ignore[arg-type]


async def fetch_segments(
    conn: psycopg.AsyncConnection[tuple[object, ...]], user_ids: list[int]
) -> list[SegmentRow]:
    """Current (rfm_group, risk_profile) of the given users (absent users are not returned)."""
    cur = await conn.execute(
        "SELECT user_id, rfm_group, risk_profile FROM user_segments WHERE user_id = ANY(%s)",
        (user_ids,),
    )
    return await cur.fetchall()  # type: ignore[return-value]


async def segments_notify(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> bool:
    """Whether the change-notification triggers of migration 0002 are installed."""
    cur = await conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'user_segments'::regclass "
        "AND tgname LIKE 'user_segments_notify_%' AND NOT tgisinternal"
    )
    row = await cur.fetchone()
    return bool(row and row[0] == 4)


def iter_all_segments(
    conn: psycopg.Connection[tuple[object, ...]], *, chunk: int = 50_000
) -> Iterator[list[SegmentRow]]:
    """Every segment row, in chunks (binary protocol; one snapshot)."""
    with conn.cursor(binary=True, row_factory=tuple_row) as cur:
        cur.execute("SELECT user_id, rfm_group, risk_profile FROM user_segments")
        while rows := cur.fetchmany(chunk):
            yield rows
