"""
The application's context — which person, which request — carried into PostgreSQL.

The audit triggers read one transaction-local setting, ``whodunit.context`` (a JSON
object, see ``docs/context.md``).  This module keeps the current context in a
`contextvars.ContextVar` (so each thread and each asyncio task has its own) and writes
it into every transaction an application opens:

- `instrument_sqlalchemy` hooks an `Engine`, so every transaction on it carries the
  context of the request or job that opened it;
- `set_db_context` does the same for one raw psycopg 3 or psycopg2 connection;
- `acting_as` gives background jobs and scripts an actor of their own;
- `push_context` / `pop_context` are what the Flask extension uses per request.

The setting is always written with ``SET LOCAL`` (``set_config(..., true)``): it dies with the
transaction, so it cannot leak to the next user of a pooled connection or, behind
PgBouncer in transaction mode, to another client.

Speed: a round trip of its own would cost about half the throughput of a one-row write
transaction, so the context rides on a trip the driver makes anyway.  With psycopg 3 the
driver's own ``BEGIN`` becomes ``BEGIN; SET LOCAL whodunit.context = ...`` (one simple-protocol
message); with psycopg2, whose statements go out as simple-protocol text, the
``SET LOCAL`` is put in front of the transaction's first statement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

import orjson

from whodunit.db import sql_text

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = [
    "CONTEXT_KEYS",
    "UserLoader",
    "acting_as",
    "active_connection",
    "context_json",
    "current_context",
    "instrument_sqlalchemy",
    "pop_context",
    "push_context",
    "set_db_context",
    "uninstrument_sqlalchemy",
]

#: The keys the audit trail stores in columns of their own (shared contract); any other
#: key is kept in the statement's ``context`` jsonb.
CONTEXT_KEYS: tuple[str, ...] = (
    "actor_id",
    "actor_name",
    "correlation_id",
    "trace_id",
    "method",
    "path",
    "client_ip",
    "user_agent",
)

#: Returns ``(actor_id, actor_name)`` for the current request, or None when anonymous.
UserLoader = Callable[[], "tuple[object, object] | None"]

# A request path or a user agent is the client's to choose: cap what each value may cost.
MAX_VALUE_CHARS = 1024

_SET_CONTEXT = sql_text("set_context.sql")
_PENDING = "whodunit.pending_context"

_internal = logging.getLogger("whodunit.internal")


class _Scope:
    """
    One layer of context: fixed fields plus, for a request, a lazily called user loader.

    Never changed once built; the JSON it encodes to is cached on it, because a request
    usually opens several transactions with the same context.
    """

    __slots__ = ("_encoded", "fields", "user")

    def __init__(self, fields: dict[str, object], user: UserLoader | None) -> None:
        self.fields = fields
        self.user = user
        self._encoded: tuple[object, str | None] | None = None

    def resolve(self) -> dict[str, object]:
        """Return the fields with the user loader's answer merged in."""
        actor = _load_user(self.user)
        if actor is None:
            return dict(self.fields)
        return {**self.fields, "actor_id": actor[0], "actor_name": actor[1]}

    def encoded(self) -> str | None:
        """Return the context as JSON, None when it is empty."""
        actor = _load_user(self.user)
        cached = self._encoded
        if cached is not None and cached[0] == actor:
            return cached[1]
        fields = self.fields
        if actor is not None:
            fields = {**fields, "actor_id": actor[0], "actor_name": actor[1]}
        text = _encode(fields)
        self._encoded = (actor, text)
        return text


_SCOPE: ContextVar[_Scope | None] = ContextVar("whodunit_db_context", default=None)
# The instrumented SQLAlchemy connection whose transaction this thread or task opened last.
_ACTIVE: ContextVar[Connection | None] = ContextVar("whodunit_active_connection", default=None)


def push_context(
    fields: Mapping[str, object] | None = None, *, user: UserLoader | None = None
) -> Token[_Scope | None]:
    """
    Layer context fields over the current ones until `pop_context` is given the token.

    This is the low-level form of `acting_as`, for frameworks whose start and end of a
    request are two separate hooks (the Flask extension uses it).  Fields set to None
    are removed; values are capped at `MAX_VALUE_CHARS` characters.

    Args:
        fields: Context keys (`CONTEXT_KEYS` or extras) and their values.
        user: Called whenever the context is needed, so a login during the request is
            seen by the transactions after it; it wins over inherited ``actor_*`` fields.

    Returns:
        The token for `pop_context`.
    """
    outer = _SCOPE.get()
    merged = dict(outer.fields) if outer is not None else {}
    if fields:
        for key, value in fields.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = _capped(value)
    if user is None and outer is not None and not _sets_actor(fields):
        user = outer.user
    return _SCOPE.set(_Scope(merged, user))


def pop_context(token: Token[_Scope | None]) -> None:
    """Restore the context as it was before the `push_context` that returned *token*."""
    _SCOPE.reset(token)


@contextmanager
def acting_as(
    actor_id: object = None, actor_name: object = None, **extras: object
) -> Iterator[None]:
    """
    Name the actor for the database changes made inside the ``with`` block.

    For background jobs, CLI scripts and admin tasks, where no request names a user::

        with acting_as(actor_id="cron:nightly-cleanup", actor_name="nightly cleanup"):
            session.execute(delete(Session).where(Session.expired))
            session.commit()

    Inside a request it overrides the request's user and keeps its correlation id.

    Args:
        actor_id: Stored as ``actor_id`` (any value; written as text).
        actor_name: Stored as ``actor_name``.
        extras: Any other context keys (``correlation_id=...``, ``job="..."``).
    """
    token = push_context({"actor_id": actor_id, "actor_name": actor_name, **extras})
    try:
        yield
    finally:
        pop_context(token)


def current_context() -> dict[str, object]:
    """
    Return the context the next transaction would carry.

    Returns:
        Context keys and values; empty outside any request, job or `acting_as` block.
    """
    scope = _SCOPE.get()
    return scope.resolve() if scope is not None else {}


def context_json() -> str | None:
    """
    Return the current context as the JSON text stored in ``whodunit.context``.

    Returns:
        The JSON object as text, or None when there is no context to send.
    """
    scope = _SCOPE.get()
    return scope.encoded() if scope is not None else None


def active_connection() -> Connection | None:
    """
    Return the instrumented SQLAlchemy connection with a transaction open in this context.

    `whodunit.audit` writes a successful action's event through it, so the event commits
    or rolls back with the action's own changes.

    Returns:
        The `Connection`, or None when no transaction of an instrumented engine is open.
    """
    conn = _ACTIVE.get()
    if conn is None or conn.closed or not conn.in_transaction():
        return None
    return conn


def set_db_context(connection: Any) -> bool:
    """
    Write the current context into the connection's current (or next) transaction.

    For code that uses psycopg 3 or psycopg2 directly::

        with psycopg.connect(dsn) as conn:
            set_db_context(conn)          # starts the transaction; no extra round trip
            conn.execute("DELETE FROM game WHERE id = %s", (game_id,))

    On an idle psycopg 3 connection it opens the transaction itself, in the round trip
    that would have sent ``BEGIN`` anyway.  In a transaction already open (and always
    with psycopg2) it costs one round trip: SQLAlchemy users get it for free with
    `instrument_sqlalchemy`.

    Args:
        connection: A ``psycopg.Connection`` or a ``psycopg2`` connection.

    Returns:
        True if a context was written, False when there was none to write.

    Raises:
        TypeError: *connection* is neither driver's connection.
        ValueError: The connection is in autocommit mode outside a transaction, where a
            transaction-local setting would be gone before the next statement.
    """
    text = context_json()
    if text is None:
        return False
    if _is_psycopg3(connection):
        _set_psycopg3(connection, text)
    elif _is_psycopg2(connection):
        _set_psycopg2(connection, text)
    else:
        raise TypeError(
            f"set_db_context needs a psycopg 3 or psycopg2 connection, not "
            f"{type(connection).__module__}.{type(connection).__qualname__}"
        )
    return True


def instrument_sqlalchemy(engine: Engine) -> None:
    """
    Make every transaction on *engine* carry the current context.

    Call it once where the engine is made (with Flask-SQLAlchemy:
    ``instrument_sqlalchemy(db.engine)`` inside the app context).  Calling it again on
    the same engine changes nothing.  Works with the ``postgresql+psycopg`` and
    ``postgresql+psycopg2`` dialects without an extra round trip; other PostgreSQL
    drivers get a separate ``SET LOCAL`` before their first statement.

    Args:
        engine: A SQLAlchemy `Engine` (for an ``AsyncEngine``, pass its ``sync_engine``).
    """
    from sqlalchemy import event

    if not event.contains(engine, "begin", _on_begin):
        event.listen(engine, "begin", _on_begin)
        event.listen(engine, "before_cursor_execute", _before_cursor_execute, retval=True)
        event.listen(engine, "commit", _on_end)
        event.listen(engine, "rollback", _on_end)


def uninstrument_sqlalchemy(engine: Engine) -> None:
    """Undo `instrument_sqlalchemy` (tests, or turning the bridge off at run time)."""
    from sqlalchemy import event

    if event.contains(engine, "begin", _on_begin):
        event.remove(engine, "begin", _on_begin)
        event.remove(engine, "before_cursor_execute", _before_cursor_execute)
        event.remove(engine, "commit", _on_end)
        event.remove(engine, "rollback", _on_end)


# --- SQLAlchemy events -------------------------------------------------------------------


def _on_begin(conn: Connection) -> None:
    text = context_json()
    dbapi = conn.connection.dbapi_connection
    pending: str | None = None
    if text is not None and not (_is_psycopg3(dbapi) and _begin_psycopg3(dbapi, text)):
        pending = text
    # Always overwrite: the info dict lives as long as the pooled DB-API connection.
    conn.connection.info[_PENDING] = pending
    _ACTIVE.set(conn)


def _on_end(conn: Connection) -> None:
    if _ACTIVE.get() is conn:
        _ACTIVE.set(None)


def _before_cursor_execute(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> tuple[str, Any]:
    info = conn.connection.info
    text = info.get(_PENDING)
    if text is None:
        return statement, parameters
    info[_PENDING] = None
    statement_text = _SET_CONTEXT.format(context=_literal(text))
    if _is_psycopg2(cursor.connection) and not executemany and cursor.name is None:
        # psycopg2 sends the statement as text in one simple-protocol message, which may
        # hold several statements; the cursor keeps the last one's result.
        if parameters or context is None or not context.no_parameters:
            statement_text = statement_text.replace("%", "%%")  # the driver interpolates
        return f"{statement_text}; {statement}", parameters
    # Executemany, a named (server-side) cursor or another driver: a trip of its own.
    with cursor.connection.cursor() as setter:
        setter.execute(statement_text)
    return statement, parameters


# --- psycopg 3 ---------------------------------------------------------------------------


def _is_psycopg3(connection: Any) -> bool:
    module = type(connection).__module__
    return module.startswith("psycopg.") or module == "psycopg"


def _set_psycopg3(connection: Any, text: str) -> None:
    from psycopg import pq

    status = connection.info.transaction_status
    if status == pq.TransactionStatus.IDLE and connection.autocommit:
        raise ValueError(
            "set_db_context: the connection is in autocommit mode and no transaction is "
            "open, so the context would be gone before the next statement; call it inside "
            "'with conn.transaction():'"
        )
    if status == pq.TransactionStatus.IDLE and _begin_psycopg3(connection, text):
        return
    connection.execute(_SET_CONTEXT.format(context=_literal(text)).encode())


def _begin_psycopg3(connection: Any, text: str) -> bool:
    """
    Open the transaction with the context set, in one round trip; False if not possible.

    psycopg 3 sends ``BEGIN`` by itself before the first statement of a transaction,
    unless libpq already reports one open; so sending ``BEGIN; SET LOCAL ...``
    through the libpq connection takes that trip's place.
    """
    from psycopg import pq

    pgconn = connection.pgconn
    if (
        connection.autocommit
        or pgconn.transaction_status != pq.TransactionStatus.IDLE
        or pgconn.pipeline_status != pq.PipelineStatus.OFF
    ):
        return False
    command = f"{_begin_command(connection)}; {_SET_CONTEXT.format(context=_literal(text))}"
    result = pgconn.exec_(command.encode())
    if result.status != pq.ExecStatus.COMMAND_OK:
        import psycopg

        message = (result.error_message or pgconn.error_message).decode(errors="replace")
        raise psycopg.OperationalError(f"whodunit could not open the transaction: {message}")
    return True


def _begin_command(connection: Any) -> str:
    """The ``BEGIN`` psycopg itself would send, with the connection's transaction options."""
    parts = ["BEGIN"]
    if connection.isolation_level is not None:
        parts.append("ISOLATION LEVEL " + connection.isolation_level.name.replace("_", " "))
    if connection.read_only is not None:
        parts.append("READ ONLY" if connection.read_only else "READ WRITE")
    if connection.deferrable is not None:
        parts.append("DEFERRABLE" if connection.deferrable else "NOT DEFERRABLE")
    return " ".join(parts)


# --- psycopg2 ----------------------------------------------------------------------------


def _is_psycopg2(connection: Any) -> bool:
    return type(connection).__module__.startswith("psycopg2")


def _set_psycopg2(connection: Any, text: str) -> None:
    from psycopg2 import extensions

    idle = connection.info.transaction_status == extensions.TRANSACTION_STATUS_IDLE
    if idle and connection.autocommit:
        raise ValueError(
            "set_db_context: the connection is in autocommit mode and no transaction is "
            "open, so the context would be gone before the next statement; turn "
            "autocommit off or run BEGIN first"
        )
    with connection.cursor() as cursor:
        cursor.execute(_SET_CONTEXT.format(context=_literal(text)))


# --- helpers -----------------------------------------------------------------------------


def _literal(text: str) -> str:
    """
    Quote *text* as a string constant, whatever the server's standard_conforming_strings.

    ``SET`` takes no bind parameters, so the value is written into the statement; the
    ``E''`` form reads backslashes the same way on every server and connection.
    """
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _encode(fields: Mapping[str, object]) -> str | None:
    if not fields:
        return None
    return orjson.dumps(fields, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _capped(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        return value[:MAX_VALUE_CHARS]
    return value


def _sets_actor(fields: Mapping[str, object] | None) -> bool:
    return fields is not None and ("actor_id" in fields or "actor_name" in fields)


_failed_loaders: set[int] = set()


def _load_user(loader: UserLoader | None) -> tuple[object, object] | None:
    """Call the user loader; a failing loader means "anonymous", reported once, never raised."""
    if loader is None:
        return None
    try:
        actor = loader()
    except Exception as error:  # noqa: BLE001 - the app's loader must not break its writes
        if id(loader) not in _failed_loaders:
            _failed_loaders.add(id(loader))
            _internal.warning(
                "whodunit user loader %r failed (%s: %s); treating the user as anonymous",
                loader,
                type(error).__name__,
                error,
            )
        return None
    if actor is None:
        return None
    return (_capped(actor[0]), _capped(actor[1]))
