"""Postgres I/O of the RFM chain: Arrow-native bulk reads and writes (ADBC), publishing.

Reads go through ``adbc_driver_postgresql`` straight into Arrow and Polars (no Python
row objects). ``user_daily_activity`` and ``rfm_scores`` are partitioned by day (migration
0004): a build loads each day into a fresh table with ADBC's bulk ingest (binary COPY, no
index to maintain), indexes it once, and swaps it in for the day's partition; the days of
a call (up to :data:`MAX_DAYS_PER_TRANSACTION`) and their build records in
``rfm_partition_builds`` commit in one transaction, so a reader or the late-data sensor
sees either the old partitions or the new ones.
Publishing swaps in a freshly built ``user_segments`` (:mod:`pipelines.db.swap`).

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
import itertools
import json
import logging
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import psycopg
import pyarrow as pa
from psycopg import sql

from pipelines.db import SEGMENTS_CHANNEL
from pipelines.db.swap import TableSwap
from pipelines.domain.rfm import DAILY_ACTIVITY_SCHEMA, LAST_EVENT_SCHEMA, SCORES_SCHEMA

logger = logging.getLogger(__name__)

UTC = dt.UTC
MAX_OPEN_TRANSACTION = dt.timedelta(minutes=10)
DAILY_ACTIVITY_ASSET = "user_daily_activity"
RFM_SCORES_ASSET = "rfm_scores"
#: Day-partitioned tables (migration 0004) and their partition column.
DAY_PARTITIONED = {"user_daily_activity": "activity_date", "rfm_scores": "snapshot_date"}
#: Days swapped in per transaction: each day holds about 8 locks until the commit, and
#: Postgres' lock table has room for max_locks_per_transaction (64) x max_connections.
MAX_DAYS_PER_TRANSACTION = 100
#: Columns of ``user_segments`` a publish writes from the snapshot; the others are kept.
SNAPSHOT_COLUMNS = ("rfm_group", "recency_days", "frequency", "monetary", "snapshot_date")

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


def partition_name(table: str, day: dt.date) -> str:
    """The partition of ``day`` in a day-partitioned table (as migration 0004 names them)."""
    return f"{table}_p{day:%Y%m%d}"


def new_build_ids(first: dt.date, last: dt.date) -> dict[dt.date, str]:
    """A fresh build id per day: recorded with the build and written into its lake file."""
    return {day: str(uuid.uuid4()) for day in days_between(first, last)}


@dataclass(frozen=True)
class PartitionBuild:
    """One row of ``rfm_partition_builds``."""

    asset: str
    partition_date: dt.date
    source_watermark: dt.datetime
    row_count: int
    built_at: dt.datetime
    prior_snapshot: dt.date | None = None
    build_id: str | None = None


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
        build_ids: dict[dt.date, str] | None = None,
    ) -> dict[dt.date, int]:
        """Replace days ``[first, last]`` of ``user_daily_activity`` in one transaction.

        ``activity`` is one frame or an iterable of frames (e.g. one per day, produced while
        this transaction is open: each is loaded as it arrives, the commit comes last).
        """
        frames = [activity] if isinstance(activity, pl.DataFrame) else activity
        return self._replace_days(
            "user_daily_activity",
            DAILY_ACTIVITY_SCHEMA,
            first,
            last,
            frames,
            build=_BuildRecord(DAILY_ACTIVITY_ASSET, watermark, run_id, build_ids),
        )

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
        build_ids: dict[dt.date, str] | None = None,
    ) -> dict[dt.date, int]:
        """Replace snapshots ``[first, last]`` of ``rfm_scores`` in one transaction."""
        scores = scores.filter(pl.col("snapshot_date").is_between(first, last))
        groups: dict[dt.date, dict[str, int]] = {day: {} for day in days_between(first, last)}
        for day, group, users in scores.group_by("snapshot_date", "rfm_group").len().iter_rows():
            groups[day][group] = int(users)
        return self._replace_days(
            "rfm_scores",
            SCORES_SCHEMA,
            first,
            last,
            [scores],
            build=_BuildRecord(
                RFM_SCORES_ASSET, watermark, run_id, build_ids, prior_snapshot, groups
            ),
        )

    def _replace_days(
        self,
        table: str,
        schema: pl.Schema,
        first: dt.date,
        last: dt.date,
        frames: Iterable[pl.DataFrame],
        *,
        build: _BuildRecord,
    ) -> dict[dt.date, int]:
        """Swap in new partitions for days ``[first, last]`` of ``table``, in one transaction
        (per :data:`MAX_DAYS_PER_TRANSACTION` days: a multi-year backfill commits in steps).

        Each day is loaded into a fresh table (ADBC bulk ingest = binary COPY; a CHECK on
        the day makes the attach skip its validation scan), indexed once, then - briefly,
        at the end - the old partition is dropped, the new one attached, and the builds
        recorded. Rows of those days in the default partition (written outside the
        pipeline) are deleted: rebuilding a day replaces all of its rows.
        """
        column = DAY_PARTITIONED[table]
        counts = {day: 0 for day in days_between(first, last)}
        token = uuid.uuid4().hex[:8]
        staged: dict[dt.date, str] = {}
        with adbc.connect(self.dsn) as conn, conn.cursor() as cur:

            def stage(day: dt.date) -> str:
                if day not in staged:
                    if len(staged) >= MAX_DAYS_PER_TRANSACTION:
                        swap_in()
                    if not staged:
                        # replacements of the same table run one at a time (taken first:
                        # two of them holding the parent's share lock from LIKE and both
                        # waiting to drop it would deadlock)
                        cur.execute(
                            "SELECT pg_advisory_xact_lock(hashtext($1))",
                            parameters=(f"cc.rfm.replace.{table}",),
                        )
                    staged[day] = name = f"{partition_name(table, day)}_{token}"
                    cur.execute(
                        f'CREATE TABLE "{name}" (LIKE {table} INCLUDING DEFAULTS, '
                        f"CHECK ({column} = DATE '{day.isoformat()}'))"
                    )
                return staged[day]

            def swap_in() -> None:
                for name in staged.values():
                    cur.execute(f'ALTER TABLE "{name}" ADD PRIMARY KEY ({column}, user_id)')
                # the swap: short (ACCESS EXCLUSIVE on the parent for the drop + attach)
                for day, name in sorted(staged.items()):
                    final, literal = partition_name(table, day), f"DATE '{day.isoformat()}'"
                    cur.execute(f'DROP TABLE IF EXISTS "{final}"')
                    cur.execute(f"DELETE FROM {table}_default WHERE {column} = {literal}")
                    cur.execute(f'ALTER TABLE "{name}" RENAME TO "{final}"')
                    cur.execute(
                        f'ALTER TABLE {table} ATTACH PARTITION "{final}" FOR VALUES IN ({literal})'
                    )
                done = {day: counts[day] for day in staged}
                cur.execute(_RECORD_BUILDS_SQL, parameters=(build.rows_json(done),))
                conn.commit()
                staged.clear()

            loaded: set[dt.date] = set()
            for frame in frames:
                frame = frame.filter(pl.col(column).is_between(first, last)).select(list(schema))
                for (day,), part in frame.partition_by(column, as_dict=True).items():
                    assert isinstance(day, dt.date)
                    if day in loaded and day not in staged:
                        raise ValueError(f"rows of {day} came after its partition was swapped in")
                    arrow = part.to_arrow(compat_level=pl.CompatLevel.oldest())
                    cur.adbc_ingest(stage(day), arrow, mode="append")
                    counts[day] += part.height
                    loaded.add(day)
            for day in counts:
                if day not in loaded:
                    stage(day)  # a day without rows: an empty partition
            if staged:
                swap_in()
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
        """Publish snapshot ``snapshot_date`` to ``user_segments`` if it is the newest.

        One transaction: the next ``user_segments`` is built from the snapshot's
        ``rfm_scores`` rows joined with the current table (``risk_profile`` and any other
        column the pipeline does not own are carried over; users absent from the snapshot
        keep their rows as they are), indexed, and swapped in for the old table
        (:class:`~pipelines.db.swap.TableSwap`). Writers of ``user_segments`` wait for the
        publish; readers see the old table or the new one. The API hears one NOTIFY.
        Skipped (nothing written) when a newer snapshot is built or already published.
        Publishers serialize on a lock.
        """
        with self.connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('cc.rfm.publish'))")
            newest_built, published = conn.execute(
                "SELECT (SELECT max(partition_date) FROM rfm_partition_builds WHERE asset = %s), "
                "(SELECT max(snapshot_date) FROM user_segments)",
                (RFM_SCORES_ASSET,),
            ).fetchone() or (None, None)
            if newest_built is None or snapshot_date < newest_built:
                return {
                    "published": False,
                    "reason": f"a newer snapshot is built in rfm_scores ({newest_built})",
                    "newest_snapshot": str(newest_built),
                }
            if published is not None and snapshot_date < published:
                return {
                    "published": False,
                    "reason": f"user_segments already holds the newer snapshot {published}",
                    "newest_snapshot": str(published),
                }
            rows = conn.execute(
                "SELECT row_count FROM rfm_partition_builds "
                "WHERE asset = %s AND partition_date = %s",
                (RFM_SCORES_ASSET, snapshot_date),
            ).fetchone()
            # Both sides are read in user_id order through their primary keys: a merge join
            # streams them, where a hash join would first hash a million rows.
            conn.execute("SELECT set_config('enable_hashjoin', 'off', true)")
            conn.execute("SELECT set_config('work_mem', '64MB', true)")
            swap = TableSwap(conn, "user_segments")
            total = conn.execute(
                _publish_fill_sql(swap.next_table, swap.columns), (snapshot_date,)
            ).rowcount
            swap.commit_swap(notify=(SEGMENTS_CHANNEL, "*"))
        snapshot_rows = int(rows[0]) if rows else 0
        return {
            "published": True,
            "rows": snapshot_rows,
            "written": total,
            "kept": total - snapshot_rows,
            "newest_snapshot": str(snapshot_date),
        }

    # -- builds ------------------------------------------------------------------------
    def builds(self, asset: str | None = None) -> list[PartitionBuild]:
        with self.connect(autocommit=True) as conn:
            rows = conn.execute(
                "SELECT asset, partition_date, source_watermark, row_count, built_at, "
                "prior_snapshot, build_id::text FROM rfm_partition_builds "
                "WHERE %s::text IS NULL OR asset = %s "
                "ORDER BY asset, partition_date",
                (asset, asset),
            ).fetchall()
        return [PartitionBuild(*row) for row in rows]

    def built_days(self, asset: str, first: dt.date, last: dt.date) -> dict[dt.date, str | None]:
        """Built partitions of ``asset`` in ``[first, last]`` and their build ids.

        The id is None for builds recorded before migration 0004.
        """
        with self.connect(autocommit=True) as conn:
            rows = conn.execute(
                "SELECT partition_date, build_id::text FROM rfm_partition_builds "
                "WHERE asset = %s AND partition_date BETWEEN %s AND %s",
                (asset, first, last),
            ).fetchall()
        return {day: build_id for day, build_id in rows}

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


def _publish_fill_sql(next_table: str, columns: Sequence[str]) -> sql.Composed:
    """Fill the next ``user_segments``: snapshot rows FULL JOIN the current table.

    Snapshot users get the snapshot's measures and group (and ``last_updated = now()``);
    every other column (``risk_profile``, ...) comes from their current row. Users absent
    from the snapshot keep their current row unchanged.
    """
    values: list[sql.Composable] = []
    for name in columns:
        s_col, o_col = sql.Identifier("s", name), sql.Identifier("o", name)
        if name == "user_id":
            values.append(sql.SQL("coalesce({}, {})").format(s_col, o_col))
        elif name in SNAPSHOT_COLUMNS:
            values.append(
                sql.SQL("CASE WHEN s.user_id IS NULL THEN {} ELSE {} END").format(o_col, s_col)
            )
        elif name == "last_updated":
            values.append(
                sql.SQL("CASE WHEN s.user_id IS NULL THEN {} ELSE now() END").format(o_col)
            )
        else:
            values.append(o_col)
    return sql.SQL(
        "INSERT INTO {} ({}) SELECT {} "
        "FROM (SELECT * FROM rfm_scores WHERE snapshot_date = %s) AS s "
        "FULL JOIN user_segments AS o ON o.user_id = s.user_id"
    ).format(
        sql.Identifier(next_table),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(values),
    )


@dataclass(frozen=True)
class _BuildRecord:
    """What a build writes into ``rfm_partition_builds`` besides the row counts."""

    asset: str
    watermark: dt.datetime
    run_id: str | None
    build_ids: dict[dt.date, str] | None = None
    prior_snapshot: dt.date | None = None
    group_counts: dict[dt.date, dict[str, int]] | None = None

    def rows_json(self, counts: dict[dt.date, int]) -> str:
        return json.dumps(
            [
                {
                    "asset": self.asset,
                    "partition_date": day.isoformat(),
                    "source_watermark": self.watermark.isoformat(),
                    "row_count": count,
                    "run_id": self.run_id,
                    "prior_snapshot": self.prior_snapshot.isoformat()
                    if self.prior_snapshot
                    else None,
                    "group_counts": self.group_counts.get(day, {})
                    if self.group_counts is not None
                    else None,
                    "build_id": (self.build_ids or {}).get(day) or str(uuid.uuid4()),
                }
                for day, count in sorted(counts.items())
            ]
        )


_RECORD_BUILDS_SQL = """
INSERT INTO rfm_partition_builds
    (asset, partition_date, source_watermark, row_count, built_at, run_id, prior_snapshot,
     group_counts, build_id)
SELECT r.asset, r.partition_date, r.source_watermark, r.row_count, now(), r.run_id,
       r.prior_snapshot, r.group_counts, r.build_id
FROM jsonb_to_recordset($1::text::jsonb) AS r(
    asset text, partition_date date, source_watermark timestamptz, row_count bigint,
    run_id text, prior_snapshot date, group_counts jsonb, build_id uuid)
ON CONFLICT (asset, partition_date) DO UPDATE SET
    source_watermark = EXCLUDED.source_watermark, row_count = EXCLUDED.row_count,
    built_at = EXCLUDED.built_at, run_id = EXCLUDED.run_id,
    prior_snapshot = EXCLUDED.prior_snapshot, group_counts = EXCLUDED.group_counts,
    build_id = EXCLUDED.build_id
"""


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
