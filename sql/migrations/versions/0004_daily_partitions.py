"""Daily tables of the RFM chain become partitioned by day; builds get a build id.

- ``user_daily_activity`` (by ``activity_date``) and ``rfm_scores`` (by ``snapshot_date``)
  are ``PARTITION BY LIST`` with one partition per day, named ``<table>_pYYYYMMDD``, plus
  a ``<table>_default`` partition that catches rows written outside the pipeline. The
  pipeline replaces a day by loading a fresh table (binary COPY, no index), indexing it
  once, and swapping it in for the old partition in one transaction
  (:mod:`pipelines.rfm_store`): no per-row index maintenance, no dead tuples, and a
  reader sees the old day or the new one.
- ``rfm_partition_builds.build_id``: a fresh id per (asset, day) build, also written
  into the day's lake Parquet file, so the chain can tell whether a lake file holds
  exactly the build Postgres recorded.
- ``user_segments`` goes back to the default fillfactor: publishing swaps in a freshly
  built table instead of updating every row in place (migration 0003 had set 50).

Existing rows are moved into their day partitions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, partition column, column definitions, primary key name)
_TABLES = (
    (
        "user_daily_activity",
        "activity_date",
        """
        activity_date date NOT NULL,
        user_id bigint NOT NULL,
        event_count integer NOT NULL,
        spent_tokens double precision NOT NULL,
        last_event_at timestamptz NOT NULL
        """,
        "pk_user_daily_activity",
        "activity_date, user_id",
    ),
    (
        "rfm_scores",
        "snapshot_date",
        """
        snapshot_date date NOT NULL,
        user_id bigint NOT NULL,
        recency_days integer NOT NULL,
        frequency integer NOT NULL,
        monetary double precision NOT NULL,
        rfm_group varchar(32) NOT NULL,
        computed_at timestamptz NOT NULL DEFAULT now()
        """,
        "pk_rfm_scores",
        "snapshot_date, user_id",
    ),
)

# Same naming as pipelines.rfm_store.partition_name: <table>_pYYYYMMDD.
_MOVE_INTO_DAY_PARTITIONS = """
DO $$
DECLARE
    day date;
BEGIN
    FOR day IN SELECT DISTINCT {column} FROM {table}_unpartitioned ORDER BY 1 LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF {table} FOR VALUES IN (%L)',
            '{table}_p' || to_char(day, 'YYYYMMDD'), day
        );
    END LOOP;
END
$$;
"""


def upgrade() -> None:
    for table, column, columns, pk, key in _TABLES:
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_unpartitioned")
        op.execute(f"ALTER TABLE {table}_unpartitioned RENAME CONSTRAINT {pk} TO {pk}_old")
        op.execute(
            f"CREATE TABLE {table} ({columns}, CONSTRAINT {pk} PRIMARY KEY ({key})) "
            f"PARTITION BY LIST ({column})"
        )
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        op.execute(_MOVE_INTO_DAY_PARTITIONS.format(table=table, column=column))
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_unpartitioned")
        op.execute(f"DROP TABLE {table}_unpartitioned")
    op.add_column(
        "rfm_partition_builds", sa.Column("build_id", postgresql.UUID(as_uuid=True), nullable=True)
    )
    op.execute("ALTER TABLE user_segments RESET (fillfactor)")


def downgrade() -> None:
    op.execute("ALTER TABLE user_segments SET (fillfactor = 50)")
    op.drop_column("rfm_partition_builds", "build_id")
    for table, _column, columns, pk, key in _TABLES:
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_partitioned")
        op.execute(f"ALTER TABLE {table}_partitioned RENAME CONSTRAINT {pk} TO {pk}_old")
        op.execute(f"CREATE TABLE {table} ({columns}, CONSTRAINT {pk} PRIMARY KEY ({key}))")
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_partitioned")
        op.execute(f"DROP TABLE {table}_partitioned")
