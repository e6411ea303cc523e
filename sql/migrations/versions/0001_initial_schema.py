"""Initial schema: every table of SPEC §5 with indexes for the access paths.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "user_actions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("action_type", sa.String(64), nullable=False),
        sa.Column("action_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "metadata", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("kafka_topic", sa.Text, nullable=False),
        sa.Column("kafka_partition", sa.Integer, nullable=False),
        sa.Column("kafka_offset", sa.BigInteger, nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("id", name="pk_user_actions"),
        sa.UniqueConstraint(
            "kafka_topic",
            "kafka_partition",
            "kafka_offset",
            name="uq_user_actions_kafka_position",
        ),
    )
    op.create_index("ix_user_actions_action_timestamp", "user_actions", ["action_timestamp"])
    op.create_index(
        "ix_user_actions_user_id_action_timestamp", "user_actions", ["user_id", "action_timestamp"]
    )
    op.create_index("ix_user_actions_ingested_at", "user_actions", ["ingested_at"])

    op.create_table(
        "user_actions_dead_letter",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("kafka_topic", sa.Text, nullable=False),
        sa.Column("kafka_partition", sa.Integer, nullable=False),
        sa.Column("kafka_offset", sa.BigInteger, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("id", name="pk_user_actions_dead_letter"),
        sa.UniqueConstraint(
            "kafka_topic",
            "kafka_partition",
            "kafka_offset",
            name="uq_user_actions_dead_letter_kafka_position",
        ),
    )

    op.create_table(
        "kafka_offsets",
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("consumer", "topic", "partition", name="pk_kafka_offsets"),
        sa.CheckConstraint("next_offset >= 0", name="ck_kafka_offsets_next_offset_non_negative"),
    )

    op.create_table(
        "site_visits",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column(
            "visit_timestamp", sa.DateTime(timezone=True), nullable=False, server_default=_NOW
        ),
        sa.PrimaryKeyConstraint("id", name="pk_site_visits"),
    )
    op.create_index("ix_site_visits_visit_timestamp", "site_visits", ["visit_timestamp"])
    op.create_index("ix_site_visits_user_id", "site_visits", ["user_id"])

    op.create_table(
        "rfm_scores",
        sa.Column("snapshot_date", sa.Date, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("recency_days", sa.Integer, nullable=False),
        sa.Column("frequency", sa.Integer, nullable=False),
        sa.Column("monetary", sa.Double, nullable=False),
        sa.Column("rfm_group", sa.String(32), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("snapshot_date", "user_id", name="pk_rfm_scores"),
    )

    op.create_table(
        "user_segments",
        sa.Column("user_id", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("rfm_group", sa.String(32), nullable=True),
        sa.Column("risk_profile", sa.String(32), nullable=True),
        sa.Column("recency_days", sa.Integer, nullable=True),
        sa.Column("frequency", sa.Integer, nullable=True),
        sa.Column("monetary", sa.Double, nullable=True),
        sa.Column("snapshot_date", sa.Date, nullable=True),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("user_id", name="pk_user_segments"),
    )


def downgrade() -> None:
    op.drop_table("user_segments")
    op.drop_table("rfm_scores")
    op.drop_index("ix_site_visits_user_id", table_name="site_visits")
    op.drop_index("ix_site_visits_visit_timestamp", table_name="site_visits")
    op.drop_table("site_visits")
    op.drop_table("kafka_offsets")
    op.drop_table("user_actions_dead_letter")
    op.drop_index("ix_user_actions_ingested_at", table_name="user_actions")
    op.drop_index("ix_user_actions_user_id_action_timestamp", table_name="user_actions")
    op.drop_index("ix_user_actions_action_timestamp", table_name="user_actions")
    op.drop_table("user_actions")
