"""TableSwap (pipelines/db/swap.py): a table replaced by a freshly built copy in one transaction.

Every test works on a scratch table with a primary key, a NOT NULL column with a default,
a CHECK, a UNIQUE constraint, a storage parameter, a plain index, a statement-level trigger
that notifies, and a grant to a role of its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pipelines.db.swap import TableSwap
from pipelines.settings import libpq_url

TRIGGER_CHANNEL = "scratch_inserted"
OLD_ROWS = [(1, "one", 1, "a"), (2, "two", 2, "b"), (3, "three", 3, "c")]
NEW_ROWS = [(10, "n10", 10, "c10"), (11, "n11", 11, "c11")]
FILL_NEW = "INSERT INTO {} SELECT g, 'n' || g, g, 'c' || g FROM generate_series(10, 11) AS g"


@dataclass
class Scratch:
    url: str
    role: str


def _connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_url(url), autocommit=autocommit)


@pytest.fixture
def scratch(database_url: str) -> Iterator[Scratch]:
    role = f"swap_reader_{uuid.uuid4().hex[:10]}"
    with _connect(database_url) as conn:
        conn.execute(
            "CREATE TABLE scratch (id bigint PRIMARY KEY, name text NOT NULL DEFAULT 'x', "
            "score int CHECK (score >= 0), code text UNIQUE) WITH (fillfactor = 70)"
        )
        conn.execute("CREATE INDEX ix_scratch_score ON scratch (score)")
        conn.execute(
            f"""
            CREATE FUNCTION scratch_notify() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('{TRIGGER_CHANNEL}', TG_OP || ' on ' || TG_TABLE_NAME);
                RETURN NULL;
            END
            $$
            """
        )
        conn.execute(
            "CREATE TRIGGER scratch_notify_insert AFTER INSERT ON scratch "
            "FOR EACH STATEMENT EXECUTE FUNCTION scratch_notify()"
        )
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON scratch TO {}").format(sql.Identifier(role)))
        conn.cursor().executemany("INSERT INTO scratch VALUES (%s, %s, %s, %s)", OLD_ROWS)
    try:
        yield Scratch(database_url, role)
    finally:
        with _connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _query(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with _connect(url) as conn:
        cur = conn.execute(query.encode(), params)
        return cur.fetchall() if cur.description else []


def _rows(url: str) -> list[tuple[Any, ...]]:
    return _query(url, "SELECT id, name, score, code FROM scratch ORDER BY id")


def _oid(url: str) -> int:
    return int(_query(url, "SELECT 'scratch'::regclass::oid")[0][0])


def _constraints(url: str) -> set[tuple[str, str, str]]:
    return {
        (name, kind, definition)
        for name, kind, definition in _query(
            url,
            "SELECT conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'scratch'::regclass",
        )
    }


def _indexes(url: str) -> set[tuple[str, str]]:
    return {
        (name, definition)
        for name, definition in _query(
            url,
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' AND tablename = 'scratch'",
        )
    }


def _leftovers(url: str) -> list[tuple[Any, ...]]:
    """Relations or constraints whose name carries a swap's temporary ``_next_`` suffix."""
    return _query(
        url,
        "SELECT relname, relkind::text FROM pg_class WHERE relname ~ '_next_[0-9a-f]{8}$' "
        "UNION ALL SELECT conname, 'constraint' FROM pg_constraint "
        "WHERE conname ~ '_next_[0-9a-f]{8}$'",
    )


def _swap(url: str, fill: str = FILL_NEW, **commit: Any) -> None:
    with _connect(url) as conn:
        swap = TableSwap(conn, "scratch")
        conn.execute(sql.SQL(fill).format(sql.Identifier(swap.next_table)))
        swap.commit_swap(**commit)
        conn.commit()


def test_swap_replaces_rows_and_keeps_what_the_table_is(scratch: Scratch) -> None:
    url = scratch.url
    constraints_before = _constraints(url)
    indexes_before = _indexes(url)
    # the comparison below is about these names (not vacuous)
    assert {"scratch_pkey", "scratch_code_key", "scratch_score_check"} <= {
        name for name, _, _ in constraints_before
    }
    assert {"scratch_pkey", "scratch_code_key", "ix_scratch_score"} == {
        name for name, _ in indexes_before
    }
    oid_before = _oid(url)

    _swap(url)

    assert _oid(url) != oid_before  # a new table, not the old one rewritten
    assert _rows(url) == NEW_ROWS
    assert _constraints(url) == constraints_before
    assert _indexes(url) == indexes_before
    assert _query(url, "SELECT reloptions FROM pg_class WHERE oid = 'scratch'::regclass") == [
        (["fillfactor=70"],)
    ]
    assert _leftovers(url) == []

    with _connect(url, autocommit=True) as listener, _connect(url, autocommit=True) as conn:
        listener.execute(f"LISTEN {TRIGGER_CHANNEL}")
        # default of name
        conn.execute("INSERT INTO scratch (id, score, code) VALUES (20, 1, 'd20')")
        heard = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
        assert heard == [(TRIGGER_CHANNEL, "INSERT on scratch")]
        assert conn.execute("SELECT name FROM scratch WHERE id = 20").fetchone() == ("x",)
        with pytest.raises(psycopg.errors.CheckViolation) as check:
            conn.execute("INSERT INTO scratch VALUES (21, 'n', -1, 'd21')")
        assert check.value.diag.constraint_name == "scratch_score_check"
        with pytest.raises(psycopg.errors.UniqueViolation) as unique:
            conn.execute("INSERT INTO scratch VALUES (22, 'n', 1, 'c10')")
        assert unique.value.diag.constraint_name == "scratch_code_key"
        with pytest.raises(psycopg.errors.UniqueViolation) as primary:
            conn.execute("INSERT INTO scratch VALUES (10, 'n', 1, 'd23')")
        assert primary.value.diag.constraint_name == "scratch_pkey"
        with pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute("INSERT INTO scratch VALUES (24, NULL, 1, 'd24')")
        privileges = conn.execute(
            "SELECT has_table_privilege(%s, 'scratch', 'SELECT'), "
            "has_table_privilege(%s, 'scratch', 'INSERT')",
            (scratch.role, scratch.role),
        ).fetchone()
        assert privileges == (True, False)


def test_commit_swap_notify_is_delivered_once_on_commit(scratch: Scratch) -> None:
    url = scratch.url
    with _connect(url, autocommit=True) as listener, _connect(url) as conn:
        listener.execute("LISTEN scratch_swapped")
        swap = TableSwap(conn, "scratch")
        conn.execute(sql.SQL(FILL_NEW).format(sql.Identifier(swap.next_table)))
        swap.commit_swap(notify=("scratch_swapped", "v2"))
        # not before the commit
        assert list(listener.notifies(timeout=0.5)) == []
        conn.commit()
        heard = [(n.channel, n.payload) for n in listener.notifies(timeout=2)]
    assert heard == [("scratch_swapped", "v2")]


@pytest.mark.parametrize("swapped", [False, True], ids=["after-fill", "after-commit-swap"])
def test_rollback_leaves_old_table_as_it_was(scratch: Scratch, swapped: bool) -> None:
    url = scratch.url
    before = (_oid(url), _rows(url), _constraints(url), _indexes(url))
    with _connect(url) as conn:
        swap = TableSwap(conn, "scratch")
        conn.execute(sql.SQL(FILL_NEW).format(sql.Identifier(swap.next_table)))
        if swapped:
            swap.commit_swap(notify=("scratch_swapped", "v2"))
            # inside the transaction the swap did happen
            assert conn.execute("SELECT count(*) FROM scratch").fetchone() == (len(NEW_ROWS),)
        conn.rollback()
    assert (_oid(url), _rows(url), _constraints(url), _indexes(url)) == before
    assert _rows(url) == OLD_ROWS
    assert _leftovers(url) == []


def _wait_for_lock_wait(url: str, pid: int, timeout: float = 10.0) -> tuple[Any, ...]:
    deadline = time.monotonic() + timeout
    with _connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT wait_event_type, wait_event, state FROM pg_stat_activity WHERE pid = %s",
                (pid,),
            ).fetchone()
            if row is not None and row[0] == "Lock":
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"backend {pid} is not waiting for a lock: {row}")
            time.sleep(0.02)


def test_concurrent_writer_waits_and_lands_in_the_new_table(scratch: Scratch) -> None:
    url = scratch.url
    old_oid = _oid(url)
    outcome: dict[str, Any] = {}
    with _connect(url) as conn_a, _connect(url, autocommit=True) as conn_b:
        swap = TableSwap(conn_a, "scratch")
        conn_a.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM scratch").format(sql.Identifier(swap.next_table))
        )

        def update() -> None:
            try:
                cur = conn_b.execute("UPDATE scratch SET name = 'changed' WHERE id = 1")
                outcome["rowcount"] = cur.rowcount
            except BaseException as exc:  # reported by the main thread
                outcome["error"] = exc

        writer = threading.Thread(target=update, daemon=True)
        writer.start()
        try:
            wait_event_type, wait_event, _ = _wait_for_lock_wait(url, conn_b.info.backend_pid)
            assert (wait_event_type, wait_event) == ("Lock", "relation")
            assert outcome == {}  # still blocked
            swap.commit_swap()
            conn_a.commit()
        finally:
            writer.join(timeout=15)
        assert not writer.is_alive(), "the writer is still blocked after the swap committed"
    assert "error" not in outcome, repr(outcome.get("error"))
    assert outcome["rowcount"] == 1
    assert _oid(url) != old_oid
    assert _rows(url) == [(1, "changed", 1, "a"), *OLD_ROWS[1:]]


@pytest.mark.parametrize("dependent", ["view", "foreign_key"])
def test_dependent_object_makes_swap_fail_and_rollback_keeps_everything(
    scratch: Scratch, dependent: str
) -> None:
    url = scratch.url
    with _connect(url) as conn:
        if dependent == "view":
            conn.execute("CREATE VIEW scratch_view AS SELECT id, name FROM scratch")
        else:
            conn.execute(
                "CREATE TABLE scratch_child (id bigint PRIMARY KEY, "
                "scratch_id bigint REFERENCES scratch (id))"
            )
            conn.execute("INSERT INTO scratch_child VALUES (1, 2)")
    before = (_oid(url), _rows(url), _constraints(url), _indexes(url))

    with _connect(url) as conn:
        swap = TableSwap(conn, "scratch")
        conn.execute(sql.SQL(FILL_NEW).format(sql.Identifier(swap.next_table)))
        with pytest.raises(psycopg.errors.DependentObjectsStillExist):
            swap.commit_swap(notify=("scratch_swapped", "v2"))
        conn.rollback()

    assert (_oid(url), _rows(url), _constraints(url), _indexes(url)) == before
    assert _leftovers(url) == []
    if dependent == "view":
        assert _query(url, "SELECT id, name FROM scratch_view ORDER BY id") == [
            (row[0], row[1]) for row in OLD_ROWS
        ]
    else:
        assert _query(
            url,
            "SELECT confrelid = 'scratch'::regclass FROM pg_constraint "
            "WHERE conrelid = 'scratch_child'::regclass AND contype = 'f'",
        ) == [(True,)]
        assert _query(url, "SELECT * FROM scratch_child") == [(1, 2)]


def test_quoted_names_survive_the_swap(database_url: str) -> None:
    # a table and an index whose names need quoting (capitals, a space)
    with _connect(database_url) as conn:
        conn.execute('CREATE TABLE "Mixed Case" (id bigint PRIMARY KEY, v int)')
        conn.execute('CREATE INDEX "ix t name" ON "Mixed Case" (v)')
        conn.execute('INSERT INTO "Mixed Case" VALUES (1, 1)')
        conn.commit()
        swap = TableSwap(conn, "Mixed Case")
        conn.execute(
            sql.SQL("INSERT INTO {} VALUES (2, 2)").format(sql.Identifier(swap.next_table))
        )
        swap.commit_swap()
        conn.commit()
        assert conn.execute('SELECT id FROM "Mixed Case"').fetchall() == [(2,)]
        indexes = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'Mixed Case' ORDER BY 1"
        ).fetchall()
        assert indexes == [("Mixed Case_pkey",), ("ix t name",)]
