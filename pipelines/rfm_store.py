"""Postgres I/O of the RFM chain: Arrow-native bulk reads (ADBC), COPY writes, publishing.

Reads go through ``adbc_driver_postgresql`` straight into Arrow and Polars (no Python
row objects). Writes use ``COPY ... FROM STDIN (FORMAT csv)`` fed by Polars, inside one
transaction per call that first deletes the window it replaces, then records the build
in ``rfm_partition_builds`` (same transaction), so a reader or the late-data sensor sees
either the old partition or the new one.

**Source watermark.** Before a build reads ``user_actions`` it takes a watermark ``W``
(:func:`source_watermark`): every event with ``ingested_at < W`` is committed and
visible to the reads that follow. ``W`` is the database clock, lowered to the start of
any transaction still open in this database (an ingestion transaction stamps
``ingested_at = now()``, its start, but its rows only appear at commit). Transactions
open for longer than :data:`MAX_OPEN_TRANSACTION` are ignored: ingestion never holds
one that long, and a forgotten idle session must not make every build look stale.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import psycopg
import pyarrow as pa
from psycopg.types.json import Jsonb

from pipelines.domain.rfm import DAILY_ACTIVITY_SCHEMA, LAST_EVENT_SCHEMA, SCORES_SCHEMA

logger = logging.getLogger(__name__)

UTC = dt.UTC
MAX_OPEN_TRANSACTION = dt.timedelta(minutes=10)
DAILY_ACTIVITY_ASSET = "user_daily_activity"
RFM_SCORES_ASSET = "rfm_scores"

# ``spent_tokens`` is only extracted where it counts (SPEND events, numeric value); the
# metadata column travels as raw jsonb (Arrow extension of a string), cheaper than ::text.
EVENT_COLUMNS_SQL = """
SELECT id, user_id, action_type, action_timestamp, metadata, ingested_at,
       CASE WHEN action_type = 'SPEND_CYBER_TOKENS'
             AND jsonb_typeof(metadata -> 'spent_tokens') = 'number'
            THEN (metadata ->> 'spent_tokens')::float8 END AS spent_tokens
FROM user_actions
WHERE action_timestamp >= $1 AND action_timestamp < $2
"""
#: Reads of more than this many hours are split in two halves read concurrently (two
#: server backends, Arrow decoding overlaps).
PARALLEL_READ_MIN_HOURS = 12

EVENTS_LAKE_SCHEMA = pl.Schema(
    {
        "id": pl.Int64(),
        "user_id": pl.Int64(),
        "action_type": pl.String(),
        "action_timestamp": pl.Datetime("us", "UTC"),
        "metadata": pl.String(),
        "ingested_at": pl.Datetime("us", "UTC"),
        "spent_tokens": pl.Float64(),
    }
)
SITE_VISITS_SCHEMA = pl.Schema(
    {
        "id": pl.Int64(),
        "user_id": pl.Int64(),
        "source": pl.String(),
        "visit_timestamp": pl.Datetime("us", "UTC"),
    }
)


def day_start(day: dt.date) -> dt.datetime:
    """00:00 UTC of ``day``."""
    return dt.datetime.combine(day, dt.time(), UTC)


def days_between(first: dt.date, last: dt.date) -> list[dt.date]:
    """Every day of ``[first, last]``."""
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


@dataclass(frozen=True)
class PartitionBuild:
    """One row of ``rfm_partition_builds``."""

    asset: str
    partition_date: dt.date
    source_watermark: dt.datetime
    row_count: int
    built_at: dt.datetime
    prior_snapshot: dt.date | None = None


class RfmStore:
    """The application database as the RFM chain uses it (one DSN, short connections)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    # -- connections -------------------------------------------------------------------
    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=autocommit, connect_timeout=10)

    def read_arrow(self, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
        """Run one query through ADBC and return the result as a Polars frame."""
        with adbc.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(sql, parameters=tuple(params) if params else None)
            table = cur.fetch_arrow_table()
        frame = pl.from_arrow(_plain(table))
        assert isinstance(frame, pl.DataFrame)
        return frame

    # -- watermark ---------------------------------------------------------------------
    def source_watermark(self) -> dt.datetime:
        """Every event with ``ingested_at`` before the returned time is visible from now on."""
        with self.connect(autocommit=True) as conn:
            row = conn.execute(
                """
                SELECT LEAST(clock_timestamp(), COALESCE(min(xact_start), clock_timestamp()))
                FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid()
                  AND xact_start IS NOT NULL
                  AND xact_start > clock_timestamp() - %s::interval
                """,
                (MAX_OPEN_TRANSACTION,),
            ).fetchone()
        assert row is not None
        value: dt.datetime = row[0]
        return value.astimezone(UTC)

    # -- events ------------------------------------------------------------------------
    def read_events(self, first: dt.date, last: dt.date) -> pl.DataFrame:
        """Every event with ``first <= action_timestamp < last + 1 day`` (lake columns)."""
        start, end = day_start(first), day_start(last + dt.timedelta(days=1))
        if end - start < dt.timedelta(hours=PARALLEL_READ_MIN_HOURS):
            return _conform(self.read_arrow(EVENT_COLUMNS_SQL, (start, end)), EVENTS_LAKE_SCHEMA)
        middle = start + (end - start) / 2
        with ThreadPoolExecutor(max_workers=2) as pool:
            halves = list(
                pool.map(
                    lambda span: self.read_arrow(EVENT_COLUMNS_SQL, span),
                    [(start, middle), (middle, end)],
                )
            )
        return pl.concat([_conform(half, EVENTS_LAKE_SCHEMA) for half in halves])

    def iter_events_by_day(
        self, days: Sequence[dt.date], *, prefetch: int = 2
    ) -> Iterator[tuple[dt.date, pl.DataFrame]]:
        """Events of each day, in order, read ``prefetch`` days ahead on worker threads.

        Memory stays bounded by a few days of events however long the range, and the
        reads (Postgres) overlap whatever the caller does with each day.
        """
        if len(days) == 1:
            yield days[0], self.read_events(days[0], days[0])
            return
        with ThreadPoolExecutor(max_workers=prefetch) as pool:
            pending: deque[tuple[dt.date, Future[pl.DataFrame]]] = deque()
            queue = iter(days)
            for day in itertools.islice(queue, prefetch):
                pending.append((day, pool.submit(self._read_day, day)))
            while pending:
                day, future = pending.popleft()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(self._read_day, nxt)))
                yield day, future.result()

    def _read_day(self, day: dt.date) -> pl.DataFrame:
        frame = self.read_arrow(
            EVENT_COLUMNS_SQL, (day_start(day), day_start(day + dt.timedelta(days=1)))
        )
        return _conform(frame, EVENTS_LAKE_SCHEMA)

    def read_last_event_before(self, before: dt.date) -> pl.DataFrame:
        """Each user's latest event date among events before ``before`` 00:00 UTC."""
        frame = self.read_arrow(
            """
            SELECT user_id, (max(action_timestamp) AT TIME ZONE 'UTC')::date AS last_event_date
            FROM user_actions WHERE action_timestamp < $1 GROUP BY user_id
            """,
            (day_start(before),),
        )
        return _conform(frame, LAST_EVENT_SCHEMA)

    def read_site_visits(self, first: dt.date, last: dt.date) -> pl.DataFrame:
        frame = self.read_arrow(
            """
            SELECT id, user_id, source, visit_timestamp FROM site_visits
            WHERE visit_timestamp >= $1 AND visit_timestamp < $2
            """,
            (day_start(first), day_start(last + dt.timedelta(days=1))),
        )
        return _conform(frame, SITE_VISITS_SCHEMA)

    # -- daily activity ----------------------------------------------------------------
    def read_daily_activity(
        self, first: dt.date, last: dt.date, *, with_last_event_at: bool = True
    ) -> pl.DataFrame:
        """Stored daily rows of ``[first, last]``; long ranges are read in two concurrent halves."""
        schema = DAILY_ACTIVITY_SCHEMA
        if not with_last_event_at:
            schema = pl.Schema({k: v for k, v in schema.items() if k != "last_event_at"})
        sql = (
            f"SELECT {', '.join(schema)} FROM user_daily_activity "
            "WHERE activity_date BETWEEN $1 AND $2"
        )
        days = (last - first).days + 1
        if days < 8:
            return _conform(self.read_arrow(sql, (first, last)), schema)
        middle = first + dt.timedelta(days=days // 2)
        spans = [(first, middle - dt.timedelta(days=1)), (middle, last)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            halves = list(pool.map(lambda span: self.read_arrow(sql, span), spans))
        return pl.concat([_conform(half, schema) for half in halves])

    def read_snapshot_last_events(self, snapshot_date: dt.date) -> pl.DataFrame:
        """Each user's latest event date as of a stored snapshot (covers events < D+1)."""
        frame = self.read_arrow(
            """
            SELECT user_id, snapshot_date - recency_days AS last_event_date
            FROM rfm_scores WHERE snapshot_date = $1
            """,
            (snapshot_date,),
        )
        return _conform(frame, LAST_EVENT_SCHEMA)

    def replace_daily_activity(
        self,
        first: dt.date,
        last: dt.date,
        activity: pl.DataFrame | Iterable[pl.DataFrame],
        *,
        watermark: dt.datetime,
        run_id: str | None = None,
    ) -> dict[dt.date, int]:
        """Replace days ``[first, last]`` of ``user_daily_activity`` in one transaction.

        ``activity`` is one frame or an iterable of frames (e.g. one per day, produced while
        this transaction is open: each is COPYed as it arrives, the commit comes last).
        """
        frames = [activity] if isinstance(activity, pl.DataFrame) else activity
        counts = {day: 0 for day in days_between(first, last)}
        with self.connect() as conn:
            conn.execute(
                "DELETE FROM user_daily_activity WHERE activity_date BETWEEN %s AND %s",
                (first, last),
            )
            for frame in frames:
                frame = frame.filter(pl.col("activity_date").is_between(first, last))
                for day, count in frame.group_by("activity_date").len().iter_rows():
                    counts[day] += int(count)
                _copy(conn, "user_daily_activity", frame.select(list(DAILY_ACTIVITY_SCHEMA)))
            _record_builds(conn, DAILY_ACTIVITY_ASSET, counts, watermark, run_id)
        return counts

    # -- scores ------------------------------------------------------------------------
    def replace_scores(
        self,
        first: dt.date,
        last: dt.date,
        scores: pl.DataFrame,
        *,
        watermark: dt.datetime,
        run_id: str | None = None,
        prior_snapshot: dt.date | None = None,
    ) -> dict[dt.date, int]:
        """Replace snapshots ``[first, last]`` of ``rfm_scores`` in one transaction."""
        scores = scores.filter(pl.col("snapshot_date").is_between(first, last))
        counts = _counts_by_day(scores, "snapshot_date", first, last)
        groups: dict[dt.date, dict[str, int]] = {day: {} for day in counts}
        for day, group, users in scores.group_by("snapshot_date", "rfm_group").len().iter_rows():
            groups[day][group] = int(users)
        with self.connect() as conn:
            conn.execute(
                "DELETE FROM rfm_scores WHERE snapshot_date BETWEEN %s AND %s", (first, last)
            )
            _copy(conn, "rfm_scores", scores.select(list(SCORES_SCHEMA)))
            _record_builds(
                conn, RFM_SCORES_ASSET, counts, watermark, run_id, prior_snapshot, groups
            )
        return counts

    def read_scores(self, snapshot_date: dt.date) -> pl.DataFrame:
        frame = self.read_arrow(
            """
            SELECT snapshot_date, user_id, recency_days, frequency, monetary, rfm_group
            FROM rfm_scores WHERE snapshot_date = $1
            """,
            (snapshot_date,),
        )
        return _conform(frame, SCORES_SCHEMA)

    def previous_group_counts(self, before: dt.date) -> tuple[dt.date | None, pl.DataFrame]:
        """Users per group of the newest snapshot older than ``before`` (date, frame)."""
        empty = pl.DataFrame(schema={"rfm_group": pl.String, "users": pl.Int64})
        with self.connect(autocommit=True) as conn:
            row = conn.execute(
                "SELECT partition_date, group_counts FROM rfm_partition_builds "
                "WHERE asset = %s AND partition_date < %s "
                "ORDER BY partition_date DESC LIMIT 1",
                (RFM_SCORES_ASSET, before),
            ).fetchone()
            if row is None:
                return None, empty
            previous, group_counts = row
            if group_counts is None:
                rows = conn.execute(
                    "SELECT rfm_group, count(*) FROM rfm_scores WHERE snapshot_date = %s "
                    "GROUP BY rfm_group",
                    (previous,),
                ).fetchall()
                group_counts = dict(rows)
        if not group_counts:
            return previous, empty
        return previous, pl.DataFrame(
            {"rfm_group": list(group_counts), "users": [int(v) for v in group_counts.values()]},
            schema={"rfm_group": pl.String, "users": pl.Int64},
        )

    # -- publishing --------------------------------------------------------------------
    def publish(self, snapshot_date: dt.date) -> dict[str, Any]:
        """Upsert snapshot ``snapshot_date`` into ``user_segments`` if it is the newest.

        One transaction, one upsert: rows of users already present are updated
        (``risk_profile`` untouched), new users inserted. The snapshot's ``rfm_scores``
        rows are the staging data. Skipped (nothing written) when a newer snapshot exists
        in ``rfm_scores`` or is already published. Publishers serialize on a lock.
        """
        with self.connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('cc.rfm.publish'))")
            newest_scores, published = conn.execute(
                "SELECT (SELECT max(snapshot_date) FROM rfm_scores), "
                "(SELECT max(snapshot_date) FROM user_segments)"
            ).fetchone() or (None, None)
            if newest_scores is None or snapshot_date < newest_scores:
                return {
                    "published": False,
                    "reason": f"a newer snapshot exists in rfm_scores ({newest_scores})",
                    "newest_snapshot": str(newest_scores),
                }
            if published is not None and snapshot_date < published:
                return {
                    "published": False,
                    "reason": f"user_segments already holds the newer snapshot {published}",
                    "newest_snapshot": str(published),
                }
            # One statement: no anti-join against the table being written (with stale
            # statistics the planner may pick a nested loop whose inner scan grows with
            # every inserted row). Unchanged rows (a republish) are not rewritten.
            cur = conn.execute(
                """
                INSERT INTO user_segments AS u
                    (user_id, rfm_group, recency_days, frequency, monetary, snapshot_date,
                     last_updated)
                SELECT s.user_id, s.rfm_group, s.recency_days, s.frequency, s.monetary,
                       s.snapshot_date, now()
                FROM rfm_scores AS s
                WHERE s.snapshot_date = %s
                ON CONFLICT (user_id) DO UPDATE SET
                    rfm_group = EXCLUDED.rfm_group, recency_days = EXCLUDED.recency_days,
                    frequency = EXCLUDED.frequency, monetary = EXCLUDED.monetary,
                    snapshot_date = EXCLUDED.snapshot_date, last_updated = EXCLUDED.last_updated
                WHERE (u.rfm_group, u.recency_days, u.frequency, u.monetary, u.snapshot_date)
                    IS DISTINCT FROM (EXCLUDED.rfm_group, EXCLUDED.recency_days,
                        EXCLUDED.frequency, EXCLUDED.monetary, EXCLUDED.snapshot_date)
                """,
                (snapshot_date,),
            )
            upserted = cur.rowcount
            total = conn.execute(
                "SELECT count(*) FROM rfm_scores WHERE snapshot_date = %s", (snapshot_date,)
            ).fetchone()
        return {
            "published": True,
            "rows": int(total[0]) if total else 0,
            "written": upserted,
            "newest_snapshot": str(snapshot_date),
        }

    # -- builds ------------------------------------------------------------------------
    def builds(self, asset: str | None = None) -> list[PartitionBuild]:
        with self.connect(autocommit=True) as conn:
            rows = conn.execute(
                "SELECT asset, partition_date, source_watermark, row_count, built_at, "
                "prior_snapshot FROM rfm_partition_builds WHERE %s::text IS NULL OR asset = %s "
                "ORDER BY asset, partition_date",
                (asset, asset),
            ).fetchall()
        return [PartitionBuild(*row) for row in rows]

    def built_days(self, asset: str, first: dt.date, last: dt.date) -> dict[dt.date, dt.datetime]:
        """Built partitions of ``asset`` in ``[first, last]`` and their source watermarks."""
        with self.connect(autocommit=True) as conn:
            rows = conn.execute(
                "SELECT partition_date, source_watermark FROM rfm_partition_builds "
                "WHERE asset = %s AND partition_date BETWEEN %s AND %s",
                (asset, first, last),
            ).fetchall()
        return {day: mark for day, mark in rows}

    def late_evidence(self, since: dt.datetime) -> dict[dt.date, dt.datetime]:
        """Per event day: latest ``ingested_at`` among events ingested at or after ``since``."""
        with self.connect(autocommit=True) as conn:
            rows = conn.execute(
                """
                SELECT (action_timestamp AT TIME ZONE 'UTC')::date AS day, max(ingested_at)
                FROM user_actions WHERE ingested_at >= %s GROUP BY 1
                """,
                (since,),
            ).fetchall()
        return {day: latest.astimezone(UTC) for day, latest in rows}


def _conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """Cast a query result to the declared schema (also gives empty results their types)."""
    if frame.is_empty() and frame.width == 0:
        return pl.DataFrame(schema=schema)
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())


def _counts_by_day(
    frame: pl.DataFrame, column: str, first: dt.date, last: dt.date
) -> dict[dt.date, int]:
    counts = {day: 0 for day in days_between(first, last)}
    for day, count in frame.group_by(column).len().iter_rows():
        counts[day] = int(count)
    return counts


def _copy(conn: psycopg.Connection[Any], table: str, frame: pl.DataFrame) -> None:
    """COPY a frame into ``table`` (column names = frame columns), CSV in chunks."""
    columns = ", ".join(f'"{name}"' for name in frame.columns)
    statement = f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)"
    with conn.cursor().copy(statement) as copy:  # type: ignore[arg-type]
        for chunk in _chunks(frame, 500_000):
            buffer = io.BytesIO()
            chunk.write_csv(buffer, include_header=False, datetime_format="%Y-%m-%dT%H:%M:%S%.f%z")
            copy.write(buffer.getbuffer())


def _chunks(frame: pl.DataFrame, size: int) -> Iterable[pl.DataFrame]:
    for offset in range(0, frame.height, size):
        yield frame.slice(offset, size)


def _record_builds(
    conn: psycopg.Connection[Any],
    asset: str,
    counts: dict[dt.date, int],
    watermark: dt.datetime,
    run_id: str | None,
    prior_snapshot: dt.date | None = None,
    group_counts: dict[dt.date, dict[str, int]] | None = None,
) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO rfm_partition_builds
                (asset, partition_date, source_watermark, row_count, built_at, run_id,
                 prior_snapshot, group_counts)
            VALUES (%s, %s, %s, %s, now(), %s, %s, %s)
            ON CONFLICT (asset, partition_date) DO UPDATE SET
                source_watermark = EXCLUDED.source_watermark, row_count = EXCLUDED.row_count,
                built_at = EXCLUDED.built_at, run_id = EXCLUDED.run_id,
                prior_snapshot = EXCLUDED.prior_snapshot, group_counts = EXCLUDED.group_counts
            """,
            [
                (
                    asset,
                    day,
                    watermark,
                    count,
                    run_id,
                    prior_snapshot,
                    Jsonb(group_counts[day]) if group_counts is not None else None,
                )
                for day, count in sorted(counts.items())
            ],
        )


def _plain(table: pa.Table) -> pa.Table:
    """Replace Arrow extension columns (e.g. ``arrow.json`` of jsonb) by their storage."""
    columns = []
    changed = False
    for column in table.columns:
        if isinstance(column.type, pa.BaseExtensionType):
            column = pa.chunked_array(
                [chunk.storage for chunk in column.chunks], type=column.type.storage_type
            )
            changed = True
        columns.append(column)
    return pa.table(columns, names=table.column_names) if changed else table
