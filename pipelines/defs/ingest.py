"""Dagster wiring of ingestion (asset group ``ingestion``), SPEC §6.

- asset ``user_actions``: one run drains the Kafka topic (or the partition subset of its
  config) into Postgres exactly once, up to the log end seen at start or its budget, with
  :func:`pipelines.ingest.kafka_to_postgres.ingest`; metadata: records read, rows
  written, dead letters, per-partition lag after the run, throughput.
- checks: ``dead_letter_share`` (WARN, in the run: dead letters above a share of the
  records read) and ``offsets_contiguous`` (ERROR: per partition, rows + dead letters
  cover exactly [first offset, stored next_offset) with no gap, overlap or row beyond).
- job ``user_actions_ingest_job`` and sensor ``kafka_ingest_sensor`` (running by default,
  every 30 s): a run is requested when some partition lags and no ingestion run is queued
  or in progress. Runs carry the ``cc/ingest`` tag, which the QueuedRunCoordinator limits
  to one run per partition set (``dagster.yaml``), and ``dagster/max_runtime``, so run
  monitoring fails a run whose worker vanished with its machine; a killed run process is
  failed by the code server at once.
"""

import dagster as dg
from pydantic import Field

from pipelines.defs.resources import KafkaResource, PostgresResource
from pipelines.ingest.kafka_to_postgres import (
    DEFAULT_CONSUMER,
    IngestConfig,
    IngestionError,
    IngestReport,
    ingest,
    measure_lag,
)

GROUP = "ingestion"
INGEST_TAG = "cc/ingest"
ALL_PARTITIONS = "all"
DEFAULT_MAX_SECONDS = 300.0
#: run monitoring fails a run still STARTED after this long (its worker is gone)
MAX_RUNTIME_SECONDS = int(DEFAULT_MAX_SECONDS) + 300
DEAD_LETTER_SHARE_CHECK = "dead_letter_share"
CONTIGUOUS_CHECK = "offsets_contiguous"

_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


class IngestRunConfig(dg.Config):
    """Run config of ``user_actions`` (all optional)."""

    partitions: list[int] | None = Field(
        default=None,
        description="Kafka partitions this run owns (default: all). Runs on several "
        "machines split a topic by owning disjoint sets.",
    )
    max_records: int | None = Field(
        default=None, ge=0, description="Stop after this many records (default: no limit)."
    )
    max_seconds: float | None = Field(
        default=DEFAULT_MAX_SECONDS,
        gt=0,
        description="Stop after this many seconds; the next sensor tick continues.",
    )
    batch_records: int = Field(
        default=50_000, ge=1, description="Records per Postgres transaction (at most)."
    )
    writers: int = Field(
        default=2, ge=1, le=16, description="Parallel Postgres writer connections."
    )
    max_dead_letter_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="The dead_letter_share check warns above this share of the records read.",
    )
    mirror_group_id: str | None = Field(
        default="cc-analytics-ingest",
        description="Kafka consumer group the stored offsets are mirrored to after each "
        "commit (lag dashboards only; never read back). None disables it.",
    )


def partition_set_tag(partitions: list[int] | None) -> str:
    """The ``cc/ingest`` tag value of a partition set ("all" or "0,1,2")."""
    if partitions is None:
        return ALL_PARTITIONS
    return ",".join(str(p) for p in sorted(set(partitions)))


def _lag_table(report: IngestReport) -> str:
    lines = [
        "| partition | start | next offset | records | rows | dead letters | lag after |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p, part in sorted(report.partitions.items()):
        lines.append(
            f"| {p} | {part.start_offset} | {part.next_offset} | {part.records} | {part.rows}"
            f" | {part.dead_letters} | {part.lag_after} |"
        )
    return "\n".join(lines)


def _dead_letter_share_result(report: IngestReport, max_share: float) -> dg.AssetCheckResult:
    share = report.dead_letters / report.records_read if report.records_read else 0.0
    return dg.AssetCheckResult(
        check_name=DEAD_LETTER_SHARE_CHECK,
        passed=share <= max_share,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{report.dead_letters} of {report.records_read} records of this run were "
            f"dead-lettered ({share:.2%}; threshold {max_share:.2%})"
        ),
        metadata={
            "dead_letters": report.dead_letters,
            "records_read": report.records_read,
            "share": float(share),
            "threshold": float(max_share),
        },
    )


@dg.asset(
    name="user_actions",
    group_name=GROUP,
    kinds={"kafka", "postgres"},
    check_specs=[
        dg.AssetCheckSpec(
            DEAD_LETTER_SHARE_CHECK,
            asset="user_actions",
            description="Dead letters stay below a share of the records each run reads (WARN).",
        )
    ],
    description=(
        "User actions from the Kafka topic, ingested exactly once: valid records become rows "
        "(COPY), invalid ones go to user_actions_dead_letter with raw bytes and reason, and "
        "kafka_offsets advances in the same transaction. A run drains up to the log end seen "
        "at its start or its budget."
    ),
)
def user_actions(
    context: dg.AssetExecutionContext,
    config: IngestRunConfig,
    postgres: PostgresResource,
    kafka: KafkaResource,
) -> dg.MaterializeResult:
    report = ingest(
        postgres.dsn,
        kafka.brokers,
        IngestConfig(
            topic=kafka.topic,
            consumer=DEFAULT_CONSUMER,
            partitions=None if config.partitions is None else frozenset(config.partitions),
            max_records=config.max_records,
            max_seconds=config.max_seconds,
            batch_records=config.batch_records,
            writers=config.writers,
            mirror_group_id=config.mirror_group_id,
        ),
        log=context.log,
    )
    lag = {str(p): v for p, v in report.lag_after.items()}
    return dg.MaterializeResult(
        metadata={
            "topic": kafka.topic,
            "records_read": report.records_read,
            "rows_written": report.rows_written,
            "dead_letters": report.dead_letters,
            "batches": report.batches,
            "seconds": float(round(report.seconds, 3)),
            "records_per_second": float(round(report.records_per_second, 1)),
            "stopped_by": report.stopped_by,
            "lag_after": sum(v or 0 for v in report.lag_after.values()),
            "lag_after_by_partition": dg.MetadataValue.json(lag),
            "partitions_owned": dg.MetadataValue.json(sorted(report.partitions)),
            "partitions_skipped": dg.MetadataValue.json(report.skipped_partitions),
            "partitions": dg.MetadataValue.md(_lag_table(report)),
            "timings_seconds": dg.MetadataValue.json(
                {k: round(v, 3) for k, v in report.timings.items()}
            ),
        },
        check_results=[_dead_letter_share_result(report, config.max_dead_letter_share)],
    )


# Per partition: stored next_offset, positions (rows + dead letters), distinct positions
# (each table is unique on its own; only a row and a dead letter can share a position),
# first and last position. Aggregates run on the (topic, partition, offset) unique indexes.
_CONTIGUITY_SQL = """
WITH rows AS (
    SELECT kafka_partition AS partition, count(*) AS n,
           min(kafka_offset) AS first_offset, max(kafka_offset) AS last_offset
    FROM user_actions WHERE kafka_topic = %(topic)s GROUP BY kafka_partition
), dead AS (
    SELECT kafka_partition AS partition, count(*) AS n,
           min(kafka_offset) AS first_offset, max(kafka_offset) AS last_offset
    FROM user_actions_dead_letter WHERE kafka_topic = %(topic)s GROUP BY kafka_partition
), overlap AS (
    SELECT d.kafka_partition AS partition, count(*) AS n
    FROM user_actions_dead_letter d
    JOIN user_actions u ON u.kafka_topic = d.kafka_topic
        AND u.kafka_partition = d.kafka_partition AND u.kafka_offset = d.kafka_offset
    WHERE d.kafka_topic = %(topic)s GROUP BY d.kafka_partition
), stored AS (
    SELECT partition, next_offset FROM kafka_offsets
    WHERE consumer = %(consumer)s AND topic = %(topic)s
), parts AS (
    SELECT partition FROM rows UNION SELECT partition FROM dead
    UNION SELECT partition FROM stored
)
SELECT parts.partition, stored.next_offset,
       nullif(coalesce(rows.n, 0) + coalesce(dead.n, 0), 0) AS n,
       coalesce(rows.n, 0) + coalesce(dead.n, 0) - coalesce(overlap.n, 0) AS distinct_n,
       least(rows.first_offset, dead.first_offset) AS first_offset,
       greatest(rows.last_offset, dead.last_offset) AS last_offset
FROM parts
LEFT JOIN stored USING (partition)
LEFT JOIN rows USING (partition)
LEFT JOIN dead USING (partition)
LEFT JOIN overlap USING (partition)
ORDER BY parts.partition
"""


def contiguity_problems(
    rows: list[tuple[int, int | None, int | None, int | None, int | None, int | None]],
) -> list[str]:
    """Problems found in per-partition (next_offset, count, distinct, first, last) rows."""
    problems: list[str] = []
    for partition, next_offset, n, distinct_n, first, last in rows:
        if next_offset is None:
            problems.append(f"partition {partition}: rows without a stored offset")
            continue
        if n is None or first is None or last is None:
            continue  # an offset row without rows (e.g. nothing but control records)
        if distinct_n != n:
            problems.append(
                f"partition {partition}: {n - (distinct_n or 0)} offsets stored both as a row "
                "and as a dead letter"
            )
        if last >= next_offset:
            problems.append(
                f"partition {partition}: rows up to offset {last} beyond the stored "
                f"next_offset {next_offset}"
            )
        elif last + 1 != next_offset:
            problems.append(
                f"partition {partition}: stored next_offset {next_offset} but the last row is "
                f"at offset {last}"
            )
        holes = (last - first + 1) - (distinct_n or 0)
        if holes > 0:
            problems.append(
                f"partition {partition}: {holes} offsets missing between {first} and {last}"
            )
    return problems


@dg.asset_check(
    asset=user_actions,
    name=CONTIGUOUS_CHECK,
    description=(
        "Per partition, rows + dead letters cover exactly [first offset, stored next_offset): "
        "no gap, no position stored twice, nothing beyond the stored offset (ERROR)."
    ),
)
def offsets_contiguous(postgres: PostgresResource, kafka: KafkaResource) -> dg.AssetCheckResult:
    with postgres.connect() as conn:
        rows = conn.execute(
            _CONTIGUITY_SQL, {"topic": kafka.topic, "consumer": DEFAULT_CONSUMER}
        ).fetchall()
    problems = contiguity_problems(rows)
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems[:20]) if problems else "every partition is contiguous",
        metadata={
            "partitions": len(rows),
            "positions": sum(r[2] or 0 for r in rows),
            "problems": dg.MetadataValue.json(problems[:100]),
        },
    )


user_actions_ingest_job = dg.define_asset_job(
    name="user_actions_ingest_job",
    selection=dg.AssetSelection.assets(user_actions),
    tags={INGEST_TAG: ALL_PARTITIONS, "dagster/max_runtime": str(MAX_RUNTIME_SECONDS)},
    description="Ingest the whole topic once (launched by kafka_ingest_sensor).",
)


@dg.sensor(
    name="kafka_ingest_sensor",
    job=user_actions_ingest_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Requests an ingestion run when a partition of the topic lags behind the offsets "
        "stored in Postgres and no ingestion run is queued or in progress."
    ),
)
def kafka_ingest_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource, kafka: KafkaResource
) -> dg.RunRequest | dg.SkipReason:
    active = context.instance.get_runs(
        filters=dg.RunsFilter(tags={INGEST_TAG: ALL_PARTITIONS}, statuses=_ACTIVE), limit=1
    )
    if active:
        return dg.SkipReason(
            f"ingestion run {active[0].run_id} is {active[0].status.value.lower()}"
        )
    try:
        lag = measure_lag(postgres.dsn, kafka.brokers, kafka.topic, timeout_seconds=5)
    except IngestionError as exc:
        context.log.warning("cannot measure the lag of %s: %s", kafka.topic, exc)
        return dg.SkipReason(f"cannot measure the lag of {kafka.topic}: {exc}")
    lagging = {p: v.lag for p, v in sorted(lag.items()) if v.lag > 0}
    if not lagging:
        return dg.SkipReason(f"no lag on {kafka.topic}")
    total = sum(lagging.values())
    context.log.info("lag on %s: %s records %s", kafka.topic, total, lagging)
    return dg.RunRequest(
        tags={
            INGEST_TAG: ALL_PARTITIONS,
            "dagster/max_runtime": str(MAX_RUNTIME_SECONDS),
            "cc/ingest-lag": str(total),
        }
    )


defs = dg.Definitions(
    assets=[user_actions],
    asset_checks=[offsets_contiguous],
    jobs=[user_actions_ingest_job],
    sensors=[kafka_ingest_sensor],
)
