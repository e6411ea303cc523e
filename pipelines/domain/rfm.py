"""RFM measures and group rules (SPEC §7) as pure Polars code: LazyFrame in, LazyFrame out.

A snapshot for the UTC date ``D`` is a pure function of the events with
``action_timestamp < D+1 00:00 UTC``:

- population: every user with at least one such event (inactive users decay to Low);
- ``recency_days`` = ``D`` minus the UTC date of the user's latest such event;
- ``frequency`` = events in ``[D-29, D]`` (the window, :attr:`RfmRules.window_days` days);
- ``monetary`` = sum of ``metadata.spent_tokens`` of ``SPEND_CYBER_TOKENS`` events in the window;
- ``rfm_group`` = the first :class:`GroupRule` that matches, else ``Low``.

The computation is split in two steps so the pipeline can keep the first one per day:
:func:`daily_activity` turns events into one row per (user, day), and :func:`rfm_scores`
turns the window's daily rows plus each user's latest event date before the window
into the snapshot. The thresholds live in one place, :data:`DEFAULT_RULES`; callers pass
another :class:`RfmRules` to change them.

No I/O here: the module imports only the standard library and Polars.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

import polars as pl

__all__ = [
    "DAILY_ACTIVITY_SCHEMA",
    "DEFAULT_RULES",
    "EVENTS_SCHEMA",
    "GROUP_COLUMN",
    "LAST_EVENT_SCHEMA",
    "SCORES_SCHEMA",
    "SPEND_ACTION",
    "GroupRule",
    "RfmRules",
    "daily_activity",
    "distribution_from_counts",
    "distribution_shift",
    "group_distribution",
    "last_event_dates",
    "markdown_bar_chart",
    "rfm_scores",
    "rfm_scores_from_events",
    "snapshot_violations",
]

SPEND_ACTION: Final = "SPEND_CYBER_TOKENS"
GROUP_COLUMN: Final = "rfm_group"

#: Events as the pipeline reads them: ``spent_tokens`` is ``metadata.spent_tokens`` when it
#: is a JSON number (null otherwise); only ``SPEND_CYBER_TOKENS`` events count it.
EVENTS_SCHEMA: Final = pl.Schema(
    {
        "user_id": pl.Int64(),
        "action_type": pl.String(),
        "action_timestamp": pl.Datetime("us", "UTC"),
        "spent_tokens": pl.Float64(),
    }
)
DAILY_ACTIVITY_SCHEMA: Final = pl.Schema(
    {
        "activity_date": pl.Date(),
        "user_id": pl.Int64(),
        "event_count": pl.Int32(),
        "spent_tokens": pl.Float64(),
        "last_event_at": pl.Datetime("us", "UTC"),
    }
)
LAST_EVENT_SCHEMA: Final = pl.Schema({"user_id": pl.Int64(), "last_event_date": pl.Date()})
SCORES_SCHEMA: Final = pl.Schema(
    {
        "snapshot_date": pl.Date(),
        "user_id": pl.Int64(),
        "recency_days": pl.Int32(),
        "frequency": pl.Int32(),
        "monetary": pl.Float64(),
        "rfm_group": pl.String(),
    }
)


@dataclass(frozen=True)
class GroupRule:
    """One row of the rule table: every bound that is set must hold (bounds are inclusive)."""

    name: str
    max_recency_days: int | None = None
    min_frequency: int | None = None
    max_frequency: int | None = None
    min_monetary: float | None = None
    max_monetary: float | None = None

    def matches(self) -> pl.Expr:
        """A boolean expression over ``recency_days``, ``frequency`` and ``monetary``."""
        conditions: list[pl.Expr] = []
        if self.max_recency_days is not None:
            conditions.append(pl.col("recency_days") <= self.max_recency_days)
        if self.min_frequency is not None:
            conditions.append(pl.col("frequency") >= self.min_frequency)
        if self.max_frequency is not None:
            conditions.append(pl.col("frequency") <= self.max_frequency)
        if self.min_monetary is not None:
            conditions.append(pl.col("monetary") >= self.min_monetary)
        if self.max_monetary is not None:
            conditions.append(pl.col("monetary") <= self.max_monetary)
        return pl.all_horizontal(conditions) if conditions else pl.lit(True)


@dataclass(frozen=True)
class RfmRules:
    """The rule table (first match wins), the fallback group and the window length."""

    groups: tuple[GroupRule, ...] = field(
        default=(
            GroupRule("Whale", max_recency_days=2, min_frequency=30, min_monetary=10_000),
            GroupRule("High Engaged", max_recency_days=5, min_frequency=15, min_monetary=2_000),
            GroupRule(
                "Medium",
                max_recency_days=15,
                min_frequency=5,
                max_frequency=14,
                min_monetary=100,
                max_monetary=1_999,
            ),
        )
    )
    default_group: str = "Low"
    window_days: int = 30

    def __post_init__(self) -> None:
        names = [rule.name for rule in self.groups]
        if len(set(names)) != len(names) or self.default_group in names:
            raise ValueError(f"group names must be unique: {[*names, self.default_group]}")
        if self.window_days < 1:
            raise ValueError("window_days must be >= 1")

    @property
    def group_names(self) -> tuple[str, ...]:
        """Every group a snapshot may contain, in rule order, the fallback last."""
        return (*(rule.name for rule in self.groups), self.default_group)

    def group_expr(self) -> pl.Expr:
        """``rfm_group`` as one when/then chain: the first matching rule wins."""
        expr: Any = pl
        for rule in self.groups:
            expr = expr.when(rule.matches()).then(pl.lit(rule.name))
        if expr is pl:
            return pl.lit(self.default_group).alias(GROUP_COLUMN)
        return expr.otherwise(pl.lit(self.default_group)).alias(GROUP_COLUMN)

    def window_start(self, snapshot_date: dt.date) -> dt.date:
        """First day of the frequency/monetary window of ``snapshot_date`` (inclusive)."""
        return snapshot_date - dt.timedelta(days=self.window_days - 1)

    def with_thresholds(self, changes: Mapping[str, Mapping[str, Any]]) -> RfmRules:
        """A copy with bounds changed: ``with_thresholds({"Whale": {"min_frequency": 40}})``."""
        known = {rule.name: rule for rule in self.groups}
        unknown = set(changes) - set(known)
        if unknown:
            raise ValueError(f"unknown groups: {sorted(unknown)}")
        groups = tuple(replace(rule, **changes.get(rule.name, {})) for rule in self.groups)
        return replace(self, groups=groups)

    def as_dict(self) -> dict[str, Any]:
        """The rules as plain data (for run metadata)."""
        return {
            "groups": [
                {k: v for k, v in asdict(rule).items() if v is not None} for rule in self.groups
            ],
            "default_group": self.default_group,
            "window_days": self.window_days,
        }


DEFAULT_RULES: Final = RfmRules()


def daily_activity(events: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (UTC day, user): events, spent tokens of SPEND events, last event time.

    ``events`` has the columns of :data:`EVENTS_SCHEMA`; the result has those of
    :data:`DAILY_ACTIVITY_SCHEMA`, sorted by day and user.
    """
    spent = (
        pl.when(pl.col("action_type") == SPEND_ACTION).then(pl.col("spent_tokens")).otherwise(None)
    )
    return (
        events.select(
            pl.col("action_timestamp").dt.convert_time_zone("UTC").dt.date().alias("activity_date"),
            pl.col("user_id").cast(pl.Int64),
            spent.cast(pl.Float64).alias("spent_tokens"),
            pl.col("action_timestamp").dt.convert_time_zone("UTC"),
        )
        .group_by("activity_date", "user_id")
        .agg(
            pl.len().cast(pl.Int32).alias("event_count"),
            pl.col("spent_tokens").sum().cast(pl.Float64),
            pl.col("action_timestamp").max().alias("last_event_at"),
        )
        .select(list(DAILY_ACTIVITY_SCHEMA))
        .sort("activity_date", "user_id")
    )


def rfm_scores(
    window_activity: pl.LazyFrame,
    prior_last_event: pl.LazyFrame,
    snapshot_date: dt.date,
    rules: RfmRules = DEFAULT_RULES,
) -> pl.LazyFrame:
    """The snapshot of ``snapshot_date`` (columns of :data:`SCORES_SCHEMA`, sorted by user).

    ``window_activity``: daily rows (:data:`DAILY_ACTIVITY_SCHEMA`, at least ``activity_date``,
    ``user_id``, ``event_count``, ``spent_tokens``) covering every day of the window; rows
    outside ``[window_start, snapshot_date]`` are ignored. ``prior_last_event``
    (:data:`LAST_EVENT_SCHEMA`): each user's latest event date over the days before the
    window, or over any longer span that ends no later than ``snapshot_date`` (e.g. the
    previous snapshot); dates after ``snapshot_date`` are ignored.
    """
    start = rules.window_start(snapshot_date)
    per_user = (
        window_activity.filter(pl.col("activity_date").is_between(start, snapshot_date))
        .group_by("user_id")
        .agg(
            pl.col("event_count").sum().cast(pl.Int64).alias("frequency"),
            pl.col("spent_tokens").sum().alias("monetary"),
            pl.col("activity_date").max().alias("last_in_window"),
        )
    )
    prior = (
        prior_last_event.filter(pl.col("last_event_date") <= snapshot_date)
        .group_by("user_id")
        .agg(pl.col("last_event_date").max())
    )
    last_event = pl.max_horizontal("last_in_window", "last_event_date")
    return (
        per_user.join(prior, on="user_id", how="full", coalesce=True)
        .select(
            pl.lit(snapshot_date, dtype=pl.Date).alias("snapshot_date"),
            pl.col("user_id"),
            (pl.lit(snapshot_date, dtype=pl.Date) - last_event)
            .dt.total_days()
            .cast(pl.Int32)
            .alias("recency_days"),
            pl.col("frequency").fill_null(0).cast(pl.Int32),
            pl.col("monetary").fill_null(0.0).cast(pl.Float64),
        )
        .with_columns(rules.group_expr())
        .sort("user_id")
    )


def rfm_scores_from_events(
    events: pl.LazyFrame, snapshot_date: dt.date, rules: RfmRules = DEFAULT_RULES
) -> pl.LazyFrame:
    """The snapshot of ``snapshot_date`` straight from events, in one pass (one group-by).

    Same result as :func:`daily_activity` followed by :func:`rfm_scores` (the pipeline keeps
    the daily step to reuse it across days); used to compare engines on the same events.
    """
    end = dt.datetime.combine(snapshot_date + dt.timedelta(days=1), dt.time(), dt.UTC)
    start = dt.datetime.combine(rules.window_start(snapshot_date), dt.time(), dt.UTC)
    in_window = pl.col("action_timestamp") >= start
    spent = pl.col("action_type") == SPEND_ACTION
    return (
        events.filter(pl.col("action_timestamp") < end)
        .group_by("user_id")
        .agg(
            pl.col("action_timestamp").max().alias("last_event_at"),
            in_window.sum().alias("frequency"),
            pl.col("spent_tokens").filter(in_window & spent).sum().alias("monetary"),
        )
        .select(
            pl.lit(snapshot_date, dtype=pl.Date).alias("snapshot_date"),
            pl.col("user_id").cast(pl.Int64),
            (
                pl.lit(snapshot_date, dtype=pl.Date)
                - pl.col("last_event_at").dt.convert_time_zone("UTC").dt.date()
            )
            .dt.total_days()
            .cast(pl.Int32)
            .alias("recency_days"),
            pl.col("frequency").cast(pl.Int32),
            pl.col("monetary").fill_null(0.0).cast(pl.Float64),
        )
        .with_columns(rules.group_expr())
        .sort("user_id")
    )


def last_event_dates(scores: pl.LazyFrame) -> pl.LazyFrame:
    """Each user's latest event date as of a snapshot (``snapshot_date - recency_days``).

    Feeding a snapshot of ``D-1`` as ``prior_last_event`` to :func:`rfm_scores` for ``D``
    gives the same result as scanning every event before the window.
    """
    return scores.select(
        pl.col("user_id"),
        (pl.col("snapshot_date") - pl.duration(days=pl.col("recency_days"))).alias(
            "last_event_date"
        ),
    )


def snapshot_violations(scores: pl.DataFrame, rules: RfmRules = DEFAULT_RULES) -> dict[str, int]:
    """Counts of broken invariants of a snapshot (all zero when it may be published).

    ``duplicate_users``: rows beyond one per (snapshot_date, user); ``unknown_groups``: rows
    whose group is not in the rule table; ``negative_measures``: rows with a negative or
    null recency, frequency or monetary value.
    """
    if scores.is_empty():
        return {"duplicate_users": 0, "unknown_groups": 0, "negative_measures": 0}
    # rows beyond one per user, per snapshot (n_unique of a plain column, not of a struct:
    # the struct version hashes ~25x slower)
    duplicates = scores.group_by("snapshot_date").agg(
        (pl.len() - pl.col("user_id").n_unique()).alias("extra")
    )
    stats = scores.select(
        pl.lit(int(duplicates["extra"].sum())).alias("duplicate_users"),
        (~pl.col(GROUP_COLUMN).is_in(list(rules.group_names)) | pl.col(GROUP_COLUMN).is_null())
        .sum()
        .alias("unknown_groups"),
        pl.any_horizontal(
            pl.col("recency_days").is_null() | (pl.col("recency_days") < 0),
            pl.col("frequency").is_null() | (pl.col("frequency") < 0),
            pl.col("monetary").is_null() | (pl.col("monetary") < 0) | pl.col("monetary").is_nan(),
        )
        .sum()
        .alias("negative_measures"),
    ).row(0, named=True)
    return {key: int(value) for key, value in stats.items()}


def group_distribution(scores: pl.DataFrame, rules: RfmRules = DEFAULT_RULES) -> pl.DataFrame:
    """Users and share per group, every known group listed (in rule order), unknown ones last."""
    counts = scores.group_by(GROUP_COLUMN).agg(pl.len().cast(pl.Int64).alias("users"))
    return distribution_from_counts(counts, rules)


def distribution_from_counts(counts: pl.DataFrame, rules: RfmRules = DEFAULT_RULES) -> pl.DataFrame:
    """:func:`group_distribution` from a frame of (``rfm_group``, ``users``) counts."""
    order = pl.DataFrame(
        {GROUP_COLUMN: list(rules.group_names), "order": list(range(len(rules.group_names)))},
        schema={GROUP_COLUMN: pl.String, "order": pl.Int64},
    )
    counts = counts.select(pl.col(GROUP_COLUMN).cast(pl.String), pl.col("users").cast(pl.Int64))
    total = int(counts["users"].sum() or 0)
    return (
        order.join(counts, on=GROUP_COLUMN, how="full", coalesce=True)
        .with_columns(
            pl.col("users").fill_null(0),
            pl.col("order").fill_null(len(rules.group_names)),
        )
        .with_columns(
            (pl.col("users") / total if total else pl.lit(0.0)).cast(pl.Float64).alias("share")
        )
        .sort("order", GROUP_COLUMN)
        .select(GROUP_COLUMN, "users", "share")
    )


def distribution_shift(previous: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """Per group: previous share, current share and the absolute change (share points 0..1).

    Both inputs are :func:`group_distribution` frames; the result is sorted by largest shift.
    """
    return (
        previous.select(GROUP_COLUMN, pl.col("share").alias("previous_share"))
        .join(current.select(GROUP_COLUMN, "share"), on=GROUP_COLUMN, how="full", coalesce=True)
        .with_columns(pl.col("previous_share", "share").fill_null(0.0))
        .with_columns((pl.col("share") - pl.col("previous_share")).abs().alias("shift"))
        .sort("shift", GROUP_COLUMN, descending=[True, False])
    )


def markdown_bar_chart(distribution: pl.DataFrame, width: int = 30) -> str:
    """A Markdown bar chart of a :func:`group_distribution` frame (unicode blocks)."""
    blocks = " ▏▎▍▌▋▊▉"
    rows = distribution.to_dicts()
    label_width = max((len(str(row[GROUP_COLUMN])) for row in rows), default=5)
    lines = []
    for row in rows:
        eighths = round(float(row["share"]) * width * 8)
        bar = "█" * (eighths // 8) + (blocks[eighths % 8].strip() if eighths % 8 else "")
        label = str(row[GROUP_COLUMN]).ljust(label_width)
        lines.append(f"{label} │{bar.ljust(width)}│ {row['share']:6.1%} {row['users']:>9,}")
    return "```\n" + "\n".join(lines) + "\n```"
