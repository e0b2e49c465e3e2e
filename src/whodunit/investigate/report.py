"""
The incident report: what destroyed data in a time window, worst first, and for each
incident who, when, what, how, why, and what would have prevented it.

An incident is one transaction's destructive statements (DELETE, TRUNCATE, a DROP, a mass
UPDATE).  A DELETE that cascades writes one statement row per table, all with the same
transaction and query text; the foreign keys tell which table caused which, so the
report shows one DELETE on ``"User"`` with its cascaded children instead of six unrelated
deletions.  Incidents are ranked by damage: rows removed, then rows overwritten.
"""

from __future__ import annotations

import re
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from whodunit.errors import ConfigError
from whodunit.investigate import queries
from whodunit.investigate.model import (
    How,
    Incident,
    Report,
    StatementDamage,
    Who,
    Why,
    Window,
    format_ts,
    rows,
)
from whodunit.investigate.tables import qualified_name, quote_ident, resolve_table

if TYPE_CHECKING:
    from whodunit.investigate.logs import LogSource

__all__ = ["DEFAULT_SINCE", "investigate"]

#: The window of ``investigate`` when none is given.
DEFAULT_SINCE = timedelta(hours=24)
#: Errors this long before an incident, by the same actor, are part of its "why".
ERRORS_BEFORE = timedelta(minutes=15)
#: Logins this long before an incident are part of its "why".
LOGINS_BEFORE = timedelta(hours=24)
#: The request's log lines are looked for this far around the incident.
LOG_MARGIN = timedelta(hours=1)
#: The most log lines and app events kept per incident.
MAX_LINES = 200
#: The row limit suggested for a ``whodunit guard``.
SUGGESTED_MAX_ROWS = 100

_REMOVES = frozenset({"DELETE", "TRUNCATE", "DDL"})
# The `whodunit guard` option that refuses each kind of destructive statement.
_GUARD_FLAG = {
    "DELETE": f"--max-rows {SUGGESTED_MAX_ROWS}",
    "UPDATE": f"--max-rows {SUGGESTED_MAX_ROWS}",
    "TRUNCATE": "--no-truncate",
    "DDL": "--no-drop",
}


def investigate(
    conn: psycopg.Connection[Any],
    window: Window | None = None,
    *,
    since: timedelta | None = None,
    table: str | None = None,
    actor: str | None = None,
    log_source: LogSource | None = None,
    mass_rows: int = 100,
    limit: int = 10,
    sample_rows: int = 3,
) -> Report:
    """
    Build the incident report of a time window.

    Args:
        conn: a connection that may read the trail (a superuser).
        window: the time range (``--from`` / ``--to``); an open end means now or ever.
        since: instead of *window*, the last so long (default `DEFAULT_SINCE`).
        table: only transactions that destroyed rows of this table (cascades included).
        actor: only transactions of this app user (id or name) or DB role.
        log_source: where the request log lines come from, if anywhere.
        mass_rows: an UPDATE of at least this many rows counts as destructive.
        limit: the most incidents described in full (``total`` counts them all).
        sample_rows: removed rows shown per statement.

    Raises:
        ConfigError: both *window* and *since*, an empty window, or an unknown table.
    """
    queries.check_trail(conn)
    window = resolve_window(window, since)
    target = resolve_table(conn, table) if table else None
    found = queries.destructive_statements(
        conn, window, table=target, actor=actor, mass_rows=mass_rows
    )
    transactions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in found:
        transactions[row["txid"]].append(row)
    tables = {(r["schema_name"], r["table_name"]) for r in found if r["table_name"]}
    fks = queries.foreign_keys(conn, sorted(tables)) if tables else []
    incidents = sorted(
        (_incident(txid, group, fks) for txid, group in transactions.items()),
        key=lambda i: (i.rows_lost, i.rows_overwritten, i.first_at),
        reverse=True,
    )[:limit]
    for rank, incident in enumerate(incidents, start=1):
        incident.rank = rank
    _add_samples(conn, incidents, sample_rows)
    _add_prevention(conn, incidents)
    for incident in incidents:
        incident.why = _why(conn, incident, log_source)
    answer = (
        incidents[0].summary
        if incidents
        else f"nothing destructive found between {format_ts(window.since)} and "
        f"{format_ts(window.until) if window.until else 'now'}"
    )
    return Report(
        window=window,
        answer=answer,
        incidents=incidents,
        total=len(transactions),
        filters={"table": str(target) if target else None, "actor": actor},
        generated_at=datetime.now(UTC),
        log_source=log_source.describe() if log_source else None,
        log_lines_skipped=log_source.skipped if log_source else 0,
    )


def resolve_window(window: Window | None, since: timedelta | None) -> Window:
    """
    Return the window to search: *window*, else the last *since*, else the last day.

    Raises:
        ConfigError: both given, or the window ends before it starts.
    """
    if window is not None and since is not None:
        raise ConfigError("give --since or --from/--to, not both")
    if window is None:
        return Window(datetime.now(UTC) - (since or DEFAULT_SINCE), None)
    if window.since is None:
        window = Window((window.until or datetime.now(UTC)) - DEFAULT_SINCE, window.until)
    if window.until is not None and window.since is not None and window.until <= window.since:
        raise ConfigError(
            f"the window ends ({format_ts(window.until)}) before it starts "
            f"({format_ts(window.since)})"
        )
    return window


# -- one transaction -> one incident ----------------------------------------------------


def _incident(txid: str, rows: list[dict[str, Any]], fks: Sequence[Mapping[str, Any]]) -> Incident:
    statements = [_damage(r) for r in rows]
    _mark_cascades(rows, statements, fks)
    root_row = max(
        (r for r, s in zip(rows, statements, strict=True) if s.cascaded_from is None),
        key=lambda r: r["rows"],
    )
    who, how = queries.who_from(root_row), queries.how_from(root_row)
    first, last = rows[0]["at"], rows[-1]["at"]
    lost = sum(s.rows for s in statements if s.op in _REMOVES)
    # Client statements first, then what they cascaded into; most rows first within each.
    by_rows = sorted(statements, key=lambda s: (s.cascaded_from is not None, -s.rows))
    return Incident(
        rank=0,
        txid=int(txid),
        summary=_summary(who, how, statements, first),
        first_at=first,
        last_at=last,
        duration_s=(last - first).total_seconds(),
        rows_lost=lost,
        rows_overwritten=sum(s.rows for s in statements if s.op == "UPDATE"),
        tables=list(dict.fromkeys(s.table for s in by_rows)),
        who=who,
        how=how,
        statements=statements,
    )


def _damage(row: Mapping[str, Any]) -> StatementDamage:
    target = qualified_name(row["schema_name"], row["table_name"]) if row["table_name"] else None
    return StatementDamage(
        id=row["id"],
        at=row["at"],
        op=row["op"],
        command_tag=row["command_tag"],
        table=target or row["object_identity"] or "?",
        rows=row["rows"],
        rows_captured=row["rows_captured"],
        schema_name=row["schema_name"],
        table_name=row["table_name"],
    )


def _mark_cascades(
    rows: Sequence[Mapping[str, Any]],
    statements: Sequence[StatementDamage],
    fks: Sequence[Mapping[str, Any]],
) -> None:
    """
    Point each statement a cascade caused at the client statement that caused it.

    A cascade shares the transaction and the query text with its cause, and its table
    references the cause's table by a foreign key whose ON DELETE explains it.  A table
    dropped since has no foreign keys left to read: then the query text decides, as a
    client statement names its table and a cascade's table is not named.
    """
    links = {
        (fk["child_schema"], fk["child_table"], fk["parent_schema"], fk["parent_table"]): fk[
            "on_delete"
        ]
        for fk in fks
    }
    parent: dict[int, int] = {}
    for i, child in enumerate(rows):
        same_query = [
            j for j, other in enumerate(rows) if j != i and other["query"] == child["query"]
        ]
        by_key = [
            j
            for j in same_query
            if (on_delete := links.get(_pair(child, rows[j]))) is not None
            and _explains(child["op"], rows[j]["op"], on_delete)
            and (j < i or _table_of(child) != _table_of(rows[j]))  # self-references
        ]
        by_text = [
            j
            for j in same_query
            if _explains(child["op"], rows[j]["op"], None) and _named(rows[j]) and not _named(child)
        ]
        if by_key or len(by_text) == 1:
            parent[i] = (by_key or by_text)[0]
    for i in parent:
        root, seen = parent[i], {i}
        while root in parent and root not in seen:
            seen.add(root)
            root = parent[root]
        if root != i:  # tables that cascade into each other: both stay client statements
            statements[i].cascaded_from = statements[root].id


def _table_of(row: Mapping[str, Any]) -> tuple[str, str]:
    return (row["schema_name"], row["table_name"])


def _pair(child: Mapping[str, Any], cause: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (*_table_of(child), *_table_of(cause))


def _named(row: Mapping[str, Any]) -> bool:
    """Whether the statement's query text names its table."""
    name = row["table_name"]
    return bool(name) and re.search(rf"\b{re.escape(name)}\b", row["query"] or "", re.I) is not None


def _explains(child_op: str, cause_op: str, on_delete: str | None) -> bool:
    """
    Whether a *cause_op* on the referenced table makes PostgreSQL do *child_op*.

    *on_delete* is the foreign key's action (``c``, ``n``, ``d``), None when unknown.
    """
    if child_op == "TRUNCATE":
        return cause_op == "TRUNCATE"  # TRUNCATE ... CASCADE, whatever the ON DELETE
    if cause_op != "DELETE":
        return False
    if child_op == "DELETE":
        return on_delete in (None, "c")
    return child_op == "UPDATE" and on_delete in (None, "n", "d")


def _summary(who: Who, how: How, statements: Sequence[StatementDamage], first: datetime) -> str:
    roots = [s for s in statements if s.cascaded_from is None]
    main = max(roots, key=lambda s: s.rows)
    cascaded = [s for s in statements if s.cascaded_from is not None]
    actor = queries.actor_phrase(who)
    if who.inferred:  # "role x (...)" starts a sentence; an app user's name is data, kept
        actor = actor[0].upper() + actor[1:]
    text = f"{actor} {_did(main)}"
    if cascaded:
        parts = ", ".join(f"{s.table} {s.rows:,}" for s in cascaded)
        tables = "1 table" if len(cascaded) == 1 else f"{len(cascaded)} tables"
        text += f", cascading to {rows(sum(s.rows for s in cascaded))} in {tables} ({parts})"
    if len(roots) > 1:
        text += f", and {len(roots) - 1} more destructive statement(s) in the same transaction"
    text += f", at {format_ts(first)}"
    request = " ".join(filter(None, (how.request_method, how.request_path)))
    if request:
        text += f" via {request}"
    if how.correlation_id:
        text += f" (correlation id {how.correlation_id})"
    return text + "."


def _did(s: StatementDamage) -> str:
    if s.op == "DELETE":
        return f"deleted {rows(s.rows)} from {s.table}"
    if s.op == "TRUNCATE":
        return f"truncated {s.table} ({rows(s.rows)})"
    if s.op == "UPDATE":
        return f"updated {rows(s.rows)} of {s.table}"
    if s.command_tag == "DROP TABLE":
        return f"dropped table {s.table} ({rows(s.rows)})"
    return f"ran {s.kind} on {s.table} ({rows(s.rows)})"


# -- details of the ranked incidents ------------------------------------------------------


def _add_samples(conn: psycopg.Connection[Any], incidents: Sequence[Incident], n: int) -> None:
    statements = [s for i in incidents for s in i.statements]
    if not statements or n <= 0:
        return
    found = queries.samples(conn, [s.id for s in statements], n)
    for s in statements:
        s.sample = found.get(s.id, [])


def _add_prevention(conn: psycopg.Connection[Any], incidents: Sequence[Incident]) -> None:
    """Say, per incident, which guard or privilege would have stopped its client statements."""
    targets = {
        (str(s.schema_name), str(s.table_name), i.who.db_current_user or "")
        for i in incidents
        for s in _causes(i)
    }
    facts = {
        (f["schema_name"], f["table_name"], f["role"]): f
        for f in (queries.prevention_facts(conn, sorted(targets)) if targets else [])
    }
    for incident in incidents:
        advice: list[str] = []
        for cause in _causes(incident):
            key = (cause.schema_name, cause.table_name, incident.who.db_current_user or "")
            if fact := facts.get(key):
                advice.extend(_advice(cause, fact, incident.who))
        incident.prevention = list(dict.fromkeys(advice))


def _causes(incident: Incident) -> list[StatementDamage]:
    """The incident's client statements on tables (not the cascades they caused)."""
    return [s for s in incident.statements if s.cascaded_from is None and s.table_name]


def _advice(s: StatementDamage, fact: Mapping[str, Any], who: Who) -> list[str]:
    table, role = s.table, quote_ident(str(fact["role"]))
    guard = f"whodunit guard {shlex.quote(table)}"
    advice = []
    if not fact["table_exists"]:
        return [f"{table} no longer exists: once it is back, add `{guard} {_GUARD_FLAG[s.op]}`"]
    if s.op in ("DELETE", "UPDATE"):
        limit = fact["max_rows"]
        if limit is None:
            advice.append(f"role {role} may {s.op} on {table}; add `{guard} {_GUARD_FLAG[s.op]}`")
        elif s.rows > limit:
            advice.append(
                f"{table} has a --max-rows {limit} guard now: it was added since, or the "
                "transaction lifted it with whodunit.allow"
            )
        may = fact["may_delete"] if s.op == "DELETE" else fact["may_update"]
    elif s.op == "TRUNCATE":
        if not fact["no_truncate"]:
            advice.append(f"role {role} may TRUNCATE {table}; add `{guard} {_GUARD_FLAG[s.op]}`")
        may = fact["may_truncate"]
    else:
        if not fact["no_drop"]:
            advice.append(f"role {role} may drop {table}; add `{guard} {_GUARD_FLAG[s.op]}`")
        may = fact["owns"]
    if fact["superuser"]:
        advice.append(
            f"role {role} is a superuser, which may lift any guard: give people and apps "
            "roles without superuser"
        )
    elif who.inferred and may:
        verb = "DROP (it owns the table)" if s.op == "DDL" else s.op
        advice.append(
            f"role {role} is used from a direct database session and may still {verb} "
            f"on {table}: give people a read-only role"
            + ("" if s.op == "DDL" else f" (REVOKE {s.op} ON {table} FROM {role})")
        )
    return advice


def _why(conn: psycopg.Connection[Any], incident: Incident, source: LogSource | None) -> Why:
    why = Why()
    who, first = incident.who, incident.first_at
    cid = incident.how.correlation_id
    if cid:
        why.app_events = queries.app_events(conn, correlation_id=cid, limit=MAX_LINES)
        if source is not None:
            why.log_lines = source.lines(
                correlation_id=cid,
                since=first - LOG_MARGIN,
                until=incident.last_at + LOG_MARGIN,
            )[:MAX_LINES]
    actors = [a for a in (who.actor_id, who.actor_name) if a]
    if actors:
        before = Window(first - ERRORS_BEFORE, first)
        failures = queries.app_events(conn, actors=actors, failures=True, window=before, limit=20)
        # Failed logins are listed with the logins.
        errors = [e for e in failures if e.what not in queries.LOGIN_ACTIONS]
        if source is not None:
            errors += [
                queries.log_event(line)
                for line in source.lines(actor=actors[0], since=before.since, until=first)
                if line.level.lower() in queries.ERROR_LEVELS
            ]
        why.errors_before = sorted(errors, key=lambda e: e.at)
        why.logins = queries.logins(conn, actors, Window(first - LOGINS_BEFORE, incident.last_at))
    elif not who.app_context:
        addr = f" from {who.client_addr}" if who.client_addr else ""
        why.notes.append(
            "no app context was recorded, so no request, log line or login ties this to a "
            f"person: find backend pid {who.backend_pid} in the PostgreSQL server log "
            f"(log_line_prefix with %p, log_connections = on) and ask who can log in as "
            f"role {who.db_session_user}{addr}"
        )
    if cid and source is None:
        why.notes.append(f"give --logs or --loki-url to add the log lines of request {cid}")
    return why
