"""The rfm asset group against a real Postgres: known groups, idempotence, publishing rules,
blocking checks, backfills in one run, the lake."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from pipelines.defs import rfm
from tests.pipelines.rfm_helpers import at, event, insert_events, materialize, query

D = dt.date(2026, 3, 10)
DAY = dt.timedelta(days=1)


def known_dataset() -> list[tuple]:
    evts = []
    # 1: Whale - 35 events over the last 20 days, 400 tokens each (14000), last event on D
    evts += [event(1, at(D - (i % 20) * DAY, 8 + i % 10), spent=400) for i in range(35)]
    # 2: High Engaged - 16 events on D-3..D-18, 150 tokens each (2400), recency 3
    evts += [event(2, at(D - (3 + i) * DAY), spent=150) for i in range(16)]
    # 3: Medium - 6 events (one SPEND of 300), last on D-10
    evts += [event(3, at(D - (10 + i) * DAY)) for i in range(5)] + [
        event(3, at(D - 12 * DAY), spent=300)
    ]
    # 4: inactive for 40 days -> Low, recency 40
    evts += [event(4, at(D - 40 * DAY), spent=50_000)]
    # 5: would be a whale counting events after D, which must be ignored -> Low (f = 1)
    evts += [event(5, at(D), spent=100)] + [
        event(5, at(D + DAY, i), spent=1_000) for i in range(20)
    ]
    # 6: only events after D -> not in snapshot D
    evts += [event(6, at(D + DAY))]
    # 7: EARN tokens are not monetary -> Low (m = 0 < 100)
    evts += [event(7, at(D - i * DAY), action_type="EARN_CYBER_TOKENS") for i in range(6)]
    return evts


EXPECTED = {
    1: (0, 35, 14_000.0, "Whale"),
    2: (3, 16, 2_400.0, "High Engaged"),
    3: (10, 6, 300.0, "Medium"),
    4: (40, 0, 0.0, "Low"),
    5: (0, 1, 100.0, "Low"),
    7: (0, 6, 0.0, "Low"),
}


def scores(url: str, day: dt.date) -> dict[int, tuple]:
    rows = query(
        url,
        "SELECT user_id, recency_days, frequency, monetary, rfm_group FROM rfm_scores "
        "WHERE snapshot_date = %s ORDER BY user_id",
        (day,),
    )
    return {row[0]: tuple(row[1:]) for row in rows}


def segments(url: str) -> list[tuple]:
    return query(url, "SELECT * FROM user_segments ORDER BY user_id")


def test_snapshot_has_the_known_groups_and_publishes(database_url: str, tmp_path: Path) -> None:
    insert_events(database_url, known_dataset())
    # risk_profile is owned elsewhere: the pipeline must keep it
    query(database_url, "INSERT INTO user_segments (user_id, risk_profile) VALUES (4, 'High-Risk')")
    result = materialize(database_url, tmp_path / "lake", D)
    assert result.success

    assert scores(database_url, D) == EXPECTED
    published = {row[0]: row for row in segments(database_url)}
    assert set(published) == set(EXPECTED)
    user4 = query(
        database_url,
        "SELECT rfm_group, risk_profile, recency_days, snapshot_date FROM user_segments "
        "WHERE user_id = 4",
    )
    assert user4 == [("Low", "High-Risk", 40, D)]

    # metadata a person reads in the UI: row count, distribution table, chart, thresholds
    mats = [
        m
        for m in result.get_asset_materialization_events()
        if m.asset_key == dg.AssetKey("rfm_scores")
    ]
    meta = mats[0].materialization.metadata
    assert meta["dagster/row_count"].value == 6
    assert meta["users_whale"].value == 1
    assert "Whale" in meta["group_chart"].value and "█" in meta["group_chart"].value
    assert meta["thresholds"].value["groups"][0]["min_monetary"] == 10_000
    assert {r.data["rfm_group"] for r in meta["group_distribution"].value.records} == {
        "Whale",
        "High Engaged",
        "Medium",
        "Low",
    }
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        rfm.CHECK_ONE_ROW: True,
        rfm.CHECK_GROUPS: True,
        rfm.CHECK_NON_NEGATIVE: True,
        rfm.CHECK_SHIFT: True,
    }


def test_rebuild_is_idempotent(database_url: str, tmp_path: Path) -> None:
    insert_events(database_url, known_dataset())
    materialize(database_url, tmp_path / "lake", D - DAY, D)
    first = query(
        database_url,
        "SELECT snapshot_date, user_id, recency_days, frequency, monetary, rfm_group "
        "FROM rfm_scores ORDER BY 1, 2",
    )
    activity = query(database_url, "SELECT * FROM user_daily_activity ORDER BY 1, 2")
    materialize(database_url, tmp_path / "lake", D - DAY, D)
    materialize(database_url, tmp_path / "lake", D)
    assert (
        query(
            database_url,
            "SELECT snapshot_date, user_id, recency_days, frequency, monetary, rfm_group "
            "FROM rfm_scores ORDER BY 1, 2",
        )
        == first
    )
    assert query(database_url, "SELECT * FROM user_daily_activity ORDER BY 1, 2") == activity
    # the last run carried latest event dates from snapshot D-1 instead of scanning events
    assert query(
        database_url,
        "SELECT prior_snapshot FROM rfm_partition_builds "
        "WHERE asset = 'rfm_scores' AND partition_date = %s",
        (D,),
    ) == [(D - DAY,)]
    assert len(first) == 11  # 5 users on D-1 (user 5 starts on D), 6 on D, no duplicates


def test_range_backfill_in_one_run_leaves_user_segments_alone(
    database_url: str, tmp_path: Path
) -> None:
    insert_events(database_url, known_dataset())
    assert materialize(database_url, tmp_path / "lake", D).success
    before = segments(database_url)

    result = materialize(database_url, tmp_path / "lake", D - 5 * DAY, D - DAY)
    assert result.success
    # one run built every partition of the range
    keys = {
        (m.asset_key.to_user_string(), m.partition)
        for m in result.get_asset_materialization_events()
    }
    for i in range(1, 6):
        assert ("rfm_scores", (D - i * DAY).isoformat()) in keys
    built = query(
        database_url, "SELECT DISTINCT snapshot_date FROM rfm_scores ORDER BY snapshot_date"
    )
    assert [row[0] for row in built] == [D - i * DAY for i in range(5, -1, -1)]
    # the backfill changed rfm_scores only: user_segments is exactly as it was
    assert segments(database_url) == before
    publish = [
        m.materialization.metadata
        for m in result.get_asset_materialization_events()
        if m.asset_key == dg.AssetKey("user_segments")
    ]
    assert publish and all(not meta["published"].value for meta in publish)


def test_window_without_backfilled_aggregates_is_still_right(
    database_url: str, tmp_path: Path
) -> None:
    # only partition D is built; the 29 earlier days are aggregated on the fly
    insert_events(database_url, known_dataset())
    materialize(database_url, tmp_path / "lake", D)
    days = query(database_url, "SELECT count(DISTINCT activity_date) FROM user_daily_activity")
    assert days == [(1,)]
    assert scores(database_url, D) == EXPECTED


def test_failed_blocking_check_stops_publishing(database_url: str, tmp_path: Path) -> None:
    insert_events(database_url, known_dataset())
    materialize(database_url, tmp_path / "lake", D - DAY)
    before = segments(database_url)
    # a negative spend that bypassed validation makes a negative monetary value
    insert_events(database_url, [event(8, at(D), spent=-500)])
    result = materialize(database_url, tmp_path / "lake", D, raise_on_error=False)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks[rfm.CHECK_NON_NEGATIVE].passed
    assert checks[rfm.CHECK_NON_NEGATIVE].metadata["rows_with_negative_measure"].value == 1
    assert checks[rfm.CHECK_ONE_ROW].passed
    published = [
        m
        for m in result.get_asset_materialization_events()
        if m.asset_key == dg.AssetKey("user_segments")
    ]
    assert published == []
    assert segments(database_url) == before
    assert before and before[0][6] == D - DAY


def test_share_shift_check_warns(database_url: str, tmp_path: Path) -> None:
    insert_events(database_url, known_dataset())
    materialize(database_url, tmp_path / "lake", D - DAY)
    result = materialize(
        database_url,
        tmp_path / "lake",
        D,
        run_config={"ops": {"rfm_scores": {"config": {"max_group_share_shift": 0.0}}}},
    )
    check = {e.check_name: e for e in result.get_asset_check_evaluations()}[rfm.CHECK_SHIFT]
    # D-1 -> D: user 5 (first event on D) joins as Low, so shares move
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert result.success  # a warning does not block publishing
    assert segments(database_url)[0][6] == D


def test_lake_partitions_are_readable_by_duckdb(database_url: str, tmp_path: Path) -> None:
    insert_events(database_url, known_dataset())
    query(
        database_url,
        "INSERT INTO site_visits (user_id, source, visit_timestamp) VALUES "
        "(1, 'webapp_button', %s), (2, 'email', %s), (2, 'email', %s)",
        (at(D), at(D), at(D + DAY)),
    )
    lake = tmp_path / "lake"
    materialize(database_url, lake, D - DAY, D)
    assert (lake / "user_actions" / f"event_date={D}" / "part-0.parquet").is_file()
    assert (lake / "rfm_scores" / f"snapshot_date={D}" / "part-0.parquet").is_file()
    assert (lake / "site_visits" / f"visit_date={D - DAY}" / "part-0.parquet").is_file()

    con = duckdb.connect()
    from pipelines.lake import create_views

    assert sorted(create_views(con, lake)) == [
        "rfm_scores",
        "site_visits",
        "user_actions",
        "user_daily_activity",
    ]
    lake_events = con.execute(
        "SELECT count(*) FROM user_actions WHERE event_date BETWEEN ? AND ?", [D - DAY, D]
    ).fetchone()
    pg_events = query(
        database_url,
        "SELECT count(*) FROM user_actions WHERE action_timestamp >= %s AND action_timestamp < %s",
        (at(D - DAY, 0), at(D + DAY, 0)),
    )
    assert lake_events == pg_events[0]
    groups = con.execute(
        "SELECT user_id, rfm_group FROM rfm_scores WHERE snapshot_date = ? ORDER BY 1", [D]
    ).fetchall()
    assert groups == [(uid, row[3]) for uid, row in sorted(EXPECTED.items())]
    visits = con.execute("SELECT visit_date, count(*) FROM site_visits GROUP BY 1").fetchall()
    assert visits == [(D, 2)]  # the visit on D+1 is not in the built range
    # the daily aggregates in the lake are the rows Postgres holds
    activity_sql = (
        "SELECT activity_date, user_id, event_count, spent_tokens FROM user_daily_activity "
        "ORDER BY 1, 2"
    )
    assert con.execute(activity_sql).fetchall() == query(database_url, activity_sql)


def test_make_analyze_prints_the_distribution(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts import analyze

    insert_events(database_url, known_dataset())
    lake = tmp_path / "lake"
    materialize(database_url, lake, D - 7 * DAY, D)
    root = Path(__file__).resolve().parents[2] / "sql" / "analysis"
    assert analyze.main([str(root / "segment_distribution.sql"), "--lake", str(lake)]) == 0
    out = capsys.readouterr().out
    for group in ("Whale", "High Engaged", "Medium", "Low"):
        assert group in out
    assert analyze.main([str(root / "segment_transitions.sql"), "--lake", str(lake), "--csv"]) == 0
    out = capsys.readouterr().out
    assert "from_snapshot,to_snapshot,from_group,to_group,users" in out
    for name in ("daily_active_users.sql", "site_visits_by_source.sql"):
        assert analyze.main([str(root / name), "--lake", str(lake)]) == 0
    bad = tmp_path / "bad.sql"
    bad.write_text("SELECT * FROM no_such_view;")
    assert analyze.main([str(bad), "--lake", str(lake)]) == 1
