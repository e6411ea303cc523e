"""A log of the transactions that wrote ``user_segments``, so a publish prepared ahead can
tell whether the table changed since.

The daily publish prepares the next ``user_segments`` while ``rfm_scores`` is being
written (``RfmStore.prepare_publish``), from a REPEATABLE READ snapshot of the current
table. Statement-level triggers append the writing transaction's id to
``user_segments_writes`` (an insert: writers never wait for each other here); at publish
time, under the table lock, any logged transaction not visible to the preparing snapshot
means the prepared copy is stale, and the publish builds the next table afresh instead.
Each publish empties the log and logs itself.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE user_segments_writes (
            xact_id xid8 NOT NULL,
            written_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE FUNCTION user_segments_log_write() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO user_segments_writes (xact_id) VALUES (pg_current_xact_id());
            RETURN NULL;
        END
        $$;
        """
    )
    op.execute(
        """
        CREATE TRIGGER user_segments_log_write AFTER INSERT OR UPDATE OR DELETE
        ON user_segments FOR EACH STATEMENT EXECUTE FUNCTION user_segments_log_write();
        """
    )
    op.execute(
        """
        CREATE TRIGGER user_segments_log_truncate AFTER TRUNCATE
        ON user_segments FOR EACH STATEMENT EXECUTE FUNCTION user_segments_log_write();
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS user_segments_log_truncate ON user_segments")
    op.execute("DROP TRIGGER IF EXISTS user_segments_log_write ON user_segments")
    op.execute("DROP FUNCTION IF EXISTS user_segments_log_write()")
    op.execute("DROP TABLE IF EXISTS user_segments_writes")
