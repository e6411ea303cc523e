"""Change notifications on user_segments for the API's online copy.

Statement-level triggers (with transition tables) send one NOTIFY per statement on channel
``user_segments_changed``: the changed user ids, comma-separated, when a statement touched
at most 100 of them, else ``*`` (reload everything; a daily publish). TRUNCATE sends
``*``. Notifications are delivered on commit, only for committed changes, and identical
payloads within one transaction are folded by Postgres.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "user_segments_changed"
MAX_IDS = 100

_FUNCTION = """
CREATE OR REPLACE FUNCTION user_segments_notify_{name}() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    ids text;
BEGIN
    SELECT count(*) INTO n FROM (SELECT 1 FROM {source} LIMIT {limit}) AS changed;
    IF n = 0 THEN
        RETURN NULL;
    ELSIF n > {max_ids} THEN
        PERFORM pg_notify('{channel}', '*');
    ELSE
        SELECT string_agg(DISTINCT user_id::text, ',') INTO ids FROM {source};
        PERFORM pg_notify('{channel}', ids);
    END IF;
    RETURN NULL;
END
$$;
"""


def upgrade() -> None:
    # INSERT: new rows; DELETE: old rows; UPDATE: both (a changed user_id moves a row)
    for name, source, limit, max_ids in (
        ("new", "new_rows", MAX_IDS + 1, MAX_IDS),
        ("old", "old_rows", MAX_IDS + 1, MAX_IDS),
        (
            "both",
            "(SELECT user_id FROM new_rows UNION ALL SELECT user_id FROM old_rows) AS both_rows",
            2 * MAX_IDS + 1,
            2 * MAX_IDS,
        ),
    ):
        op.execute(
            _FUNCTION.format(
                name=name, source=source, limit=limit, max_ids=max_ids, channel=CHANNEL
            )
        )
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION user_segments_notify_all() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '*');
            RETURN NULL;
        END
        $$;
        """
    )
    op.execute(
        """
        CREATE TRIGGER user_segments_notify_insert AFTER INSERT ON user_segments
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION user_segments_notify_new();
        """
    )
    op.execute(
        """
        CREATE TRIGGER user_segments_notify_update AFTER UPDATE ON user_segments
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION user_segments_notify_both();
        """
    )
    op.execute(
        """
        CREATE TRIGGER user_segments_notify_delete AFTER DELETE ON user_segments
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION user_segments_notify_old();
        """
    )
    op.execute(
        """
        CREATE TRIGGER user_segments_notify_truncate AFTER TRUNCATE ON user_segments
        FOR EACH STATEMENT EXECUTE FUNCTION user_segments_notify_all();
        """
    )


def downgrade() -> None:
    for trigger in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER IF EXISTS user_segments_notify_{trigger} ON user_segments")
    for function in ("new", "old", "both", "all"):
        op.execute(f"DROP FUNCTION IF EXISTS user_segments_notify_{function}()")
