"""Migration 0004: the daily RFM tables become partitioned by day, rows and names kept.

Upgrade from 0003 with data in place, check the partitioned layout, downgrade back to
plain tables with the same rows, and upgrade again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from devstack import servers

UTC = dt.UTC
DAY_1 = dt.date(2026, 3, 1)
DAY_2 = dt.date(2026, 3, 2)
NEW_DAY = dt.date(2026, 3, 5)

# (table, partition column, primary key name, primary key definition)
DAILY_TABLES = {
    "user_daily_activity": (
        "activity_date",
        "pk_user_daily_activity",
        "PRIMARY KEY (activity_date, user_id)",
    ),
    "rfm_scores": ("snapshot_date", "pk_rfm_scores", "PRIMARY KEY (snapshot_date, user_id)"),
}


def _at(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), UTC)


ACTIVITY = [
    (DAY_1, 1, 3, 0.0, _at(DAY_1, 10)),
    (DAY_1, 2, 1, 12.5, _at(DAY_1, 11)),
    (DAY_2, 1, 2, 4.25, _at(DAY_2, 9)),
]
SCORES = [
    (DAY_1, 1, 0, 3, 0.0, "ACTIVE", _at(DAY_1, 23)),
    (DAY_1, 2, 0, 1, 12.5, "NEW", _at(DAY_1, 23)),
    (DAY_2, 1, 0, 5, 4.25, "ACTIVE", _at(DAY_2, 23)),
    (DAY_2, 2, 1, 1, 12.5, "NEW", _at(DAY_2, 23)),
]
SEGMENTS = [
    (1, "ACTIVE", "LOW", 0, 5, 4.25, DAY_2, _at(DAY_2, 23)),
    (2, "NEW", None, 1, 1, 12.5, DAY_2, _at(DAY_2, 23)),
]
BUILDS = [
    ("rfm_scores", DAY_1, _at(DAY_1, 23), 2),
    ("rfm_scores", DAY_2, _at(DAY_2, 23), 2),
]


def _query(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(query.encode(), params)
        return cur.fetchall() if cur.description else []


def _rows(url: str, table: str) -> list[tuple[Any, ...]]:
    return _query(url, f"SELECT * FROM {table} ORDER BY 1, 2")


def _segments(url: str) -> list[tuple[Any, ...]]:
    return _query(
        url,
        "SELECT user_id, rfm_group, risk_profile, recency_days, frequency, monetary, "
        "snapshot_date, last_updated FROM user_segments ORDER BY user_id",
    )


def _builds(url: str) -> list[tuple[Any, ...]]:
    return _query(
        url,
        "SELECT asset, partition_date, source_watermark, row_count FROM rfm_partition_builds "
        "ORDER BY 1, 2",
    )


def _relkind(url: str, table: str) -> str:
    return str(
        _query(url, "SELECT relkind::text FROM pg_class WHERE oid = %s::regclass", (table,))[0][0]
    )


def _primary_key(url: str, table: str) -> list[tuple[Any, ...]]:
    return _query(
        url,
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype = 'p'",
        (table,),
    )


def _partitions(url: str, table: str) -> dict[str, str]:
    return dict(
        _query(
            url,
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            (table,),
        )
    )


def _row_partitions(url: str, table: str, column: str) -> set[tuple[str, dt.date]]:
    return {
        (str(part), day)
        for part, day in _query(url, f"SELECT tableoid::regclass::text, {column} FROM {table}")
    }


def _user_segments_options(url: str) -> Any:
    return _query(url, "SELECT reloptions FROM pg_class WHERE oid = 'user_segments'::regclass")[0][
        0
    ]


def _build_id_type(url: str) -> list[tuple[Any, ...]]:
    return _query(
        url,
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'rfm_partition_builds' "
        "AND column_name = 'build_id'",
    )


def _stray_tables(url: str) -> list[tuple[Any, ...]]:
    """Tables a half-done 0004 (up or down) would leave behind."""
    return _query(
        url,
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND (relname LIKE '%%\\_unpartitioned' OR relname LIKE '%%\\_partitioned' "
        "OR relname LIKE '%%\\_old') ORDER BY 1",
    )


def _partition_name(table: str, day: dt.date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _seed(url: str) -> None:
    with psycopg.connect(url) as conn:
        cur = conn.cursor()
        cur.executemany("INSERT INTO user_daily_activity VALUES (%s, %s, %s, %s, %s)", ACTIVITY)
        cur.executemany("INSERT INTO rfm_scores VALUES (%s, %s, %s, %s, %s, %s, %s)", SCORES)
        cur.executemany(
            "INSERT INTO user_segments (user_id, rfm_group, risk_profile, recency_days, "
            "frequency, monetary, snapshot_date, last_updated) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            SEGMENTS,
        )
        cur.executemany(
            "INSERT INTO rfm_partition_builds (asset, partition_date, source_watermark, "
            "row_count) VALUES (%s, %s, %s, %s)",
            BUILDS,
        )


def _insert_new_day(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO user_daily_activity VALUES (%s, 3, 1, 0.0, %s)",
            (NEW_DAY, _at(NEW_DAY, 8)),
        )
        # computed_at left to its default
        conn.execute(
            "INSERT INTO rfm_scores (snapshot_date, user_id, recency_days, frequency, "
            "monetary, rfm_group) VALUES (%s, 3, 0, 1, 0.0, 'NEW')",
            (NEW_DAY,),
        )


def _assert_partitioned(url: str, days: list[dt.date]) -> None:
    for table, (column, pk, pk_definition) in DAILY_TABLES.items():
        assert _relkind(url, table) == "p", table
        assert _query(
            url,
            "SELECT partstrat::text, pg_get_partkeydef(partrelid) FROM pg_partitioned_table "
            "WHERE partrelid = %s::regclass",
            (table,),
        ) == [("l", f"LIST ({column})")]
        expected = {
            _partition_name(table, day): f"FOR VALUES IN ('{day.isoformat()}')" for day in days
        }
        expected[f"{table}_default"] = "DEFAULT"
        assert _partitions(url, table) == expected
        # every row sits in its day's partition
        rows = _row_partitions(url, table, column)
        assert rows
        assert rows == {(_partition_name(table, day), day) for _, day in rows}
        assert _primary_key(url, table) == [(pk, pk_definition)]
    assert _stray_tables(url) == []


def test_0004_partitions_daily_tables_keeps_rows_and_downgrades(empty_database_url: str) -> None:
    url = empty_database_url
    servers.migrate(url, "0003")
    assert _user_segments_options(url) == ["fillfactor=50"]
    assert _build_id_type(url) == []
    _seed(url)
    activity, scores = _rows(url, "user_daily_activity"), _rows(url, "rfm_scores")
    assert activity == ACTIVITY
    assert scores == SCORES
    segments, builds = _segments(url), _builds(url)
    assert segments == SEGMENTS
    for table, (_, pk, pk_definition) in DAILY_TABLES.items():
        assert _relkind(url, table) == "r"
        assert _primary_key(url, table) == [(pk, pk_definition)]

    servers.migrate(url, "0004")

    assert _rows(url, "user_daily_activity") == activity
    assert _rows(url, "rfm_scores") == scores
    assert _segments(url) == segments
    assert _builds(url) == builds
    _assert_partitioned(url, [DAY_1, DAY_2])
    assert _build_id_type(url) == [("uuid",)]
    assert _query(url, "SELECT count(*) FROM rfm_partition_builds WHERE build_id IS NULL") == [
        (len(BUILDS),)
    ]
    assert _user_segments_options(url) is None

    # a day without a partition of its own lands in the default partition
    _insert_new_day(url)
    for table, (column, _, _) in DAILY_TABLES.items():
        assert (f"{table}_default", NEW_DAY) in _row_partitions(url, table, column)
        assert _query(url, f"SELECT count(*) FROM {table}_default") == [(1,)]
    [(computed_at,)] = _query(
        url, "SELECT computed_at FROM rfm_scores WHERE snapshot_date = %s", (NEW_DAY,)
    )
    assert computed_at is not None
    activity, scores = _rows(url, "user_daily_activity"), _rows(url, "rfm_scores")
    assert len(activity) == len(ACTIVITY) + 1
    assert len(scores) == len(SCORES) + 1

    servers.downgrade(url, "0003")

    for table, (_, pk, pk_definition) in DAILY_TABLES.items():
        assert _relkind(url, table) == "r", table
        assert _query(
            url, "SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass", (table,)
        ) == [(0,)]
        assert _primary_key(url, table) == [(pk, pk_definition)]
        assert (
            _query(url, "SELECT relname FROM pg_class WHERE relname LIKE %s", (f"{table}\\_%",))
            == []
        )
    assert _rows(url, "user_daily_activity") == activity
    assert _rows(url, "rfm_scores") == scores
    assert _segments(url) == segments
    assert _builds(url) == builds
    assert _user_segments_options(url) == ["fillfactor=50"]
    assert _build_id_type(url) == []
    assert _stray_tables(url) == []
    assert _query(url, "SELECT version_num FROM alembic_version") == [("0003",)]

    servers.migrate(url, "head")

    # the new day now gets a partition of its own
    _assert_partitioned(url, [DAY_1, DAY_2, NEW_DAY])
    assert _rows(url, "user_daily_activity") == activity
    assert _rows(url, "rfm_scores") == scores
    assert _segments(url) == segments
    assert _builds(url) == builds
    assert _build_id_type(url) == [("uuid",)]
    assert _user_segments_options(url) is None
