"""How the rfm chain stores its days and publishes, against a real Postgres: day partitions
swapped in, the table-swap publish, and lake copies read back only when their build id
matches the one Postgres recorded."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import polars as pl
import psycopg
import pytest

from pipelines.db import SEGMENTS_CHANNEL
from pipelines.domain.rfm import SCORES_SCHEMA
from pipelines.lake import BUILD_ID_KEY, DATASETS, partition_path
from pipelines.rfm_store import RfmStore, partition_name
from pipelines.settings import libpq_url
from tests.pipelines.rfm_helpers import insert_events, materialize, query
from tests.pipelines.test_rfm_pipeline import DAY, EXPECTED, D, known_dataset, scores

SCORE_COLUMNS = (
    "SELECT snapshot_date, user_id, recency_days, frequency, monetary, rfm_group "
    "FROM rfm_scores ORDER BY 1, 2"
)


def partitions(url: str, table: str) -> list[str]:
    rows = query(
        url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1",
        (table,),
    )
    return [row[0] for row in rows]


def leftover_tables(url: str) -> list[str]:
    """Staging tables left behind: a table swap's ``*_next_<token>`` or a day load's
    ``<table>_pYYYYMMDD_<token>`` (a swapped-in partition has no token)."""
    rows = query(
        url,
        "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') "
        "AND relnamespace = 'public'::regnamespace "
        "AND (relname ~ '_next_[0-9a-f]{8}$' OR relname ~ '_p[0-9]{8}_[0-9a-f]{8}$') "
        "ORDER BY 1",
    )
    return [name for (name,) in rows]


def test_rebuilding_days_swaps_their_partitions(database_url: str, tmp_path: Path) -> None:
    insert_events(database_url, known_dataset())
    materialize(database_url, tmp_path / "lake", D - DAY, D)
    for table in ("rfm_scores", "user_daily_activity"):
        assert partitions(database_url, table) == [
            f"{table}_default",
            partition_name(table, D - DAY),
            partition_name(table, D),
        ]
    before = query(database_url, SCORE_COLUMNS)
    # a row written outside the pipeline for a day without a partition lands in the default
    # partition; rebuilding that day replaces it (a rebuild replaces all rows of its days)
    query(
        database_url,
        "INSERT INTO rfm_scores (snapshot_date, user_id, recency_days, frequency, monetary, "
        "rfm_group) VALUES (%s, 424242, 0, 1, 1, 'Low')",
        (D - 2 * DAY,),
    )
    assert query(database_url, "SELECT count(*) FROM rfm_scores_default") == [(1,)]
    materialize(database_url, tmp_path / "lake", D - 2 * DAY, D)
    assert query(database_url, "SELECT count(*) FROM rfm_scores_default") == [(0,)]
    assert query(database_url, "SELECT count(*) FROM rfm_scores WHERE user_id = 424242") == [(0,)]
    assert partition_name("rfm_scores", D - 2 * DAY) in partitions(database_url, "rfm_scores")
    after = [row for row in query(database_url, SCORE_COLUMNS) if row[0] != D - 2 * DAY]
    assert after == before
    assert leftover_tables(database_url) == []
    # every build got its own id, recorded with the build
    ids = query(
        database_url,
        "SELECT count(DISTINCT build_id), count(*) FROM rfm_partition_builds "
        "WHERE build_id IS NOT NULL",
    )
    assert ids == [(6, 6)]


def test_publish_swaps_in_a_table_that_keeps_what_it_does_not_own(
    database_url: str, tmp_path: Path
) -> None:
    insert_events(database_url, known_dataset())
    # owned elsewhere: a risk profile of a snapshot user, and a user without any event
    query(
        database_url,
        "INSERT INTO user_segments (user_id, risk_profile, last_updated) VALUES "
        "(4, 'High-Risk', now()), (99, 'Low-Risk', '2026-01-01T00:00:00Z')",
    )
    dsn = libpq_url(database_url)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {SEGMENTS_CHANNEL}")
        assert materialize(database_url, tmp_path / "lake", D).success
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert payloads == ["*"]

    rows = {
        row[0]: row[1:]
        for row in query(
            database_url,
            "SELECT user_id, rfm_group, risk_profile, recency_days, snapshot_date, last_updated "
            "FROM user_segments",
        )
    }
    assert set(rows) == set(EXPECTED) | {99}
    assert rows[4][:4] == ("Low", "High-Risk", 40, D)
    assert rows[99] == (None, "Low-Risk", None, None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert rows[1][:2] == ("Whale", None)
    # the swapped-in table is the same table to everyone else: key, triggers, notifications
    assert query(
        database_url,
        "SELECT conname FROM pg_constraint WHERE conrelid = 'user_segments'::regclass "
        "AND contype = 'p'",
    ) == [("pk_user_segments",)]
    triggers = query(
        database_url,
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'user_segments'::regclass "
        "AND NOT tgisinternal ORDER BY 1",
    )
    assert [t for (t,) in triggers] == [
        "user_segments_notify_delete",
        "user_segments_notify_insert",
        "user_segments_notify_truncate",
        "user_segments_notify_update",
    ]
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {SEGMENTS_CHANNEL}")
        query(database_url, "UPDATE user_segments SET risk_profile = 'High-Risk' WHERE user_id = 1")
        assert [n.payload for n in listener.notifies(timeout=2, stop_after=1)] == ["1"]
    assert leftover_tables(database_url) == []


def test_risk_profile_written_during_a_publish_is_kept(database_url: str, tmp_path: Path) -> None:
    insert_events(database_url, known_dataset())
    materialize(database_url, tmp_path / "lake", D)
    store = RfmStore(libpq_url(database_url))
    dsn = libpq_url(database_url)
    # hold the publish lock so the publish waits, then queue a writer behind it
    blocker = psycopg.connect(dsn)
    blocker.execute("LOCK TABLE user_segments IN SHARE ROW EXCLUSIVE MODE")
    outcome: dict[str, object] = {}
    publisher = threading.Thread(target=lambda: outcome.update(publish=store.publish(D)))
    publisher.start()
    _wait_for_lock_waiters(dsn, 1)
    writer = threading.Thread(
        target=query,
        args=(
            database_url,
            "UPDATE user_segments SET risk_profile = 'High-Risk' WHERE user_id = 2",
        ),
    )
    writer.start()
    _wait_for_lock_waiters(dsn, 2)
    blocker.rollback()
    blocker.close()
    publisher.join(30)
    writer.join(30)
    assert not publisher.is_alive() and not writer.is_alive()
    assert outcome["publish"]["published"] is True  # type: ignore[index]
    assert query(database_url, "SELECT risk_profile FROM user_segments WHERE user_id = 2") == [
        ("High-Risk",)
    ]
    assert scores(database_url, D) == EXPECTED


def _wait_for_lock_waiters(dsn: str, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(200):
            (waiting,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone() or (0,)
            if waiting >= count:
                return
            threading.Event().wait(0.05)
    raise AssertionError(f"expected {count} session(s) waiting for a lock")


def test_lake_copies_are_read_back_only_for_the_recorded_build(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "lake"
    insert_events(database_url, known_dataset())
    materialize(database_url, lake, D - 3 * DAY, D)
    expected = query(database_url, SCORE_COLUMNS)

    # the lake holds every built day with its build id: snapshot D is rebuilt without reading
    # a daily aggregate or the previous snapshot from Postgres
    def no_postgres(*args: object, **kwargs: object) -> None:
        raise AssertionError("read from Postgres although the lake copy matches")

    with monkeypatch.context() as patch:
        patch.setattr(RfmStore, "read_daily_activity", no_postgres)
        patch.setattr(RfmStore, "read_snapshot_last_events", no_postgres)
        assert materialize(database_url, lake, D).success
    assert query(database_url, SCORE_COLUMNS) == expected

    # a lake file that is not the recorded build is ignored: tamper with day D-2 (same
    # schema, inflated counts, another build id) and remove the previous snapshot's file
    path = partition_path(lake, DATASETS["user_daily_activity"], D - 2 * DAY) / "part-0.parquet"
    tampered = pl.read_parquet(path).with_columns(pl.col("event_count") * 100)
    tampered.write_parquet(path, metadata={BUILD_ID_KEY: "not-the-recorded-build"})
    (partition_path(lake, DATASETS["rfm_scores"], D - DAY) / "part-0.parquet").unlink()
    assert materialize(database_url, lake, D, selection=["rfm_scores"]).success
    assert query(database_url, SCORE_COLUMNS) == expected
    with monkeypatch.context() as patch:
        patch.setattr(RfmStore, "read_daily_activity", no_postgres)
        result = materialize(database_url, lake, D, selection=["rfm_scores"], raise_on_error=False)
        assert not result.success  # the tampered day really had to come from Postgres


def test_concurrent_replacements_of_a_day_both_finish(database_url: str) -> None:
    store = RfmStore(libpq_url(database_url))
    watermark = dt.datetime(2026, 3, 11, tzinfo=dt.UTC)

    def snapshot(group: str) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "snapshot_date": [D] * 3,
                "user_id": [1, 2, 3],
                "recency_days": [0, 1, 2],
                "frequency": [5, 6, 7],
                "monetary": [1.0, 2.0, 3.0],
                "rfm_group": [group] * 3,
            },
            schema=SCORES_SCHEMA,
        )

    errors: list[BaseException] = []

    def replace(group: str) -> None:
        try:
            for _ in range(5):
                store.replace_scores(D - DAY, D, snapshot(group), watermark=watermark)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replace, args=(g,)) for g in ("Low", "Medium")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    rows = query(database_url, "SELECT DISTINCT rfm_group, count(*) OVER () FROM rfm_scores")
    assert len(rows) == 1 and rows[0][0] in {"Low", "Medium"} and rows[0][1] == 3
    assert partitions(database_url, "rfm_scores") == [
        "rfm_scores_default",
        partition_name("rfm_scores", D - DAY),
        partition_name("rfm_scores", D),
    ]
    assert leftover_tables(database_url) == []


def test_long_ranges_swap_in_steps(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a multi-year backfill would hold too many locks in one transaction: it commits every
    # MAX_DAYS_PER_TRANSACTION days (2 here), with the same rows as one transaction
    insert_events(database_url, known_dataset())
    materialize(database_url, tmp_path / "one", D - 4 * DAY, D)
    expected = query(database_url, SCORE_COLUMNS)
    activity = query(database_url, "SELECT * FROM user_daily_activity ORDER BY 1, 2")
    monkeypatch.setattr("pipelines.rfm_store.MAX_DAYS_PER_TRANSACTION", 2)
    materialize(database_url, tmp_path / "steps", D - 4 * DAY, D)
    assert query(database_url, SCORE_COLUMNS) == expected
    assert query(database_url, "SELECT * FROM user_daily_activity ORDER BY 1, 2") == activity
    builds = query(
        database_url,
        "SELECT asset, count(*), count(DISTINCT run_id) FROM rfm_partition_builds "
        "GROUP BY 1 ORDER BY 1",
    )
    assert builds == [("rfm_scores", 5, 1), ("user_daily_activity", 5, 1)]
    for table in ("rfm_scores", "user_daily_activity"):
        assert len(partitions(database_url, table)) == 6  # 5 days + default
    assert leftover_tables(database_url) == []
