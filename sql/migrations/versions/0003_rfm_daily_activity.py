"""RFM daily chain: per-user daily activity, partition build log, publish-friendly fillfactor.

- ``user_daily_activity``: one row per (UTC day, user) - events, spent tokens of
  ``SPEND_CYBER_TOKENS`` events, last event time. Written by the daily asset
  ``user_daily_activity``, one day (or a backfill window) replaced per transaction.
- ``rfm_partition_builds``: one row per (asset, daily partition) built by the RFM chain,
  written in the same transaction as the data: when it was built, how many rows,
  ``source_watermark`` (every event ingested before it was visible to the build; the
  late-data sensor compares ``user_actions.ingested_at`` with it), the previous snapshot a
  snapshot carried users' latest event dates from (``prior_snapshot``), and a snapshot's
  users per group (``group_counts``).
- ``user_segments`` gets ``fillfactor = 50``: publishing updates every row once a day;
  free space on each page keeps those updates HOT (no index churn, no bloat).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "user_daily_activity",
        sa.Column("activity_date", sa.Date, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("spent_tokens", sa.Double, nullable=False),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("activity_date", "user_id", name="pk_user_daily_activity"),
    )
    op.create_table(
        "rfm_partition_builds",
        sa.Column("asset", sa.Text, nullable=False),
        sa.Column("partition_date", sa.Date, nullable=False),
        sa.Column("source_watermark", sa.DateTime(timezone=True), nullable=False),
        sa.Column("row_count", sa.BigInteger, nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("run_id", sa.Text, nullable=True),
        sa.Column("prior_snapshot", sa.Date, nullable=True),
        sa.Column("group_counts", postgresql.JSONB, nullable=True),
        sa.PrimaryKeyConstraint("asset", "partition_date", name="pk_rfm_partition_builds"),
    )
    op.execute("ALTER TABLE user_segments SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE user_segments RESET (fillfactor)")
    op.drop_table("rfm_partition_builds")
    op.drop_table("user_daily_activity")
