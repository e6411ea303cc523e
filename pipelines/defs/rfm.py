"""Dagster wiring of the daily RFM chain (asset group ``rfm``), SPEC §7 and §9.

``user_actions`` -> ``user_daily_activity`` (per user and UTC day) -> ``rfm_scores``
(snapshot D from the 30 daily aggregates of its window plus each user's latest event
date) -> ``user_segments`` (publishes the newest snapshot). ``site_visits_lake`` exports
site visits to the lake. Every asset shares :data:`daily_partitions` and handles a whole
partition range in one run (``BackfillPolicy.single_run()``), replacing its window in
one transaction; daily assets also write their Parquet partitions to the lake.

``rfm_daily_schedule`` builds the previous day at 02:00 UTC; ``rfm_late_data_sensor``
rebuilds partitions that events ingested late have made stale (see
:mod:`pipelines.rfm_staleness`).
"""

import datetime as dt
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
import polars as pl

from pipelines.defs.resources import LakeResource, PostgresResource
from pipelines.domain.rfm import (
    DAILY_ACTIVITY_SCHEMA,
    DEFAULT_RULES,
    EVENTS_SCHEMA,
    LAST_EVENT_SCHEMA,
    SCORES_SCHEMA,
    RfmRules,
    daily_activity,
    distribution_from_counts,
    distribution_shift,
    group_distribution,
    markdown_bar_chart,
    snapshot_violations,
)
from pipelines.domain.rfm import (
    rfm_scores as compute_rfm_scores,
)
from pipelines.lake import DATASETS, read_partition, write_partition
from pipelines.rfm_staleness import Build, find_stale
from pipelines.rfm_store import (
    DAILY_ACTIVITY_ASSET,
    RFM_SCORES_ASSET,
    RfmStore,
    days_between,
    new_build_ids,
)
from pipelines.settings import Settings

GROUP = "rfm"
DEFAULT_START_DATE = Settings.model_fields["rfm_start_date"].default
DEFAULT_MAX_SHARE_SHIFT = 0.10
LATE_DATA_TAG = "cc/rfm"


def rfm_start_date() -> dt.date:
    """First daily partition: ``RFM_START_DATE`` (ISO date), else the settings default."""
    raw = os.environ.get("RFM_START_DATE", "").strip()
    if not raw:
        return DEFAULT_START_DATE
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"RFM_START_DATE is malformed: {raw!r} is not a YYYY-MM-DD date") from None


def _build_partitions() -> dg.DailyPartitionsDefinition:
    # end_offset=0: the partition for day D exists once D has ended (UTC), so "today" is
    # never built while its events are still arriving.
    return dg.DailyPartitionsDefinition(
        start_date=rfm_start_date().isoformat(), timezone="UTC", end_offset=0
    )


daily_partitions = _build_partitions()


def _range(context: dg.AssetExecutionContext) -> tuple[dt.date, dt.date]:
    """The run's partitions as an inclusive range of UTC dates."""
    window = context.partition_time_window
    first = window.start.date()
    last = window.end.date() - dt.timedelta(days=1)
    return first, last


def _store(postgres: PostgresResource) -> RfmStore:
    return RfmStore(postgres.dsn)


def _by_day(frame: pl.DataFrame, column: str) -> dict[dt.date, pl.DataFrame]:
    parts = frame.partition_by(column, as_dict=True, maintain_order=True)
    return {key[0]: part for key, part in parts.items()}  # type: ignore[misc]


# --------------------------------------------------------------------------------------
# user_daily_activity
# --------------------------------------------------------------------------------------
@dg.asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    deps=[dg.AssetKey("user_actions")],
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"polars", "postgres", "parquet"},
    description=(
        "Per user and UTC day: events, spent tokens (SPEND_CYBER_TOKENS) and the last event "
        "time, from user_actions (ADBC -> Arrow -> Polars), loaded back into fresh day "
        "partitions (binary COPY) swapped in one transaction per run. Also writes the day's "
        "raw events and aggregate to the lake (user_actions/event_date=YYYY-MM-DD, "
        "user_daily_activity/activity_date=YYYY-MM-DD)."
    ),
)
def user_daily_activity(
    context: dg.AssetExecutionContext, postgres: PostgresResource, lake: LakeResource
) -> dg.MaterializeResult:
    first, last = _range(context)
    store = _store(postgres)
    watermark = store.source_watermark()
    build_ids = new_build_ids(first, last)
    lake_events: dict[dt.date, int] = {}

    def per_day() -> Iterator[pl.DataFrame]:
        # day by day: bounded memory; reads run ahead on worker threads while each day is
        # aggregated, written to the lake and loaded into the (still open) transaction
        for day, events in store.iter_events_by_day(days_between(first, last)):
            activity = daily_activity(events.lazy().select(list(EVENTS_SCHEMA))).collect(
                engine="streaming"
            )
            write_partition(lake.root, DATASETS["user_actions"], day, events)
            write_partition(
                lake.root,
                DATASETS["user_daily_activity"],
                day,
                activity,
                build_id=build_ids[day],
            )
            lake_events[day] = events.height
            yield activity

    counts = store.replace_daily_activity(
        first, last, per_day(), watermark=watermark, run_id=context.run.run_id, build_ids=build_ids
    )
    n_events, n_rows = sum(lake_events.values()), sum(counts.values())
    for day in days_between(first, last):
        context.add_asset_metadata(
            {
                "dagster/row_count": dg.MetadataValue.int(counts[day]),
                "events": dg.MetadataValue.int(lake_events[day]),
                "source_watermark": dg.MetadataValue.text(watermark.isoformat()),
            },
            partition_key=day.isoformat(),
        )
    context.log.info(
        "user_daily_activity %s..%s: %s events -> %s rows", first, last, n_events, n_rows
    )
    return dg.MaterializeResult(
        metadata={
            "run_rows": dg.MetadataValue.int(n_rows),
            "run_events": dg.MetadataValue.int(n_events),
        }
    )


# --------------------------------------------------------------------------------------
# rfm_scores
# --------------------------------------------------------------------------------------
class RfmScoresConfig(dg.Config):
    """Run config of ``rfm_scores``; defaults come from ``pipelines.domain.rfm.DEFAULT_RULES``."""

    thresholds: dict[str, dict[str, float]] = {}
    """Bound overrides per group, e.g. ``{"Whale": {"min_frequency": 40}}``."""
    max_group_share_shift: float = DEFAULT_MAX_SHARE_SHIFT
    """Warn when a group's share moves more than this (0..1) from the previous snapshot."""

    def rules(self) -> RfmRules:
        return DEFAULT_RULES.with_thresholds(self.thresholds) if self.thresholds else DEFAULT_RULES


CHECK_ONE_ROW = "one_row_per_user"
CHECK_GROUPS = "groups_in_known_set"
CHECK_NON_NEGATIVE = "no_negative_measures"
CHECK_SHIFT = "group_share_shift"

_SCORES_CHECKS = [
    dg.AssetCheckSpec(
        CHECK_ONE_ROW,
        asset="rfm_scores",
        blocking=True,
        description="Exactly one row per (snapshot_date, user); blocks publishing.",
    ),
    dg.AssetCheckSpec(
        CHECK_GROUPS,
        asset="rfm_scores",
        blocking=True,
        description="Every rfm_group is one of the rule table's groups; blocks publishing.",
    ),
    dg.AssetCheckSpec(
        CHECK_NON_NEGATIVE,
        asset="rfm_scores",
        blocking=True,
        description="recency_days, frequency and monetary are >= 0; blocks publishing.",
    ),
    dg.AssetCheckSpec(
        CHECK_SHIFT,
        asset="rfm_scores",
        description=(
            "WARN when a group's share moves more than max_group_share_shift from the "
            "previous snapshot."
        ),
    ),
]


@dg.asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    deps=[
        dg.AssetDep(
            user_daily_activity,
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-(DEFAULT_RULES.window_days - 1),
                allow_nonexistent_upstream_partitions=True,
            ),
        )
    ],
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=_SCORES_CHECKS,
    kinds={"polars", "postgres", "parquet"},
    description=(
        "Daily RFM snapshot (SPEC §7): one row per user with an event before D+1; "
        "recency, 30-day frequency and monetary, and the rule table's group. Computed in "
        "Polars lazy frames from the window's daily aggregates and each user's latest "
        "event date. Also written to the lake (rfm_scores/snapshot_date=YYYY-MM-DD)."
    ),
)
def rfm_scores(
    context: dg.AssetExecutionContext,
    config: RfmScoresConfig,
    postgres: PostgresResource,
    lake: LakeResource,
) -> dg.MaterializeResult:
    first, last = _range(context)
    rules = config.rules()
    store = _store(postgres)
    watermark = store.source_watermark()
    build_ids = new_build_ids(first, last)
    scores, carried = build_scores(
        store, first, last, rules, start_date=rfm_start_date(), lake_root=lake.root, log=context.log
    )
    totals = {"duplicate_users": 0, "unknown_groups": 0, "negative_measures": 0}
    per_day_violations: dict[str, dict[str, int]] = {}
    shifts: dict[str, float] = {}
    # the Postgres write (COPY) runs while the lake files, checks and metadata are made
    with ThreadPoolExecutor(max_workers=1) as pool:
        written = pool.submit(
            store.replace_scores,
            first,
            last,
            scores,
            watermark=watermark,
            run_id=context.run.run_id,
            prior_snapshot=carried,
            build_ids=build_ids,
        )
        previous_date, previous_counts = store.previous_group_counts(first)
        previous = (
            distribution_from_counts(previous_counts, rules) if previous_date is not None else None
        )
        by_day = _by_day(scores, "snapshot_date")
        for day in days_between(first, last):
            snapshot = by_day.get(day, scores.head(0))
            write_partition(
                lake.root, DATASETS["rfm_scores"], day, snapshot, build_id=build_ids[day]
            )
            violations = snapshot_violations(snapshot, rules)
            per_day_violations[day.isoformat()] = violations
            for key, value in violations.items():
                totals[key] += value
            distribution = group_distribution(snapshot, rules)
            max_shift = None
            if previous is not None:
                shift = distribution_shift(previous, distribution)
                max_shift = float(shift["shift"].max() or 0.0)
                shifts[day.isoformat()] = max_shift
            context.add_asset_metadata(
                _snapshot_metadata(day, snapshot.height, distribution, rules, config, max_shift),
                partition_key=day.isoformat(),
            )
            previous = distribution
        written.result()
    context.log.info(
        "rfm_scores %s..%s: %s rows; latest event dates before the run from %s",
        first,
        last,
        scores.height,
        f"snapshot {carried}" if carried else "user_actions",
    )

    threshold = config.max_group_share_shift
    shifted = {day: value for day, value in shifts.items() if value > threshold}
    check_meta = {"snapshots": dg.MetadataValue.json(per_day_violations)}
    return dg.MaterializeResult(
        metadata={"run_rows": dg.MetadataValue.int(scores.height)},
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_ONE_ROW,
                passed=totals["duplicate_users"] == 0,
                metadata={"duplicate_rows": totals["duplicate_users"], **check_meta},
            ),
            dg.AssetCheckResult(
                check_name=CHECK_GROUPS,
                passed=totals["unknown_groups"] == 0,
                metadata={
                    "rows_with_unknown_group": totals["unknown_groups"],
                    "known_groups": dg.MetadataValue.json(list(rules.group_names)),
                },
            ),
            dg.AssetCheckResult(
                check_name=CHECK_NON_NEGATIVE,
                passed=totals["negative_measures"] == 0,
                metadata={"rows_with_negative_measure": totals["negative_measures"]},
            ),
            dg.AssetCheckResult(
                check_name=CHECK_SHIFT,
                passed=not shifted,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "max_group_share_shift": threshold,
                    "previous_snapshot": str(previous_date),
                    "largest_shift_per_snapshot": dg.MetadataValue.json(shifts),
                    "snapshots_over_threshold": dg.MetadataValue.json(sorted(shifted)),
                },
            ),
        ],
    )


def build_scores(
    store: RfmStore,
    first: dt.date,
    last: dt.date,
    rules: RfmRules,
    *,
    start_date: dt.date,
    lake_root: str | None = None,
    log: Any = None,
) -> tuple[pl.DataFrame, dt.date | None]:
    """Snapshots ``first..last`` from the stored daily aggregates; returns the prior used.

    Each user's latest event date before the run comes from the stored snapshot of
    ``first - 1`` when it exists (``snapshot - recency_days``: it covers every event before
    ``first``; a stale one is itself rebuilt by the late-data sensor, and so is everything
    carried from it), else from one aggregate query over ``user_actions``. Window days whose
    aggregate is not built (or that precede the first partition) are aggregated on the fly
    from ``user_actions`` (not stored), so a snapshot is right even when its window has not
    been backfilled.

    Built days are read from the lake when the day's Parquet file carries the build id
    Postgres recorded for it (the same rows, without a round trip through Postgres), else
    from Postgres; the Postgres reads run concurrently.
    """
    window_first = rules.window_start(first)
    previous = first - dt.timedelta(days=1)
    previous_build = (
        store.built_days(RFM_SCORES_ASSET, previous, previous) if previous >= start_date else {}
    )
    carried = previous if previous in previous_build else None
    built = store.built_days(DAILY_ACTIVITY_ASSET, window_first, last)
    activity_schema = pl.Schema(
        {c: t for c, t in DAILY_ACTIVITY_SCHEMA.items() if c != "last_event_at"}
    )
    activity_columns = list(activity_schema)

    def from_lake(
        dataset: str, day: dt.date, build_id: str | None, columns: list[str]
    ) -> pl.LazyFrame | None:
        if lake_root is None or build_id is None:
            return None
        return read_partition(lake_root, DATASETS[dataset], day, build_id=build_id, columns=columns)

    lake_days = {
        day: frame
        for day, build_id in built.items()
        if (frame := from_lake("user_daily_activity", day, build_id, activity_columns)) is not None
    }
    lake_prior = (
        from_lake("rfm_scores", previous, previous_build[previous], ["user_id", "recency_days"])
        if carried
        else None
    )
    postgres_days = sorted(set(built) - set(lake_days))
    with ThreadPoolExecutor(max_workers=2) as pool:
        prior_future = (
            pool.submit(
                store.read_snapshot_last_events if carried else store.read_last_event_before,
                carried or window_first,
            )
            if lake_prior is None
            else None
        )
        stored = [
            store.read_daily_activity(a, b, with_last_event_at=False)
            for a, b in _spans(postgres_days)
        ]
        activity = pl.concat(
            [
                *(frame.cast(activity_schema) for frame in lake_days.values()),
                *(frame.lazy() for frame in stored),
            ]
            or [pl.LazyFrame(schema=activity_schema)]
        ).collect()
        if prior_future is not None:
            prior = prior_future.result()
        else:
            assert lake_prior is not None and carried is not None
            prior = lake_prior.select(
                "user_id",
                (pl.lit(carried) - pl.duration(days="recency_days"))
                .cast(pl.Date)
                .alias("last_event_date"),
            ).collect()
    if log is not None and lake_days:
        log.info(
            "read %s window day(s) from the lake, %s from Postgres; prior from %s",
            len(lake_days),
            len(postgres_days),
            "the lake" if prior_future is None else "Postgres",
        )
    missing = [day for day in days_between(window_first, last) if day not in built]
    if missing:
        if log is not None:
            log.info("aggregating %s window day(s) without a built aggregate", len(missing))
        extra = pl.collect_all(
            [
                daily_activity(store.read_events(a, b).lazy().select(list(EVENTS_SCHEMA)))
                for a, b in _spans(missing)
            ]
        )
        activity = pl.concat(
            [
                activity.filter(~pl.col("activity_date").is_in(missing)),
                *[frame.select(activity.columns) for frame in extra],
            ]
        )

    frames = []
    lazy_activity = activity.lazy()
    for day in days_between(first, last):
        earlier = lazy_activity.filter(pl.col("activity_date") < rules.window_start(day)).select(
            "user_id", pl.col("activity_date").alias("last_event_date")
        )
        day_prior = pl.concat([prior.lazy(), earlier]).cast(dict(LAST_EVENT_SCHEMA))
        frames.append(compute_rfm_scores(lazy_activity, day_prior, day, rules))
    scores = (
        pl.concat(pl.collect_all(frames, engine="streaming"))
        if frames
        else pl.DataFrame(schema=SCORES_SCHEMA)
    )
    return scores, carried


def _spans(days: list[dt.date]) -> list[tuple[dt.date, dt.date]]:
    spans: list[tuple[dt.date, dt.date]] = []
    for day in sorted(days):
        if spans and (day - spans[-1][1]).days == 1:
            spans[-1] = (spans[-1][0], day)
        else:
            spans.append((day, day))
    return spans


def _snapshot_metadata(
    day: dt.date,
    rows: int,
    distribution: pl.DataFrame,
    rules: RfmRules,
    config: RfmScoresConfig,
    max_shift: float | None,
) -> dict[str, Any]:
    table = dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "rfm_group": row["rfm_group"],
                    "users": int(row["users"]),
                    "share_pct": round(100 * float(row["share"]), 2),
                }
            )
            for row in distribution.iter_rows(named=True)
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("rfm_group", "string"),
                dg.TableColumn("users", "int"),
                dg.TableColumn("share_pct", "float"),
            ]
        ),
    )
    metadata: dict[str, Any] = {
        "snapshot_date": dg.MetadataValue.text(day.isoformat()),
        "dagster/row_count": dg.MetadataValue.int(rows),
        "group_distribution": table,
        "group_chart": dg.MetadataValue.md(
            f"**RFM groups on {day.isoformat()}** ({rows:,} users)\n\n"
            + markdown_bar_chart(distribution)
        ),
        "thresholds": dg.MetadataValue.json(rules.as_dict()),
        "max_group_share_shift": dg.MetadataValue.float(config.max_group_share_shift),
    }
    for row in distribution.iter_rows(named=True):
        key = "users_" + str(row["rfm_group"]).lower().replace(" ", "_")
        metadata[key] = dg.MetadataValue.int(int(row["users"]))
    if max_shift is not None:
        metadata["largest_share_shift"] = dg.MetadataValue.float(round(max_shift, 4))
    return metadata


# --------------------------------------------------------------------------------------
# user_segments (publish)
# --------------------------------------------------------------------------------------
@dg.asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    deps=[rfm_scores],
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"postgres"},
    description=(
        "Publishes the newest snapshot to user_segments in one transaction: the next table "
        "is built from the snapshot's rfm_scores rows joined with the current one "
        "(risk_profile and users outside the snapshot carried over) and swapped in. A run "
        "whose last partition is older than the newest snapshot (a backfill) publishes "
        "nothing. Skipped when a blocking check of rfm_scores failed."
    ),
)
def user_segments(
    context: dg.AssetExecutionContext, postgres: PostgresResource
) -> dg.MaterializeResult:
    first, last = _range(context)
    result = _store(postgres).publish(last)
    if result["published"]:
        context.log.info(
            "published snapshot %s: %s snapshot rows, %s rows kept from before",
            last,
            result["rows"],
            result["kept"],
        )
    else:
        context.log.info("snapshot %s not published: %s", last, result["reason"])
    metadata: dict[str, Any] = {
        "published": dg.MetadataValue.bool(bool(result["published"])),
        "published_snapshot": dg.MetadataValue.text(result["newest_snapshot"]),
        "run_range": dg.MetadataValue.text(f"{first}..{last}"),
    }
    if result["published"]:
        metadata["dagster/row_count"] = dg.MetadataValue.int(result["written"])
        metadata["snapshot_rows"] = dg.MetadataValue.int(result["rows"])
        metadata["rows_kept_from_before"] = dg.MetadataValue.int(result["kept"])
    else:
        metadata["reason"] = dg.MetadataValue.text(result["reason"])
    return dg.MaterializeResult(metadata=metadata)


# --------------------------------------------------------------------------------------
# site_visits_lake
# --------------------------------------------------------------------------------------
@dg.asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"postgres", "parquet"},
    description="Site visits of each UTC day, exported to the lake (site_visits/visit_date=...).",
)
def site_visits_lake(
    context: dg.AssetExecutionContext, postgres: PostgresResource, lake: LakeResource
) -> dg.MaterializeResult:
    first, last = _range(context)
    visits = _store(postgres).read_site_visits(first, last)
    by_day = _by_day(visits.with_columns(pl.col("visit_timestamp").dt.date().alias("d")), "d")
    for day in days_between(first, last):
        frame = by_day.get(day, visits.head(0)).drop("d", strict=False)
        write_partition(lake.root, DATASETS["site_visits"], day, frame)
        context.add_asset_metadata(
            {"dagster/row_count": dg.MetadataValue.int(frame.height)},
            partition_key=day.isoformat(),
        )
    return dg.MaterializeResult(metadata={"run_rows": dg.MetadataValue.int(visits.height)})


# --------------------------------------------------------------------------------------
# job, schedule, late-data sensor
# --------------------------------------------------------------------------------------
rfm_daily_job = dg.define_asset_job(
    "rfm_daily_job",
    selection=dg.AssetSelection.groups(GROUP),
    partitions_def=daily_partitions,
    description="The daily RFM chain for one day or a range of days (one run).",
)

rfm_daily_schedule = dg.build_schedule_from_partitioned_job(
    rfm_daily_job,
    name="rfm_daily_schedule",
    hour_of_day=2,
    minute_of_hour=0,
    description="02:00 UTC: build the previous UTC day's snapshot and publish it.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _parse_cursor(raw: str | None) -> tuple[dt.datetime | None, dict[dt.date, dt.datetime]]:
    if not raw:
        return None, {}
    data = json.loads(raw)
    since = dt.datetime.fromisoformat(data["since"]) if data.get("since") else None
    pending = {
        dt.date.fromisoformat(day): dt.datetime.fromisoformat(value)
        for day, value in data.get("pending", {}).items()
    }
    return since, pending


def _dump_cursor(since: dt.datetime, pending: dict[dt.date, dt.datetime]) -> str:
    return json.dumps(
        {
            "since": since.isoformat(),
            "pending": {
                day.isoformat(): value.isoformat() for day, value in sorted(pending.items())
            },
        }
    )


@dg.sensor(
    name="rfm_late_data_sensor",
    job=rfm_daily_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Events ingested after a daily partition was built make it stale: compares, per "
        "event day, the latest ingested_at with the builds' source watermarks and requests "
        "one run over the stale range (oldest day first, newest last, so the newest "
        "snapshot publishes last)."
    ),
)
def rfm_late_data_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource
) -> dg.SensorResult | dg.SkipReason:
    store = _store(postgres)
    since, pending = _parse_cursor(context.cursor)
    now_mark = store.source_watermark()
    builds = store.builds()
    activity = {
        b.partition_date: Build(b.source_watermark, b.built_at)
        for b in builds
        if b.asset == DAILY_ACTIVITY_ASSET
    }
    scores = {
        b.partition_date: Build(b.source_watermark, b.built_at, b.prior_snapshot)
        for b in builds
        if b.asset == RFM_SCORES_ASSET
    }
    if since is None:
        since = min((b.source_watermark for b in builds), default=now_mark)
    newest_built = max([*activity, *scores], default=None)
    for day, late in store.late_evidence(since).items():
        if newest_built is not None and day <= newest_built:
            pending[day] = max(late, pending.get(day, late))

    staleness = find_stale(pending, activity, scores, window_days=DEFAULT_RULES.window_days)
    cursor = _dump_cursor(now_mark, staleness.open_evidence)
    span = staleness.rebuild_range()
    if span is None:
        context.update_cursor(cursor)
        return dg.SkipReason("no stale RFM partitions")
    active = context.instance.get_runs(
        filters=dg.RunsFilter(tags={LATE_DATA_TAG: "late-data"}, statuses=_ACTIVE), limit=1
    )
    if active:
        context.update_cursor(cursor)
        return dg.SkipReason(
            f"stale {span[0]}..{span[1]}; waiting for rebuild run {active[0].run_id}"
        )
    context.log.info(
        "late data: stale daily aggregates %s, snapshots %s -> rebuilding %s..%s",
        sorted(d.isoformat() for d in staleness.stale_activity),
        sorted(d.isoformat() for d in staleness.stale_scores),
        span[0],
        span[1],
    )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                tags={
                    "dagster/asset_partition_range_start": span[0].isoformat(),
                    "dagster/asset_partition_range_end": span[1].isoformat(),
                    LATE_DATA_TAG: "late-data",
                    "cc/rfm-stale-days": ",".join(d.isoformat() for d in staleness.stale_days)[
                        :1000
                    ],
                },
            )
        ],
        cursor=cursor,
    )


defs = dg.Definitions(
    assets=[user_daily_activity, rfm_scores, user_segments, site_visits_lake],
    jobs=[rfm_daily_job],
    schedules=[rfm_daily_schedule],
    sensors=[rfm_late_data_sensor],
)
