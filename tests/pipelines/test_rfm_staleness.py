"""Unit tests of the late-data staleness rules (pure)."""

from __future__ import annotations

import datetime as dt

from pipelines.rfm_staleness import Build, find_stale

D = dt.date(2026, 3, 10)
DAY = dt.timedelta(days=1)
T0 = dt.datetime(2026, 3, 11, 2, 0, tzinfo=dt.UTC)  # nightly build time
HOUR = dt.timedelta(hours=1)


def built(day: dt.date, at: dt.datetime) -> Build:
    return Build(source_watermark=at, built_at=at - dt.timedelta(seconds=1))


def nightly(days: list[dt.date]) -> dict[dt.date, Build]:
    """Each day built at 02:00 the next day (aggregate one second before the snapshot)."""
    return {d: built(d, T0 + (d - D)) for d in days}


def test_nothing_is_stale_without_late_events() -> None:
    days = [D - i * DAY for i in range(5)]
    result = find_stale({}, nightly(days), nightly(days), window_days=30)
    assert result.stale_days == [] and result.rebuild_range() is None


def test_late_event_makes_its_day_and_every_later_snapshot_stale() -> None:
    days = [D - i * DAY for i in range(40)]
    late = {D - 35 * DAY: T0 + 5 * HOUR}  # arrived after everything was built
    result = find_stale(late, nightly(days), nightly(days), window_days=30)
    assert result.stale_activity == {D - 35 * DAY}
    # recency and population of every later snapshot may change, not only the 30 in window
    assert result.stale_scores == {D - i * DAY for i in range(36)}
    assert result.rebuild_range() == (D - 35 * DAY, D)
    assert result.open_evidence == late


def test_event_seen_by_a_build_does_not_make_it_stale() -> None:
    days = [D - i * DAY for i in range(3)]
    # ingested before D's nightly build, but after D-1's: only D-1's partitions are stale
    late = {D - 1 * DAY: T0 - HOUR}
    result = find_stale(late, nightly(days), nightly(days), window_days=30)
    assert result.stale_activity == {D - DAY}
    # D's own watermark is after the event, but D read the stale aggregate of D-1
    assert result.stale_scores == {D - DAY, D}


def test_older_snapshots_are_untouched() -> None:
    days = [D - i * DAY for i in range(5)]
    result = find_stale({D: T0 + HOUR}, nightly(days), nightly(days), window_days=30)
    assert result.stale_scores == {D} and result.stale_activity == {D}


def test_rebuilt_partitions_consume_the_evidence() -> None:
    days = [D - i * DAY for i in range(3)]
    late_at = T0 + HOUR
    rebuilt_at = T0 + 2 * HOUR
    activity = {d: built(d, rebuilt_at) for d in days}
    scores = {d: Build(rebuilt_at + dt.timedelta(seconds=5), rebuilt_at) for d in days}
    result = find_stale({D - 2 * DAY: late_at}, activity, scores, window_days=30)
    assert result.stale_days == []
    assert result.open_evidence == {}


def test_aggregate_rebuilt_after_a_snapshot_makes_it_stale() -> None:
    # e.g. a rebuild run refreshed the aggregates and failed before the snapshots
    days = [D - i * DAY for i in range(3)]
    activity = nightly(days)
    activity[D - 2 * DAY] = built(D - 2 * DAY, T0 + 3 * HOUR)
    result = find_stale({}, activity, nightly(days), window_days=30)
    assert result.stale_scores == {D - 2 * DAY, D - DAY, D}
    assert result.stale_activity == set()


def test_snapshot_outside_the_window_ignores_a_rebuilt_old_aggregate() -> None:
    activity = {D - 40 * DAY: built(D - 40 * DAY, T0 + HOUR)}
    scores = {D: built(D, T0)}
    assert find_stale({}, activity, scores, window_days=30).stale_days == []


def test_staleness_flows_down_a_chain_of_carried_snapshots() -> None:
    # D-2 read raw events; D-1 carried latest event dates from D-2, D from D-1
    days = [D - i * DAY for i in range(3)]
    scores = {
        d: Build(T0 + (d - D), T0 + (d - D) + dt.timedelta(seconds=1), prior_snapshot=d - DAY)
        for d in days
    }
    scores[D - 2 * DAY] = Build(T0 - 2 * DAY, T0 - 2 * DAY)
    # an event of a day long before every window, ingested after D-2 was built but before
    # D-1 and D were: only D-2 missed it directly, the others inherited the gap
    late = {D - 60 * DAY: T0 - 2 * DAY + HOUR}
    result = find_stale(late, {}, scores, window_days=30)
    assert result.stale_scores == set(days)
    # once D-2 is rebuilt after D-1 and D were built, they are stale by rule 4 alone
    scores[D - 2 * DAY] = Build(T0 + HOUR, T0 + HOUR)
    assert find_stale({}, {}, scores, window_days=30).stale_scores == {D - DAY, D}
