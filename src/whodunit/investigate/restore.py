"""
Putting back what a statement, a transaction or a time window deleted or overwrote.

The trail keeps the image of every row a DELETE, TRUNCATE or DROP TABLE removed and of
every row before an UPDATE (``whodunit.row_change``).  Restore writes those images back
with ``json_populate_record``, so every value goes through the table's own type and
arrays, ``jsonb``, timestamps, numerics and uuids come back exactly.

Rows are decided one key at a time rather than by replaying statements: undoing a
selection's statements newest first (the DELETE, then each UPDATE before it) leaves a
row as its *oldest* change in the selection found it, so restore computes that once per
key, in one set-based query per table.  The last change's new image is what the row
should hold now if nobody touched it since; a row that differs is a conflict, reported
and skipped, or overwritten with ``on_conflict="overwrite"``.  Restore never deletes:
rows the selection created are left alone.

`plan_restore` makes every decision in a transaction it rolls back (dropped tables are
re-created there too), so the dry run reports what `apply_restore` would do; the apply
decides again under locks, in one transaction, parents before children, and its own
changes are audited under the actor ``whodunit-restore``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from whodunit.context import acting_as, set_db_context
from whodunit.errors import ConfigError, PrivilegeError, SchemaNotInstalledError, WhodunitError
from whodunit.investigate.tables import read_sql, resolve_table

__all__ = [
    "ON_CONFLICT",
    "RESTORE_ACTOR",
    "Conflict",
    "OnConflict",
    "RestorePlan",
    "RestoreResult",
    "SelectedStatement",
    "Selection",
    "TablePlan",
    "TableResult",
    "Unrestorable",
    "apply_restore",
    "plan_restore",
]

OnConflict = Literal["skip", "overwrite"]
ON_CONFLICT: tuple[OnConflict, ...] = ("skip", "overwrite")

#: The actor id the restore's own changes carry in the trail.
RESTORE_ACTOR = "whodunit-restore"

#: Called as the restore advances: what it is doing, steps done, steps in all.
Progress = Callable[[str, int, int], None]

Conn = psycopg.Connection[Any]

_CONFLICTS = ("exists", "changed", "gone")
_WHY = {
    "exists": "a row with this key exists again",
    "changed": "changed since the selection",
    "gone": "deleted since the selection",
    "key_changed": "an UPDATE in the selection changed its key",
}
# How many conflicting rows per table the report names.
_SAMPLES = 5


# -- what to restore --


@dataclass(frozen=True)
class Selection:
    """
    What to restore: one statement (with the cascades it caused), one transaction, or a
    time window; optionally only one table.

    Raises:
        ConfigError: none or several of statement, transaction and window are given,
            or the window ends before it starts.
    """

    statement_id: int | None = None
    txid: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    table: str | None = None

    def __post_init__(self) -> None:
        chosen = [v is not None for v in (self.statement_id, self.txid, self.since)]
        if sum(chosen) != 1:
            raise ConfigError(
                "say what to restore with exactly one of --statement ID, --tx TXID or --since TIME"
            )
        if self.until is not None and self.since is None:
            raise ConfigError("--until closes a window opened with --since: give --since too")
        if self.since and self.until and self.until <= self.since:
            raise ConfigError(
                f"--until {self.until.isoformat()} is not after --since "
                f"{self.since.isoformat()}: swap them"
            )

    def describe(self) -> str:
        """Name the selection the way a person would say it."""
        if self.statement_id is not None:
            what = f"statement {self.statement_id}"
        elif self.txid is not None:
            what = f"transaction {self.txid}"
        else:
            assert self.since is not None
            end = self.until.isoformat(" ", "seconds") if self.until else "now"
            what = f"{self.since.isoformat(' ', 'seconds')} to {end}"
        return f"{what} on {self.table}" if self.table else what


# -- the plan --


@dataclass
class SelectedStatement:
    """A statement of the selection whose changes restore undoes."""

    id: int
    at: datetime
    txid: str
    #: ``UPDATE``, ``DELETE``, ``TRUNCATE`` or the DDL command (``DROP TABLE``, …).
    op: str
    table: str
    schema_name: str
    table_name: str
    rows: int
    #: TRUNCATE and DROP: how many of *rows* the trail saved.
    rows_captured: int | None
    #: The app's actor (name, else id); None when the app set no context.
    actor: str | None
    db_user: str
    application_name: str | None


@dataclass
class Conflict:
    """A row that will not go back as it was, named by its key."""

    key: dict[str, Any]
    #: ``exists``, ``changed``, ``gone`` or ``key_changed``.
    kind: str
    reason: str


@dataclass
class TablePlan:
    """What restoring one table means, row by row."""

    table: str
    schema_name: str
    table_name: str
    key_columns: list[str]
    #: Every statement of the selection on this table, oldest first (INSERTs included:
    #: they tell rows the selection created from rows it removed).
    statement_ids: list[int]
    #: When a DROP in the selection removed the table (it must be re-created first).
    dropped_at: datetime | None = None
    #: The CREATE TABLE statement the dropped table will be re-created from.
    recreate_from: int | None = None
    #: Rows to put back (removed by the selection, still gone).
    insert: int = 0
    #: Rows to set back (updated by the selection, not changed since).
    revert: int = 0
    #: Rows already as they were before the selection.
    unchanged: int = 0
    #: Rows the selection created: left as they are.
    created: int = 0
    #: Conflicting rows by kind: ``exists``, ``changed``, ``gone``.
    conflicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_CONFLICTS, 0))
    #: A few of the conflicting rows, by key.
    samples: list[Conflict] = field(default_factory=list)


@dataclass
class Unrestorable:
    """Rows restore cannot put back, and why."""

    table: str
    #: How many rows; None when the trail does not know.
    rows: int | None
    #: ``not_saved`` (beyond a snapshot's cap), ``no_table`` (the table is gone),
    #: ``key_changed`` (an UPDATE changed the key) or ``no_key`` (updated rows of a table
    #: without a primary key).
    kind: str
    reason: str
    statement_id: int | None = None


@dataclass
class RestorePlan:
    """What a restore would do: the dry run's answer, and the input of `apply_restore`."""

    selection: Selection
    #: The statements restore undoes (the UPDATEs, DELETEs, TRUNCATEs and DROPs).
    statements: list[SelectedStatement]
    #: The tables to write, parents before children.
    tables: list[TablePlan]
    cannot_restore: list[Unrestorable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: False for a plan made with ``decide=False``: tables unordered, no row counts.
    decided: bool = True

    @property
    def rows_to_insert(self) -> int:
        """Rows the restore would put back."""
        return sum(t.insert for t in self.tables)

    @property
    def rows_to_revert(self) -> int:
        """Rows the restore would set back to their earlier values."""
        return sum(t.revert for t in self.tables)

    @property
    def conflicts(self) -> int:
        """Rows changed since the selection: skipped, or overwritten on request."""
        return sum(sum(t.conflicts.values()) for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        """Return the plan as plain data (what ``--json`` prints)."""
        return {
            **asdict(self),
            "rows_to_insert": self.rows_to_insert,
            "rows_to_revert": self.rows_to_revert,
            "conflicts": self.conflicts,
        }


@dataclass
class TableResult:
    """What a restore did to one table."""

    table: str
    inserted: int = 0
    reverted: int = 0
    #: Conflicting rows written over (``on_conflict="overwrite"``).
    overwritten: int = 0
    #: Conflicting rows left as they are (``on_conflict="skip"``).
    skipped: int = 0
    unchanged: int = 0
    recreated_from: int | None = None


@dataclass
class RestoreResult:
    """What `apply_restore` did, committed as one transaction."""

    selection: Selection
    on_conflict: str
    #: The correlation id of the restore's own statements in the trail.
    correlation_id: str
    tables: list[TableResult]
    cannot_restore: list[Unrestorable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def inserted(self) -> int:
        """Rows put back."""
        return sum(t.inserted for t in self.tables)

    @property
    def reverted(self) -> int:
        """Rows set back to their earlier values."""
        return sum(t.reverted for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        """Return the result as plain data (what ``--json`` prints)."""
        return {**asdict(self), "inserted": self.inserted, "reverted": self.reverted}


# -- the two entry points --


def plan_restore(
    conn: Conn,
    selection: Selection,
    *,
    decide: bool = True,
    progress: Progress | None = None,
) -> RestorePlan:
    """
    Work out what restoring *selection* would do, changing nothing.

    The decisions are made exactly as `apply_restore` makes them, in a transaction that
    is rolled back (a savepoint when one is open already).

    Args:
        conn: a superuser connection (the trail is readable by superusers only).
        selection: the statement, transaction or window to restore.
        decide: False finds the statements and tables only, and leaves the row counts
            at 0: enough for `apply_restore`, which decides again anyway, in half the
            time of a dry run followed by the apply.
        progress: called after each table is decided.

    Raises:
        ConfigError: an unknown statement id or table.
        PrivilegeError: the role may not read the trail.
        SchemaNotInstalledError: whodunit is not installed in this database.
        WhodunitError: nothing in the selection to restore.
    """
    notes: list[str] = []
    # Everything in the transaction, reads too: on a connection without autocommit they
    # would otherwise leave a transaction open behind the caller's back.
    with conn.transaction(force_rollback=True):
        _check_access(conn)
        statements, partitioned = _select(conn, selection)
        cannot = _unsaved_rows(statements, partitioned)
        undone = [s for s in statements if s.op != "INSERT"]
        targets = _targets(statements)
        if not decide:
            tables = [
                TablePlan(t.name, t.schema_name, t.table_name, [], t.statement_ids, t.dropped_at)
                for t in targets
            ]
            return RestorePlan(selection, undone, tables, cannot, decided=False)
        live = _prepare(conn, targets, cannot, notes, lock=False, progress=progress)
        samples = [_samples(conn, table) for table in live]
    plans = []
    for table, conflicts in zip(live, samples, strict=True):
        target, done = table.target, table.decided
        plans.append(
            TablePlan(
                table.name,
                target.schema_name,
                target.table_name,
                table.key_columns,
                target.statement_ids,
                target.dropped_at,
                recreate_from=table.recreated_from,
                insert=done["insert"],
                revert=done["revert"],
                unchanged=done["unchanged"],
                created=done["created"],
                conflicts={kind: done[kind] for kind in _CONFLICTS},
                samples=conflicts,
            )
        )
        cannot.extend(_cannot_write(table))
    return RestorePlan(selection, undone, plans, cannot, notes)


def apply_restore(
    conn: Conn,
    plan: RestorePlan,
    on_conflict: OnConflict = "skip",
    *,
    progress: Progress | None = None,
) -> RestoreResult:
    """
    Put back the rows of *plan*, in one transaction, audited as ``whodunit-restore``.

    Every decision is made again under locks (``SHARE ROW EXCLUSIVE``: the application
    can read, not write, the restored tables meanwhile), so rows changed since the dry
    run are conflicts, not overwritten by surprise.

    Args:
        conn: a superuser connection; idle (the restore commits) or inside a transaction
            of the caller's (then the restore is a savepoint of it).
        plan: from `plan_restore`.
        on_conflict: ``skip`` leaves conflicting rows as they are; ``overwrite`` writes
            the earlier values over them (``INSERT … ON CONFLICT (key) DO UPDATE``).
        progress: called after each table is decided and after each is written.

    Raises:
        ConfigError: *on_conflict* is not one of `ON_CONFLICT`.
        PrivilegeError: the role may not read the trail.
        WhodunitError: a row would break a constraint; nothing was changed, and the
            message names the table, the constraint and what to do.
    """
    if on_conflict not in ON_CONFLICT:
        raise ConfigError(
            f"on_conflict must be one of {', '.join(ON_CONFLICT)}, got {on_conflict!r}"
        )
    started = time.perf_counter()
    correlation_id = f"restore-{uuid.uuid4().hex[:12]}"
    # What the trail lacks stays lacking; the rest is decided again below.
    cannot = [c for c in plan.cannot_restore if c.kind in ("not_saved", "no_table")]
    notes: list[str] = []
    targets = [
        _Target(t.schema_name, t.table_name, t.statement_ids, t.dropped_at) for t in plan.tables
    ]
    results: list[TableResult] = []
    writing = ""
    with acting_as(
        actor_id=RESTORE_ACTOR,
        actor_name="whodunit restore",
        correlation_id=correlation_id,
        restore_of=plan.selection.describe(),
    ):
        try:
            with conn.transaction():
                _check_access(conn)
                set_db_context(conn)
                conn.execute(read_sql("restore_begin"))
                live = _prepare(conn, targets, cannot, notes, lock=True, progress=progress)
                _lift_guards(conn, live, notes)
                for tab, table in enumerate(live):
                    writing = table.name
                    results.append(_write(conn, table, on_conflict))
                    cannot.extend(_cannot_write(table))
                    if progress:
                        progress(f"restored {table.name}", tab + 1, len(live))
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
            raise WhodunitError(_violation(exc, writing)) from exc
    return RestoreResult(
        plan.selection,
        on_conflict,
        correlation_id,
        results,
        cannot,
        notes,
        round(time.perf_counter() - started, 3),
    )


# -- selecting --


@dataclass
class _Target:
    """A table the selection changed, as the trail names it."""

    schema_name: str
    table_name: str
    statement_ids: list[int]
    dropped_at: datetime | None = None

    @property
    def name(self) -> str:
        return _display(self.schema_name, self.table_name)


@dataclass
class _Live:
    """A target table as it is now, with what writing it needs."""

    target: _Target
    relid: int
    key_columns: list[str]
    insert_columns: list[str]
    update_columns: list[str]
    audited: bool
    guarded: bool
    recreated_from: int | None = None
    #: How many of its rows got each action.
    decided: Counter[str] = field(default_factory=Counter)

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.target.schema_name, self.target.table_name)

    @property
    def work(self) -> sql.Identifier:
        """Its scratch table (restore_workspace.sql)."""
        return sql.Identifier("pg_temp", f"whodunit_restore_{self.relid}")


def _check_access(conn: Conn) -> None:
    row = conn.execute(read_sql("restore_access")).fetchone()
    if not row or not row[0]:
        raise SchemaNotInstalledError(
            "whodunit is not installed in this database, so there is no trail to restore "
            "from: run 'whodunit install'"
        )
    if not row[1]:
        raise PrivilegeError(
            f"restore reads the trail, which only superusers may read; connected as "
            f"{conn.info.user!r}: connect as a superuser, e.g. postgres"
        )


def _select(conn: Conn, selection: Selection) -> tuple[list[SelectedStatement], set[int]]:
    """The selection's statements, oldest first, and the ids of those on partitioned tables."""
    schema_name = table_name = None
    if selection.table:
        found = resolve_table(conn, selection.table)
        schema_name, table_name = found.schema, found.table
    params = {
        "statement_id": selection.statement_id,
        "txid": None if selection.txid is None else str(selection.txid),
        "since": selection.since,
        "until": selection.until,
        "schema_name": schema_name,
        "table_name": table_name,
    }
    rows = conn.cursor(row_factory=dict_row).execute(read_sql("restore_statements"), params)
    statements, partitioned = [], set()
    for r in rows:
        statements.append(
            SelectedStatement(
                id=r["id"],
                at=r["at"],
                txid=r["txid"],
                op=r["command_tag"] if r["op"] == "DDL" else r["op"],
                table=_display(r["schema_name"], r["table_name"]),
                schema_name=r["schema_name"],
                table_name=r["table_name"],
                rows=r["rows"],
                rows_captured=r["rows_captured"],
                actor=r["actor"],
                db_user=r["db_current_user"],
                application_name=r["application_name"],
            )
        )
        if r["partitioned"]:
            partitioned.add(r["id"])
    if not any(s.op != "INSERT" for s in statements):
        raise _nothing_to_restore(conn, selection)
    return statements, partitioned


def _nothing_to_restore(conn: Conn, selection: Selection) -> WhodunitError:
    if selection.statement_id is None:
        return WhodunitError(
            f"nothing to restore: no UPDATE, DELETE, TRUNCATE or DROP TABLE in "
            f"{selection.describe()}; widen the window (--since/--until) or find the "
            "statement with 'whodunit investigate'"
        )
    row = conn.execute(
        read_sql("restore_statement_kind"), {"statement_id": selection.statement_id}
    ).fetchone()
    if row is None:
        return ConfigError(
            f"no statement {selection.statement_id} in the trail: find the id of the "
            "DELETE, UPDATE, TRUNCATE or DROP with 'whodunit investigate'"
        )
    op, tag, schema_name, table_name = row
    where = f" on {_display(schema_name, table_name)}" if table_name else ""
    if selection.table:
        where += f", and none of its changes are on {selection.table}"
    return WhodunitError(
        f"nothing to restore: statement {selection.statement_id} is {tag or op}{where}; "
        "restore puts back rows that an UPDATE, DELETE, TRUNCATE or DROP TABLE removed"
    )


def _targets(statements: Sequence[SelectedStatement]) -> list[_Target]:
    """Group the statements by table; tables the selection only inserted into are left out."""
    targets: dict[tuple[str, str], _Target] = {}
    for s in statements:
        target = targets.setdefault(
            (s.schema_name, s.table_name), _Target(s.schema_name, s.table_name, [])
        )
        target.statement_ids.append(s.id)
        if s.op.startswith("DROP"):
            target.dropped_at = s.at
    destructive = {(s.schema_name, s.table_name) for s in statements if s.op != "INSERT"}
    return [t for key, t in targets.items() if key in destructive]


def _unsaved_rows(
    statements: Sequence[SelectedStatement], partitioned: set[int]
) -> list[Unrestorable]:
    """
    Rows a TRUNCATE or DROP removed beyond what its snapshot saved.

    A partitioned table holds no rows of its own: its partitions' statements saved them.
    """
    lost = []
    for s in statements:
        if s.op in ("INSERT", "UPDATE", "DELETE") or s.id in partitioned:
            continue
        if s.rows_captured is None:
            lost.append(
                Unrestorable(
                    s.table,
                    None,
                    "not_saved",
                    f"{s.op} (statement {s.id}) saved no rows: the command did not name the "
                    "table (dynamic SQL, DROP OWNED), see docs/security.md",
                    s.id,
                )
            )
        elif s.rows > s.rows_captured:
            lost.append(
                Unrestorable(
                    s.table,
                    s.rows - s.rows_captured,
                    "not_saved",
                    f"{s.op} (statement {s.id}) saved {s.rows_captured:,} of {s.rows:,} rows "
                    "(snapshot_max_rows); the rest are not in the trail",
                    s.id,
                )
            )
    return lost


# -- deciding --


def _prepare(
    conn: Conn,
    targets: Sequence[_Target],
    cannot: list[Unrestorable],
    notes: list[str],
    *,
    lock: bool,
    progress: Progress | None,
) -> list[_Live]:
    """
    Find (or re-create) each target table, put them in foreign-key order and decide
    every row into ``pg_temp.whodunit_restore``.
    """
    live: list[_Live] = []
    missing: list[tuple[datetime, int, str, _Target]] = []
    for target in targets:
        found = _describe(conn, target)
        if found is not None:
            live.append(found)
            continue
        create = _find_create(conn, target)
        if create is None:
            cannot.append(_missing(conn, target))
        else:
            missing.append((*create, target))
    # Re-created in the order they were first created, which satisfied their references.
    for _, create_id, query, target in sorted(missing, key=lambda m: (m[0], m[1])):
        reason = _recreate(conn, target, create_id, query)
        found = _describe(conn, target)
        if reason or found is None:
            cannot.append(_missing(conn, target, reason))
            continue
        found.recreated_from = create_id
        live.append(found)
        notes.append(
            f"{target.name} is re-created from its CREATE TABLE (statement {create_id}), "
            "owned by the restoring role; later ALTERs, grants, triggers and other tables' "
            "foreign keys to it are not"
        )
    live = _fk_order(conn, live, notes)
    if lock and live:
        tables = sql.SQL(", ").join(t.ident for t in live)
        conn.execute(sql.SQL(read_sql("restore_lock")).format(tables=tables))
    for tab, table in enumerate(live):
        _classify(conn, table)
        if progress:
            progress(f"decided {table.name}", tab + 1, len(live))
        if not table.audited:
            notes.append(
                f"{table.name} is not audited: the restore's changes to it are not in the trail"
            )
    return live


def _describe(conn: Conn, target: _Target) -> _Live | None:
    row = conn.execute(
        read_sql("restore_table"),
        {"schema_name": target.schema_name, "table_name": target.table_name},
    ).fetchone()
    if row is None:
        return None
    return _Live(target, *row)


def _find_create(conn: Conn, target: _Target) -> tuple[datetime, int, str] | None:
    """The latest captured CREATE TABLE (time, id, text) of a table the selection dropped."""
    if target.dropped_at is None:
        return None
    row = conn.execute(
        read_sql("restore_create_statement"),
        {
            "schema_name": target.schema_name,
            "table_name": target.table_name,
            "before": target.dropped_at,
        },
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2] or "")


def _missing(conn: Conn, target: _Target, reason: str | None = None) -> Unrestorable:
    rows = conn.execute(read_sql("restore_trail_rows"), {"ids": target.statement_ids}).fetchone()
    why = reason or (
        "no CREATE TABLE of it in the trail to re-create it from"
        if target.dropped_at
        else "renamed or dropped after the selection"
    )
    return Unrestorable(
        target.name,
        int(rows[0]) if rows else None,
        "no_table",
        f"{target.name} does not exist now ({why}): re-create it, then run restore again",
    )


def _recreate(conn: Conn, target: _Target, create_id: int, query: str) -> str | None:
    """
    Run the captured CREATE TABLE of *target* again; return why not, or None when done.

    Only a plain ``CREATE TABLE name (…)`` found in the captured text is run, as one
    prepared statement (the extended protocol refuses a second statement), in the
    schema it was created in; a failure is rolled back to a savepoint.
    """
    text = _create_table_text(query, target.schema_name, target.table_name)
    if text is None:
        return (
            f"statement {create_id} holds no plain CREATE TABLE of it, or it was cut at "
            "query_max_bytes"
        )
    try:
        with conn.transaction():
            path = sql.Identifier(target.schema_name).as_string(conn)
            row = conn.execute(read_sql("restore_search_path"), {"path": path}).fetchone()
            conn.execute(text.encode(), prepare=True)
            conn.execute(read_sql("restore_search_path"), {"path": row[0] if row else ""})
    except psycopg.Error as exc:
        return f"re-creating it from statement {create_id} failed: {_first_line(exc)}"
    return None


def _fk_order(conn: Conn, tables: list[_Live], notes: list[str]) -> list[_Live]:
    """
    Order *tables* parents first (Kahn's algorithm over their foreign keys).

    A cycle is broken at the table with the fewest parents left; its rows can only go
    back if the references that point forward are DEFERRABLE (deferred by restore_begin),
    which the notes say.
    """
    by_relid = {t.relid: t for t in tables}
    edges = conn.execute(read_sql("restore_foreign_keys"), {"relids": list(by_relid)}).fetchall()
    parents: dict[int, set[int]] = {relid: set() for relid in by_relid}
    for child, parent, _, _ in edges:
        parents[child].add(parent)
    order: list[int] = []
    remaining = set(by_relid)
    while remaining:
        ready = [r for r in remaining if not parents[r] & remaining]
        if not ready:
            ready = [min(remaining, key=lambda r: (len(parents[r] & remaining), by_relid[r].name))]
        for relid in sorted(ready, key=lambda r: by_relid[r].name):
            order.append(relid)
            remaining.discard(relid)
    position = {relid: i for i, relid in enumerate(order)}
    for child, parent, name, deferrable in edges:
        if position[child] < position[parent]:
            child_name, parent_name = by_relid[child].name, by_relid[parent].name
            notes.append(
                f"{child_name} and {parent_name} reference each other: {child_name} goes "
                f"first, so its constraint {name} is "
                + (
                    "checked at commit (DEFERRABLE)"
                    if deferrable
                    else f"checked at once: rows that need a {parent_name} row restored "
                    f"with them fail unless it is DEFERRABLE (ALTER TABLE {child_name} "
                    f"ALTER CONSTRAINT {sql.Identifier(name).as_string(conn)} DEFERRABLE)"
                )
            )
    return [by_relid[relid] for relid in order]


def _classify(conn: Conn, table: _Live) -> None:
    """Decide every row of *table* into its scratch table; count the actions."""
    names = {"table": table.ident, "work": table.work}
    conn.execute(sql.SQL(read_sql("restore_workspace")).format(**names))
    ids = table.target.statement_ids
    if table.key_columns:
        # Positional names for the key columns: a key column may be called "ord" or "r".
        aliases = [f"k{i}" for i in range(1, len(table.key_columns) + 1)]
        net = "restore_net_single" if len(ids) == 1 else "restore_net_grouped"
        query = sql.SQL(read_sql("restore_classify")).format(
            **names,
            keys_from_r=sql.SQL(", ").join(
                sql.SQL("{} AS {}").format(sql.Identifier("r", key), sql.Identifier(alias))
                for key, alias in zip(table.key_columns, aliases, strict=True)
            ),
            net=sql.SQL(read_sql(net)).format(keys=_idents(aliases)),
            match=_match(
                [sql.Identifier("x", key) for key in table.key_columns],
                [sql.Identifier("n", alias) for alias in aliases],
            ),
            first_key=sql.Identifier("x", table.key_columns[0]),
        )
    else:
        query = sql.SQL(read_sql("restore_classify_keyless")).format(**names)
    try:
        rows = conn.execute(query, {"ids": ids, "keys": table.key_columns}).fetchall()
    except psycopg.errors.DataError as exc:
        raise WhodunitError(
            f"the rows saved for {table.name} no longer fit its columns "
            f"({exc.diag.message_primary or _first_line(exc)}): a column's type changed "
            "since; change it back, or put the rows back by hand (docs/restore.md)"
        ) from exc
    table.decided = Counter(dict(rows))


def _samples(conn: Conn, table: _Live) -> list[Conflict]:
    query = sql.SQL(read_sql("restore_samples")).format(work=table.work)
    return [
        Conflict({k: row.get(k) for k in table.key_columns}, action, _WHY[action])
        for action, row in conn.execute(query, {"limit": _SAMPLES})
    ]


def _cannot_write(table: _Live) -> list[Unrestorable]:
    """Rows of a table that the decisions leave behind for good."""
    done = table.decided
    lost = []
    if done["key_changed"]:
        lost.append(
            Unrestorable(
                table.name,
                done["key_changed"],
                "key_changed",
                "an UPDATE in the selection changed their key: set them back by hand",
            )
        )
    if done["no_key"]:
        lost.append(
            Unrestorable(
                table.name,
                done["no_key"],
                "no_key",
                "updated rows of a table without a primary key cannot be found again",
            )
        )
    return lost


# -- writing --


def _lift_guards(conn: Conn, tables: Sequence[_Live], notes: list[str]) -> None:
    guarded = [f"{t.target.schema_name}.{t.target.table_name}" for t in tables if t.guarded]
    if guarded:
        conn.execute(read_sql("restore_allow"), {"tables": ",".join(guarded)})
        notes.append(f"guards lifted for the restore's transaction on {', '.join(guarded)}")


def _write(conn: Conn, table: _Live, on_conflict: OnConflict) -> TableResult:
    """Put back one table's rows as decided: INSERT the removed ones, UPDATE the others."""
    done = table.decided
    overwrite = on_conflict == "overwrite"
    set_columns = [c for c in table.update_columns if c not in table.key_columns]
    result = TableResult(
        table.name,
        inserted=done["insert"],
        reverted=done["revert"] if set_columns else 0,
        unchanged=done["unchanged"],
        recreated_from=table.recreated_from,
    )
    conflicts = sum(done[kind] for kind in _CONFLICTS)
    if overwrite and set_columns:
        result.overwritten = conflicts
    else:
        result.skipped = conflicts
    upsert = overwrite and bool(set_columns) and (done["exists"] or done["gone"])
    inserts = ["insert", "exists", "gone"] if upsert else ["insert"]
    updates = ["revert", "changed"] if overwrite else ["revert"]
    names = {
        "table": table.ident,
        "work": table.work,
        "columns": _idents(table.insert_columns),
        "values": _fields(table.insert_columns),
        "keys": _idents(table.key_columns),
        "set_columns": _idents(set_columns),
        "set_values": _fields(set_columns),
        "excluded": _idents(set_columns, "excluded"),
        "match": _match(
            [sql.Identifier("x", k) for k in table.key_columns],
            [_field(k) for k in table.key_columns],
        ),
    }
    if any(done[a] for a in inserts):
        template = "restore_upsert" if upsert else "restore_insert"
        conn.execute(sql.SQL(read_sql(template)).format(**names), {"actions": inserts})
    if set_columns and any(done[a] for a in updates):
        conn.execute(sql.SQL(read_sql("restore_update")).format(**names), {"actions": updates})
    return result


def _violation(exc: psycopg.Error, table: str) -> str:
    """One line on a constraint the restore would break: what, where, and what to do."""
    diag = exc.diag
    where = _display(diag.schema_name, diag.table_name) if diag.table_name else table
    constraint = f" (constraint {diag.constraint_name})" if diag.constraint_name else ""
    detail = f": {diag.message_detail}" if diag.message_detail else ""
    if isinstance(exc, psycopg.errors.UniqueViolation):
        step = (
            "a row holds that unique value now; change or delete it, or narrow the restore "
            "with --table"
        )
    elif isinstance(exc, psycopg.errors.ForeignKeyViolation):
        step = (
            "a row it references is missing; include the statement that removed it (--tx, "
            "or a wider --since) or restore that table first"
        )
    else:
        step = (
            "the table's definition no longer accepts the saved values; adjust it or put "
            "the rows back by hand (docs/restore.md)"
        )
    return (
        f"restore rolled back, nothing was changed: writing {where} failed{constraint}"
        f" — {diag.message_primary or _first_line(exc)}{detail}; {step}"
    )


# -- helpers --


def _display(schema_name: str | None, table_name: str | None) -> str:
    """A table's name as it would be typed in SQL: ``public."User"``."""
    parts = [p for p in (schema_name, table_name) if p]
    return ".".join(p if re.fullmatch(r"[a-z_][a-z0-9_$]*", p) else _quote(p) for p in parts)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _idents(names: Sequence[str], alias: str | None = None) -> sql.Composed:
    return sql.SQL(", ").join(
        sql.Identifier(alias, n) if alias else sql.Identifier(n) for n in names
    )


def _field(name: str) -> sql.Composed:
    """A column of the scratch table's row: ``("w"."rec")."a"``."""
    return sql.SQL("({}).{}").format(sql.Identifier("w", "rec"), sql.Identifier(name))


def _fields(names: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(_field(n) for n in names)


def _match(left: Sequence[sql.Composable], right: Sequence[sql.Composable]) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(a, b) for a, b in zip(left, right, strict=True)
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- finding a CREATE TABLE in captured text --

_TOKEN = re.compile(
    r"""(?P<line>--[^\n]*)
      | (?P<block>/\*)
      | (?P<string>(?<![\w$])[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*')
      | (?P<ident>"(?:[^"]|"")*")
      | (?P<dollar>\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)
      | (?P<semi>;)""",
    re.VERBOSE | re.DOTALL,
)
_BLOCK_EDGE = re.compile(r"/\*|\*/")
_LEADING_COMMENTS = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)
_NAME = r'(?:"(?:[^"]|"")+"|[^\W\d][\w$]*)'
_CREATE_TABLE = re.compile(
    rf"CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"(?P<name>{_NAME}(?:\s*\.\s*{_NAME})?)\s*\(",
    re.IGNORECASE,
)
_AS_QUERY = re.compile(r"\bAS\s+(?:SELECT|VALUES|TABLE|WITH|EXECUTE)\b", re.IGNORECASE)


def _create_table_text(query: str, schema_name: str, table_name: str) -> str | None:
    """The last plain ``CREATE TABLE`` of the table in *query*, which may hold many statements."""
    found = None
    for statement in _split_statements(query):
        text = statement[_LEADING_COMMENTS.match(statement).end() :]  # type: ignore[union-attr]
        match = _CREATE_TABLE.match(text)
        if not match or _AS_QUERY.search(text):
            continue
        parts = [_unquote(p) for p in re.findall(_NAME, match["name"])]
        if parts[-1] == table_name and (len(parts) == 1 or parts[0] == schema_name):
            found = text
    return found


def _split_statements(text: str) -> Iterator[str]:
    """Split SQL text at the semicolons outside strings, quoted names and comments."""
    start = pos = 0
    while match := _TOKEN.search(text, pos):
        pos = match.end()
        if match["block"]:
            depth = 1
            while depth and (edge := _BLOCK_EDGE.search(text, pos)):
                depth += 1 if edge.group() == "/*" else -1
                pos = edge.end()
            if depth:
                pos = len(text)
        elif match["dollar"]:
            end = text.find(match["dollar"], pos)
            pos = len(text) if end < 0 else end + len(match["dollar"])
        elif match["semi"]:
            yield text[start : match.start()]
            start = pos
    yield text[start:]


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
