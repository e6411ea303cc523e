"""SQLAlchemy Core metadata of the application database (SPEC §5); Alembic's target.

Alembic owns the schema: migrations under `sql/migrations/versions` create these
tables; this module documents them in code and gives tests a typed handle.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

user_actions = Table(
    "user_actions",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("user_id", BigInteger, nullable=False),
    Column("action_type", String(64), nullable=False),
    Column("action_timestamp", DateTime(timezone=True), nullable=False),
    Column("metadata", JSONB, nullable=False, server_default="{}"),
    Column("kafka_topic", Text, nullable=False),
    Column("kafka_partition", Integer, nullable=False),
    Column("kafka_offset", BigInteger, nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint(
        "kafka_topic", "kafka_partition", "kafka_offset", name="uq_user_actions_kafka_position"
    ),
    Index("ix_user_actions_action_timestamp", "action_timestamp"),
    Index("ix_user_actions_user_id_action_timestamp", "user_id", "action_timestamp"),
    Index("ix_user_actions_ingested_at", "ingested_at"),
)

user_actions_dead_letter = Table(
    "user_actions_dead_letter",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("kafka_topic", Text, nullable=False),
    Column("kafka_partition", Integer, nullable=False),
    Column("kafka_offset", BigInteger, nullable=False),
    Column("raw", LargeBinary, nullable=True),
    Column("error", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint(
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        name="uq_user_actions_dead_letter_kafka_position",
    ),
)

kafka_offsets = Table(
    "kafka_offsets",
    metadata,
    Column("consumer", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("consumer", "topic", "partition"),
    CheckConstraint("next_offset >= 0", name="next_offset_non_negative"),
)

site_visits = Table(
    "site_visits",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("user_id", BigInteger, nullable=False),
    Column("source", String(64), nullable=False),
    Column("visit_timestamp", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_site_visits_visit_timestamp", "visit_timestamp"),
    Index("ix_site_visits_user_id", "user_id"),
)

# rfm_scores and user_daily_activity are PARTITION BY LIST on their date (one partition
# per day plus a default one; migration 0004): SQLAlchemy Core describes the parent.
rfm_scores = Table(
    "rfm_scores",
    metadata,
    Column("snapshot_date", Date, nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("recency_days", Integer, nullable=False),
    Column("frequency", Integer, nullable=False),
    Column("monetary", Double, nullable=False),
    Column("rfm_group", String(32), nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("snapshot_date", "user_id"),
)

user_segments = Table(
    "user_segments",
    metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("rfm_group", String(32), nullable=True),
    Column("risk_profile", String(32), nullable=True),
    Column("recency_days", Integer, nullable=True),
    Column("frequency", Integer, nullable=True),
    Column("monetary", Double, nullable=True),
    Column("snapshot_date", Date, nullable=True),
    Column("last_updated", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# RFM daily chain (migration 0003)
user_daily_activity = Table(
    "user_daily_activity",
    metadata,
    Column("activity_date", Date, nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("event_count", Integer, nullable=False),
    Column("spent_tokens", Double, nullable=False),
    Column("last_event_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("activity_date", "user_id"),
)

rfm_partition_builds = Table(
    "rfm_partition_builds",
    metadata,
    Column("asset", Text, nullable=False),
    Column("partition_date", Date, nullable=False),
    Column("source_watermark", DateTime(timezone=True), nullable=False),
    Column("row_count", BigInteger, nullable=False),
    Column("built_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("run_id", Text, nullable=True),
    Column("prior_snapshot", Date, nullable=True),
    Column("group_counts", JSONB, nullable=True),
    PrimaryKeyConstraint("asset", "partition_date"),
)
