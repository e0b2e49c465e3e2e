"""
The focused questions over the audit trail, and the rows the incident report is built from.

Every query lives in ``investigate/sql/*.sql``; this module binds parameters and turns rows
into `whodunit.investigate.model` objects.  All of them read ``whodunit.statement``,
``row_change`` and ``app_event``, which needs a superuser today: `check_trail` says so
(and says when the trail's schema is too old) before anything else runs.

What each question costs, and how it scales, is in ``docs/investigate.md``.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from whodunit.errors import (
    ConfigError,
    PrivilegeError,
    SchemaNotInstalledError,
    SchemaVersionError,
    WhodunitError,
)
from whodunit.investigate.model import (
    ALL_TIME,
    Change,
    Event,
    How,
    LogLine,
    Who,
    Window,
)
from whodunit.investigate.tables import (
    Table,
    key_text,
    qualified_name,
    read_sql,
    resolve_table,
)

if TYPE_CHECKING:
    from whodunit.investigate.logs import LogSource

__all__ = [
    "ERROR_LEVELS",
    "LOGIN_ACTIONS",
    "MIN_SCHEMA_VERSION",
    "actor_phrase",
    "app_events",
    "check_trail",
    "destructive_statements",
    "foreign_keys",
    "history",
    "how_from",
    "log_event",
    "logins",
    "prevention_facts",
    "samples",
    "statement_event",
    "timeline",
    "trace",
    "who_deleted",
    "who_from",
]

#: The oldest trail schema the questions read (v2 added the lookup indexes and v3 the
#: context parsed once; older trails are upgraded in place by ``whodunit install``).
MIN_SCHEMA_VERSION = 3

# who-deleted looks at recent statements first: a deletion asked about is usually fresh,
# and each window is an index range scan of statement_at, not a scan of the whole table.
_SEARCH_WINDOWS = (timedelta(days=1), timedelta(days=30))
#: The app event actions of logins (``whodunit.audit``).
LOGIN_ACTIONS = ("auth.login_succeeded", "auth.login_failed")
# Context keys that show a statement came through the app even when nobody was logged in.
_REQUEST_KEYS = ("correlation_id", "request_method", "request_path")
#: Log levels that mean something failed.
ERROR_LEVELS = frozenset({"error", "critical", "fatal", "exception"})
# Log lines are looked for this far around a trace's first and last database event.
_TRACE_MARGIN = timedelta(hours=1)


def check_trail(conn: psycopg.Connection[Any]) -> None:
    """
    Make sure the trail can be read: installed, recent enough, and readable by this role.

    Raises:
        SchemaNotInstalledError: whodunit is not installed in the database.
        WhodunitError: the trail's schema is older than `MIN_SCHEMA_VERSION`.
        SchemaVersionError: the trail's schema is newer than this whodunit.
        PrivilegeError: the connected role may not read the trail.
    """
    from whodunit.db.install import installed_version, latest_version

    version = installed_version(conn)
    if version is None:
        raise SchemaNotInstalledError(
            "whodunit is not installed in this database, so there is no trail to "
            "investigate: run 'whodunit install'"
        )
    if version < MIN_SCHEMA_VERSION:
        raise WhodunitError(
            f"the trail's schema is v{version}, investigations need v{MIN_SCHEMA_VERSION} "
            "or later: run 'whodunit install' to upgrade it (the trail is kept)"
        )
    if version > latest_version():
        raise SchemaVersionError(
            f"the trail's schema is v{version}, newer than this whodunit knows "
            f"(v{latest_version()}): upgrade the whodunit package"
        )
    row = conn.execute(read_sql("trail_access")).fetchone()
    if not row or not row[0]:
        user = row[1] if row else "?"
        raise PrivilegeError(
            f"role {user!r} may not read the audit trail (whodunit.statement, row_change, "
            "app_event): connect as a superuser"
        )


def who_deleted(conn: psycopg.Connection[Any], table: str | Table, pk: str) -> Change | None:
    """
    Return the latest DELETE, TRUNCATE or DROP TABLE that removed the row, or None.

    Looks at the last day first, then the last 30 days, then everything older, so a
    recent deletion costs an index range scan, not a pass over the whole trail.

    Args:
        table: the table as typed (``User``, ``public."User"``; may be dropped since), or
            as `whodunit.investigate.tables.resolve_table` found it.
        pk: the row's key (see `whodunit.investigate.tables.key_text`).

    Raises:
        ConfigError: no such table in the trail, or *pk* is not a key of it.
    """
    target = _table(conn, table)
    key = key_text(conn, target, pk)
    now = datetime.now(UTC)
    bounds = [None, *(now - age for age in reversed(_SEARCH_WINDOWS)), None]
    # Newest window first: [now-1d, ∞), [now-30d, now-1d), (-∞, now-30d).
    for since, until in reversed(list(itertools.pairwise(bounds))):
        found = _row_changes(conn, "row_deletions", target, key, Window(since, until))
        if found:
            return found[-1]
    return None


def history(
    conn: psycopg.Connection[Any], table: str | Table, pk: str, *, window: Window = ALL_TIME
) -> list[Change]:
    """
    Return every audited change of one row, oldest first: its whole life.

    Args:
        table: the table as typed (may be dropped since), or as resolved.
        pk: the row's key.
        window: only changes in this time range (default: all time).

    Raises:
        ConfigError: no such table in the trail, or *pk* is not a key of it.
    """
    target = _table(conn, table)
    return _row_changes(conn, "row_changes", target, key_text(conn, target, pk), window)


def _table(conn: psycopg.Connection[Any], table: str | Table) -> Table:
    return table if isinstance(table, Table) else resolve_table(conn, table)


def _row_changes(
    conn: psycopg.Connection[Any], query: str, table: Table, key: str, window: Window
) -> list[Change]:
    params = {
        "schema": table.schema,
        "table": table.table,
        "key": key,
        "keys": list(table.key_columns),
        "since": window.since,
        "until": window.until,
    }
    rows = _fetch(conn, query, params)
    return [
        Change(
            statement_id=r["id"],
            at=r["at"],
            txid=int(r["txid"]),
            op=r["op"],
            command_tag=r["command_tag"],
            table=str(table),
            rows=r["rows"],
            old_row=r["old_row"],
            new_row=r["new_row"],
            who=who_from(r),
            how=how_from(r),
        )
        for r in rows
    ]


def timeline(
    conn: psycopg.Connection[Any],
    *,
    actor: str | None = None,
    db_user: str | None = None,
    client_addr: str | None = None,
    correlation_id: str | None = None,
    window: Window = ALL_TIME,
    limit: int = 500,
    log_source: LogSource | None = None,
) -> list[Event]:
    """
    Return what one actor, DB role, client address or request did, oldest first.

    Statements, app events and (for an actor or a correlation id, from *log_source*) log
    lines are merged by time; give at least one filter.

    Args:
        actor: the app user's id or name (``actor_id`` / ``actor_name``).
        db_user: a DB role, as logged in or as chosen with SET ROLE.
        client_addr: an IP address, as the database saw it or as the app recorded it.
        correlation_id: a request's correlation id.
        window: only events in this time range.
        limit: at most this many statements and this many app events.
        log_source: where to add the actor's or the request's log lines from.

    Raises:
        ConfigError: no filter given, or *client_addr* is not an IP address.
    """
    filters = {
        "actor": actor,
        "db_user": db_user,
        "client_addr": client_addr,
        "correlation_id": correlation_id,
    }
    if not any(filters.values()):
        raise ConfigError(
            "a timeline needs an actor, a DB role, a client address or a correlation id"
        )
    if client_addr is not None:
        try:
            ipaddress.ip_address(client_addr)
        except ValueError as exc:
            raise ConfigError(f"{client_addr!r} is not an IP address") from exc
    actors = [actor] if actor is not None else None
    params = {
        "actors": actors,
        "db_user": db_user,
        "client_addr": client_addr,
        "correlation_id": correlation_id,
        "since": window.since,
        "until": window.until,
        "limit": limit,
    }
    statements = [statement_event(r) for r in _fetch(conn, "timeline_statements", params)]
    events = app_events(
        conn,
        actors=actors,
        db_user=db_user,
        client_addr=client_addr,
        correlation_id=correlation_id,
        window=window,
        limit=limit,
    )
    lines: list[Event] = []
    if log_source is not None and (actor or correlation_id):
        found = log_source.lines(
            correlation_id=correlation_id, actor=actor, since=window.since, until=window.until
        )
        lines = [log_event(line) for line in found]
    return _merged(statements, events, lines)


def trace(
    conn: psycopg.Connection[Any], correlation_id: str, log_source: LogSource | None = None
) -> list[Event]:
    """
    Return one request's log lines, app events and database changes in one ordered list.

    Args:
        correlation_id: the request's id (header ``X-Request-ID``, log field
            ``correlation_id``, ``statement.correlation_id``).
        log_source: where the request's log lines come from, or None for the trail only.
    """
    database = timeline(conn, correlation_id=correlation_id)
    if log_source is None:
        return database
    window = ALL_TIME
    if database:
        window = Window(database[0].at - _TRACE_MARGIN, database[-1].at + _TRACE_MARGIN)
    lines = log_source.lines(correlation_id=correlation_id, since=window.since, until=window.until)
    return _merged(database, [log_event(line) for line in lines])


# -- the report's data ------------------------------------------------------------------


def destructive_statements(
    conn: psycopg.Connection[Any],
    window: Window,
    *,
    table: Table | None = None,
    actor: str | None = None,
    mass_rows: int = 100,
) -> list[dict[str, Any]]:
    """
    Return the destructive statements of *window* as rows, whole transactions, by time.

    A transaction is included when one of its destructive statements is on *table* and by
    *actor* (app user id or name, or DB role); then all of its destructive statements are.
    """
    params = {
        "since": window.since,
        "until": window.until,
        "schema": table.schema if table else None,
        "table": table.table if table else None,
        "actor": actor,
        "mass_rows": mass_rows,
    }
    return _fetch(conn, "destructive", params)


def samples(conn: psycopg.Connection[Any], ids: Sequence[int], n: int) -> dict[int, list[Any]]:
    """Return up to *n* removed rows (old images) of each statement, by statement id."""
    found: dict[int, list[Any]] = {i: [] for i in ids}
    for r in _fetch(conn, "samples", {"ids": list(ids), "n": n}):
        found[r["id"]].append(r["old_row"])
    return found


def foreign_keys(
    conn: psycopg.Connection[Any], tables: Iterable[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Return the foreign keys among *tables* (schema, name) with their ON DELETE action."""
    schemas, names = _columns(tables, 2)
    return _fetch(conn, "foreign_keys", {"schemas": schemas, "tables": names})


def prevention_facts(
    conn: psycopg.Connection[Any], targets: Iterable[tuple[str, str, str]]
) -> list[dict[str, Any]]:
    """Return each (schema, table, role)'s guard and what the role may still do to it."""
    schemas, tables, roles = _columns(targets, 3)
    return _fetch(conn, "prevention", {"schemas": schemas, "tables": tables, "roles": roles})


def app_events(
    conn: psycopg.Connection[Any],
    *,
    actors: Sequence[str] | None = None,
    db_user: str | None = None,
    client_addr: str | None = None,
    correlation_id: str | None = None,
    actions: Sequence[str] | None = None,
    failures: bool = False,
    window: Window = ALL_TIME,
    limit: int = 500,
) -> list[Event]:
    """
    Return app events by the given filters, oldest first.

    *actors* (app user ids and/or names) also match the auth events about those users
    (``resource_id``), so the failed logins of an account show though nobody was logged in.
    """
    params = {
        "actors": list(actors) if actors is not None else None,
        "db_user": db_user,
        "client_addr": client_addr,
        "correlation_id": correlation_id,
        "actions": list(actions) if actions is not None else None,
        "failures": failures,
        "since": window.since,
        "until": window.until,
        "limit": limit,
    }
    return [_app_event(r) for r in _fetch(conn, "app_events", params)]


def logins(conn: psycopg.Connection[Any], actors: Sequence[str], window: Window) -> list[Event]:
    """Return the successful and failed logins of a user (by id and/or name) in *window*."""
    return app_events(conn, actors=actors, actions=LOGIN_ACTIONS, window=window, limit=50)


# -- rows to model objects ----------------------------------------------------------------


def who_from(row: Mapping[str, Any]) -> Who:
    """Build the `Who` of a statement or app event row, with its one-line summary."""
    fields: dict[str, Any] = {n: row[n] for n in Who.__dataclass_fields__ if n in row}
    has_actor = row.get("actor_id") is not None or row.get("actor_name") is not None
    request = any(row.get(k) is not None for k in _REQUEST_KEYS)
    who = Who(**fields, inferred=not has_actor, app_context=has_actor or request)
    return replace(who, summary=_who_summary(who))


def actor_phrase(who: Who) -> str:
    """
    Name the actor for a sentence: the app user, or the DB role and how it connected.

    ``player1 (actor id 7)``, or ``role dev1 (no app context: a direct psql session over a
    local socket)``.
    """
    if not who.inferred:
        name = who.actor_name or who.actor_id
        return f"{name} (actor id {who.actor_id})" if who.actor_id else str(name)
    if who.app_context:
        return f"an anonymous app request as role {who.db_current_user}"
    session = f"{who.application_name} session" if who.application_name else "database session"
    return f"role {who.db_current_user} (no app context: a direct {session} {_where(who)})"


def _who_summary(who: Who) -> str:
    role = str(who.db_current_user)
    if who.db_session_user and who.db_session_user != role:
        role += f" (logged in as {who.db_session_user})"
    if not who.inferred:
        return f"{actor_phrase(who)} as DB role {role}"
    if who.app_context:
        return f"an anonymous app request (no actor recorded) as DB role {role}"
    app = who.application_name or "no application_name"
    return f"no app context: a direct database session ({app}) as role {role} {_where(who)}"


def _where(who: Who) -> str:
    return f"from {who.client_addr}" if who.client_addr else "over a local socket"


def how_from(row: Mapping[str, Any]) -> How:
    """Build the `How` of a statement row."""
    return How(**{name: row.get(name) for name in How.__dataclass_fields__})


def statement_event(row: Mapping[str, Any]) -> Event:
    """Turn a statement row into a timeline entry."""
    request = " ".join(filter(None, (row.get("request_method"), row.get("request_path"))))
    return Event(
        at=row["at"],
        source="statement",
        what=row["command_tag"] or row["op"],
        target=qualified_name(row["schema_name"], row["table_name"]) or None,
        id=row["id"],
        rows=row["rows"],
        detail=request or _one_line(row["query"]),
        correlation_id=row["correlation_id"],
        who=who_from(row),
    )


def log_event(line: LogLine) -> Event:
    """Turn a log line into a timeline entry."""
    return Event(
        at=line.ts,
        source="log",
        what=line.level,
        target=line.origin or None,
        detail=line.message,
        correlation_id=line.correlation_id,
        outcome="failure" if line.level.lower() in ERROR_LEVELS else None,
        who=Who(
            actor_id=line.user_id,
            actor_name=line.user_name,
            inferred=line.user_id is None and line.user_name is None,
            app_context=True,
            summary=line.user_name or line.user_id or "",
        ),
    )


def _app_event(row: Mapping[str, Any]) -> Event:
    resource = ":".join(filter(None, (row["resource_type"], row["resource_id"])))
    return Event(
        at=row["at"],
        source="app_event",
        what=row["action"],
        target=resource or None,
        id=row["id"],
        outcome=row["outcome"],
        detail=row["error"],
        correlation_id=row["correlation_id"],
        who=who_from(row),
    )


def _one_line(text: str | None, width: int = 120) -> str | None:
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _merged(*streams: list[Event]) -> list[Event]:
    return list(heapq.merge(*streams, key=lambda e: e.at))


def _columns(rows: Iterable[tuple[str, ...]], width: int) -> list[list[str]]:
    """Transpose tuples into one list per column (unnest() takes arrays)."""
    columns: list[list[str]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


def _fetch(
    conn: psycopg.Connection[Any], name: str, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Run ``sql/<name>.sql`` with the shared statement columns filled in."""
    query = sql.SQL(read_sql(name)).format(statement_columns=sql.SQL(read_sql("statement_columns")))
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()
