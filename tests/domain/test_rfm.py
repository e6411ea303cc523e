"""Unit tests of the pure RFM rules and measures (no servers)."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.domain.rfm import (
    DAILY_ACTIVITY_SCHEMA,
    DEFAULT_RULES,
    EVENTS_SCHEMA,
    SCORES_SCHEMA,
    RfmRules,
    daily_activity,
    distribution_shift,
    group_distribution,
    last_event_dates,
    markdown_bar_chart,
    rfm_scores,
    rfm_scores_from_events,
    snapshot_violations,
)

D = dt.date(2026, 3, 31)
UTC = dt.UTC


def groups(rows: list[tuple[int, int, float]], rules: RfmRules = DEFAULT_RULES) -> list[str]:
    frame = pl.DataFrame(
        rows,
        schema={"recency_days": pl.Int32, "frequency": pl.Int32, "monetary": pl.Float64},
        orient="row",
    )
    return frame.select(rules.group_expr())["rfm_group"].to_list()


# -- rule table: boundaries ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("recency", "expected"),
    [(2, "Whale"), (3, "High Engaged"), (5, "High Engaged"), (6, "Low")],
)
def test_recency_boundaries_whale_and_high(recency: int, expected: str) -> None:
    assert groups([(recency, 30, 10_000)]) == [expected]


@pytest.mark.parametrize(("recency", "expected"), [(15, "Medium"), (16, "Low")])
def test_recency_boundaries_medium(recency: int, expected: str) -> None:
    assert groups([(recency, 10, 500)]) == [expected]


def _assert_groups_by_polars_testing(
    frequency: list[int], monetary: list[float], expected: list[str]
) -> None:
    """Run the rule expression over rows with r = 0 and compare whole frames."""
    frame = pl.DataFrame(
        {"recency_days": [0] * len(frequency), "frequency": frequency, "monetary": monetary},
        schema={"recency_days": pl.Int32, "frequency": pl.Int32, "monetary": pl.Float64},
    )
    result = frame.with_columns(DEFAULT_RULES.group_expr())
    assert_frame_equal(result, frame.with_columns(pl.Series("rfm_group", expected)))


def test_frequency_boundaries_with_polars_testing() -> None:
    # r = 0, m = 10000: f 29 -> High (f >= 15), 30 -> Whale.
    # r = 0, m = 2000: f 14 -> Low (High needs 15, Medium caps m at 1999), 15 -> High.
    # r = 0, m = 100: f 4 -> Low, 5 -> Medium, 14 -> Medium, 15 -> Low.
    _assert_groups_by_polars_testing(
        [29, 30, 14, 15, 4, 5, 14, 15],
        [10_000.0, 10_000.0, 2_000.0, 2_000.0, 100.0, 100.0, 100.0, 100.0],
        ["High Engaged", "Whale", "Low", "High Engaged", "Low", "Medium", "Medium", "Low"],
    )


def test_monetary_boundaries_with_polars_testing() -> None:
    # f = 30, r = 0: m 9999 -> High, 10000 -> Whale; f = 15: m 1999 -> Low, 2000 -> High;
    # f = 10: m 99 -> Low, 100 -> Medium, 1999 -> Medium, 2000 -> Low.
    _assert_groups_by_polars_testing(
        [30, 30, 15, 15, 10, 10, 10, 10],
        [9_999.0, 10_000.0, 1_999.0, 2_000.0, 99.0, 100.0, 1_999.0, 2_000.0],
        ["High Engaged", "Whale", "Low", "High Engaged", "Low", "Medium", "Medium", "Low"],
    )


def test_first_matching_rule_wins() -> None:
    # qualifies for Whale and High Engaged: Whale comes first
    assert groups([(0, 100, 50_000)]) == ["Whale"]


def test_rules_are_configurable_in_one_place() -> None:
    stricter = DEFAULT_RULES.with_thresholds({"Whale": {"min_frequency": 40}})
    assert groups([(0, 35, 20_000)], stricter) == ["High Engaged"]
    assert groups([(0, 35, 20_000)]) == ["Whale"]
    with pytest.raises(ValueError, match="unknown groups"):
        DEFAULT_RULES.with_thresholds({"Platinum": {"min_frequency": 1}})
    with pytest.raises(ValueError, match="unique"):
        RfmRules(default_group="Whale")
    assert DEFAULT_RULES.group_names == ("Whale", "High Engaged", "Medium", "Low")
    assert DEFAULT_RULES.as_dict()["groups"][0] == {
        "name": "Whale",
        "max_recency_days": 2,
        "min_frequency": 30,
        "min_monetary": 10_000,
    }


# -- measures ------------------------------------------------------------------------------
def events(rows: list[tuple[int, str, dt.datetime, float | None]]) -> pl.LazyFrame:
    return pl.LazyFrame(rows, schema=EVENTS_SCHEMA, orient="row")


def ts(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), UTC)


def test_daily_activity_counts_only_spend_tokens_and_keeps_last_time() -> None:
    day = dt.date(2026, 3, 1)
    result = daily_activity(
        events(
            [
                (1, "SPEND_CYBER_TOKENS", ts(day, 1), 100.0),
                (1, "EARN_CYBER_TOKENS", ts(day, 2), 999.0),  # not monetary
                (1, "PLAY_GAME", ts(day, 23), None),
                (1, "SPEND_CYBER_TOKENS", ts(day + dt.timedelta(days=1), 0), 5.0),
                (2, "SPEND_CYBER_TOKENS", ts(day, 3), None),  # no numeric spent_tokens
            ]
        )
    ).collect()
    expected = pl.DataFrame(
        [
            (day, 1, 3, 100.0, ts(day, 23)),
            (day, 2, 1, 0.0, ts(day, 3)),
            (day + dt.timedelta(days=1), 1, 1, 5.0, ts(day + dt.timedelta(days=1), 0)),
        ],
        schema=DAILY_ACTIVITY_SCHEMA,
        orient="row",
    )
    assert_frame_equal(result, expected)


def _scores(evts: list[tuple[int, str, dt.datetime, float | None]]) -> pl.DataFrame:
    """Snapshot D from raw events the way the pipeline does (window aggregates + prior)."""
    activity = daily_activity(events(evts))
    start = DEFAULT_RULES.window_start(D)
    prior = activity.filter(pl.col("activity_date") < start).select(
        "user_id", pl.col("activity_date").alias("last_event_date")
    )
    return rfm_scores(activity, prior, D).collect()


def test_rfm_scores_follow_spec_definitions() -> None:
    window_start = D - dt.timedelta(days=29)
    evts = []
    # user 1: whale - 30 events in the window (one per day), 10000 spent, last event on D
    for i in range(30):
        evts.append((1, "SPEND_CYBER_TOKENS", ts(window_start + dt.timedelta(days=i)), 10_000 / 30))
    # user 2: events after D are ignored; one on D-4, spent 150 -> Low (f = 1)
    evts.append((2, "SPEND_CYBER_TOKENS", ts(D - dt.timedelta(days=4)), 150.0))
    evts.append((2, "SPEND_CYBER_TOKENS", ts(D + dt.timedelta(days=1), 0), 99_999.0))
    # user 3: inactive for 40 days -> Low with recency 40, f = 0, m = 0
    evts.append((3, "PLAY_GAME", ts(D - dt.timedelta(days=40)), None))
    # user 4: only after D -> not in the population
    evts.append((4, "PLAY_GAME", ts(D + dt.timedelta(days=2)), None))
    # user 5: just outside the window (D-30) counts for recency only
    evts.append((5, "SPEND_CYBER_TOKENS", ts(D - dt.timedelta(days=30)), 500.0))
    result = _scores(evts)
    expected = pl.DataFrame(
        [
            (D, 1, 0, 30, 10_000.0, "Whale"),
            (D, 2, 4, 1, 150.0, "Low"),
            (D, 3, 40, 0, 0.0, "Low"),
            (D, 5, 30, 0, 0.0, "Low"),
        ],
        schema=SCORES_SCHEMA,
        orient="row",
    )
    assert_frame_equal(result, expected, check_exact=False, rel_tol=1e-9)


def test_one_pass_from_events_equals_the_two_step_pipeline() -> None:
    evts = []
    for user in range(1, 60):
        for i in range(user % 37):
            day = D - dt.timedelta(days=(user * 7 + i * 3) % 50 - 3)  # some after D
            spent = float(user * 13 % 700) if i % 3 == 0 else None
            action = "SPEND_CYBER_TOKENS" if i % 2 == 0 else "EARN_CYBER_TOKENS"
            evts.append((user, action, ts(day, i % 24), spent))
    assert_frame_equal(rfm_scores_from_events(events(evts), D).collect(), _scores(evts))


def test_event_at_midnight_belongs_to_the_next_day() -> None:
    next_midnight = dt.datetime.combine(D + dt.timedelta(days=1), dt.time(), UTC)
    last_instant = next_midnight - dt.timedelta(microseconds=1)
    result = _scores([(1, "PLAY_GAME", last_instant, None), (2, "PLAY_GAME", next_midnight, None)])
    assert result["user_id"].to_list() == [1]
    assert result["recency_days"].to_list() == [0]


def test_prior_from_previous_snapshot_equals_prior_from_events() -> None:
    evts = [
        (1, "PLAY_GAME", ts(D - dt.timedelta(days=45)), None),
        (2, "PLAY_GAME", ts(D - dt.timedelta(days=10)), None),
        (2, "SPEND_CYBER_TOKENS", ts(D), 200.0),
    ]
    activity = daily_activity(events(evts))
    yesterday = D - dt.timedelta(days=1)
    prior = activity.filter(pl.col("activity_date") < DEFAULT_RULES.window_start(yesterday))
    previous = rfm_scores(
        activity,
        prior.select("user_id", pl.col("activity_date").alias("last_event_date")),
        yesterday,
    )
    via_previous = rfm_scores(activity, last_event_dates(previous), D).collect()
    assert_frame_equal(via_previous, _scores(evts))


def test_empty_input_gives_empty_snapshot_with_schema() -> None:
    result = _scores([])
    assert result.is_empty()
    assert result.schema == SCORES_SCHEMA


# -- checks, distribution, chart -------------------------------------------------------------
def test_snapshot_violations() -> None:
    good = _scores([(1, "PLAY_GAME", ts(D), None)])
    assert snapshot_violations(good) == {
        "duplicate_users": 0,
        "unknown_groups": 0,
        "negative_measures": 0,
    }
    bad = pl.concat(
        [
            good,
            good,
            good.with_columns(
                pl.lit("Platinum").alias("rfm_group"), pl.lit(2).cast(pl.Int64).alias("user_id")
            ),
            good.with_columns(
                pl.lit(-5.0).alias("monetary"), pl.lit(3).cast(pl.Int64).alias("user_id")
            ),
        ]
    )
    assert snapshot_violations(bad) == {
        "duplicate_users": 1,
        "unknown_groups": 1,
        "negative_measures": 1,
    }


def test_distribution_shift_and_chart() -> None:
    before = pl.DataFrame({"rfm_group": ["Low"] * 8 + ["Whale"] * 2})
    after = pl.DataFrame({"rfm_group": ["Low"] * 5 + ["Medium"] * 5})
    d0, d1 = group_distribution(before), group_distribution(after)
    assert d0["rfm_group"].to_list() == ["Whale", "High Engaged", "Medium", "Low"]
    assert d0["users"].to_list() == [2, 0, 0, 8]
    shift = distribution_shift(d0, d1)
    assert shift.row(0, named=True)["rfm_group"] == "Medium"
    assert shift["shift"].to_list()[:2] == pytest.approx([0.5, 0.3])
    chart = markdown_bar_chart(d1, width=10)
    assert "Medium       │█████     │  50.0%         5" in chart
    assert chart.startswith("```") and chart.endswith("```")
