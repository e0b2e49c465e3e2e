"""
Application events — "who did what to which thing, and did it work" — in the audit trail.

The triggers see rows change; they cannot see that a user exported a report, failed to
log in, or was made an admin.  This module records those events in ``whodunit.app_event``
(through ``whodunit.record_app_event()``) and logs each one as a JSON line:

- `audit_log` decorates a function (sync or async) and records each call's outcome;
- `login_succeeded`, `login_failed` and `permission_changed` record the auth events the
  watcher's detectors read (brute force, privilege changes);
- `configure` names the database for events written in a transaction of their own.

Where an event is written decides whether it can lie, so (``docs/audit.md``):

- a success goes into the caller's transaction when one is open (an instrumented
  SQLAlchemy engine's, see `whodunit.context.active_connection`), so an action that
  rolls back leaves no "success" behind;
- a failure, and every auth event, goes into a transaction of its own, because the
  caller's will most likely roll back and the record must survive it.

Audit records are never dropped silently: a success that cannot be recorded raises
`AuditWriteError`; a failure that cannot be recorded (the app's own exception wins) is
logged at ERROR and counted in `unrecorded_events`.

Neither Flask nor SQLAlchemy is imported until an engine is used.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar, cast

import orjson

from whodunit.context import active_connection, current_context
from whodunit.db import sql_text
from whodunit.errors import AuditWriteError, ConfigError
from whodunit.log import _qualified_name, _safe_str, get_logger
from whodunit.redact import Redactor

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.sql.elements import TextClause

__all__ = [
    "LOGIN_FAILED",
    "LOGIN_SUCCEEDED",
    "PERMISSION_CHANGED",
    "AuditWriteError",
    "ResourceId",
    "audit_log",
    "configure",
    "login_failed",
    "login_succeeded",
    "permission_changed",
    "unrecorded_events",
]

#: The ``action`` of the auth events (a contract: the watcher's detectors query them).
LOGIN_SUCCEEDED = "auth.login_succeeded"
LOGIN_FAILED = "auth.login_failed"
PERMISSION_CHANGED = "auth.permission_changed"

#: An argument's name, or a function of the bound arguments (by name, defaults applied).
ResourceId = str | Callable[[Mapping[str, Any]], object] | None

P = ParamSpec("P")
R = TypeVar("R")

_FIELDS = (
    "action",
    "resource_type",
    "resource_id",
    "outcome",
    "error",
    "duration_ms",
    "details",
    "context",
)
_TEMPLATE = sql_text("record_app_event.sql")
_PSYCOPG_SQL = _TEMPLATE.format_map({name: f"%({name})s" for name in _FIELDS})
_SQLALCHEMY_SQL = _TEMPLATE.format_map({name: f":{name}" for name in _FIELDS})
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS
_DEFAULT_REDACTOR = Redactor()

_logger = get_logger("whodunit.audit")
# The events are the application's records, not whodunit's chatter: keep them at INFO
# when configure_logging() turns the "whodunit" logger down to WARNING.
if logging.getLogger("whodunit.audit").level == logging.NOTSET:
    logging.getLogger("whodunit.audit").setLevel(logging.INFO)

_Params = dict[str, object]
_Target = Callable[[_Params], int]

_lock = threading.Lock()
_target: _Target | None = None
_redactor: Redactor = _DEFAULT_REDACTOR
_unrecorded = 0
_warned = False


def configure(
    *,
    engine: Engine | None = None,
    dsn: str | None = None,
    redactor: Redactor | None = None,
) -> None:
    """
    Name the database for events written in a transaction of their own.

    Failures and auth events are always written that way, and successes when no
    transaction is open.  Unconfigured, such an event goes through the engine of the
    caller's open transaction if there is one, else to the log only (with a one-time
    warning).  Calling it again replaces the whole configuration; ``configure()``
    resets it.

    Args:
        engine: A SQLAlchemy `Engine` (sync: ``AsyncEngine`` is not supported yet);
            each event takes a pooled connection for one short transaction.
        dsn: A libpq connection string or URI; each event opens a psycopg connection
            of its own (10 s connect timeout unless the DSN sets ``connect_timeout``).
            For many events per second, prefer an engine and its pool.
        redactor: The policy for arguments, details and error texts; the default
            policy of `whodunit.redact` when None.

    Raises:
        TypeError: Both *engine* and *dsn* were given.
        ConfigError: *dsn* is not a connection string.

    .. versionadded:: 0.1
    """
    global _target, _redactor, _warned
    if engine is not None and dsn is not None:
        raise TypeError(
            "whodunit.audit.configure: pass engine= or dsn=, not both: events go to one database"
        )
    target: _Target | None = None
    if engine is not None:
        target = functools.partial(_write_engine, engine)
    elif dsn is not None:
        target = _dsn_target(dsn)
    with _lock:
        _target = target
        _redactor = redactor if redactor is not None else _DEFAULT_REDACTOR
        _warned = False


def unrecorded_events() -> int:
    """
    Return how many events reached the log but not the database since the process began.

    For health checks and metrics: it counts failures that could not be written (the
    app's exception was raised as it was) and events with no database configured.

    Returns:
        The count; it only grows.

    .. versionadded:: 0.1
    """
    return _unrecorded


def audit_log(
    action: str,
    resource_type: str | None = None,
    resource_id: ResourceId = None,
    *,
    record_args: bool | Iterable[str] = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """
    Record every call of the decorated function as an application event.

    ::

        @audit_log("order.refund", "order", resource_id="order_id", record_args=True)
        def refund(order_id: int, amount: Decimal, card_token: str) -> None: ...

        @audit_log("report.export", "report", resource_id=lambda args: args["report"].id)
        async def export(report: Report) -> bytes: ...

    Each call writes one row (actor and request from the current context, outcome,
    duration) and one log line on ``whodunit.audit``.  The function's exception is
    re-raised as it was; ``BaseException`` s that are not ``Exception`` s (cancellation,
    ``SystemExit``) pass through unrecorded.  Where the row is written, and what happens
    when it cannot be, is in the module docstring and ``docs/audit.md``.

    Async functions write in their own transaction through `asyncio.to_thread`, so the
    event loop does not wait for the database; a success inside a transaction is
    written on that connection, as the function's own statements are.

    Args:
        action: What was done, as a stable dotted name (``order.refund``).
        resource_type: The kind of thing acted on (``order``).
        resource_id: Which one: the name of an argument, or a function given the bound
            arguments by name; stored as text, None when it gives None.
        record_args: True to store all arguments in ``details["args"]``, or the names of
            those to store; always redacted (a ``password`` argument never lands).

    Returns:
        The decorator; the wrapped function keeps its name, docstring and signature.

    Raises:
        TypeError: A named argument does not exist, or the function is a generator.
        AuditWriteError: (from the wrapped function) its success could not be recorded.

    .. versionadded:: 0.1
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        audited = _Audited(func, action, resource_type, resource_id, record_args)
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                call = audited.start(args, kwargs)
                try:
                    result = await cast("Awaitable[Any]", func(*args, **kwargs))
                except Exception as error:
                    with suppress(AuditWriteError):  # logged and counted; the app's error wins
                        await _arecord(call.failed(error), own_transaction=True)
                    raise
                await _arecord(call.succeeded(), own_transaction=False)
                return result

            return cast("Callable[P, R]", async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            call = audited.start(args, kwargs)
            try:
                result = func(*args, **kwargs)
            except Exception as error:
                with suppress(AuditWriteError):  # logged and counted; the app's error wins
                    _record(call.failed(error), own_transaction=True)
                raise
            _record(call.succeeded(), own_transaction=False)
            return result

        return wrapper

    return decorate


def login_succeeded(
    user_id: object, user_name: object = None, *, method: str = "password", **details: object
) -> int | None:
    """
    Record a successful login (action ``auth.login_succeeded``).

    When the context names no actor yet (the usual case: the request was anonymous until
    now), the user logging in is recorded as the actor.

    Args:
        user_id: The user's id; stored in ``resource_id``.
        user_name: Their name, stored in ``details["user_name"]``.
        method: How they proved it (``password``, ``sso``, ``api_key``, ...).
        details: Anything else worth keeping; redacted.

    Returns:
        The event's id, or None when no database is configured.

    Raises:
        AuditWriteError: The event could not be written.

    .. versionadded:: 0.1
    """
    context = current_context()
    if context.get("actor_id") is None:
        context.update(actor_id=user_id, actor_name=user_name)
    event = _event(
        LOGIN_SUCCEEDED,
        "user",
        user_id,
        details={**details, "user_name": user_name, "method": method},
        context=context,
    )
    return _record(event, own_transaction=True)


def login_failed(
    username: object,
    *,
    reason: str = "invalid_credentials",
    method: str = "password",
    **details: object,
) -> int | None:
    """
    Record a failed login (action ``auth.login_failed``, outcome ``failure``).

    The brute-force detector counts these per ``resource_id`` (the username as typed)
    and per ``client_ip`` (from the context) over a time window.

    Args:
        username: The username as the client typed it; stored in ``resource_id``.
        reason: Why it failed (``invalid_credentials``, ``unknown_user``, ``locked``,
            ``mfa_failed``, ...); stored in ``error``.
        method: How the client tried (``password``, ``sso``, ``api_key``, ...).
        details: Anything else worth keeping; redacted.

    Returns:
        The event's id, or None when no database is configured.

    Raises:
        AuditWriteError: The event could not be written.

    .. versionadded:: 0.1
    """
    event = _event(
        LOGIN_FAILED,
        "user",
        username,
        outcome="failure",
        error=reason,
        details={**details, "method": method},
    )
    return _record(event, own_transaction=True)


def permission_changed(
    target_user: object, permission: str, *, granted: bool, **details: object
) -> int | None:
    """
    Record that a user was granted or lost a permission (``auth.permission_changed``).

    The actor is whoever the context names (the admin); the user changed is the resource.

    Args:
        target_user: The id of the user whose permissions changed; ``resource_id``.
        permission: The permission or role (``admin``, ``orders:refund``).
        granted: True when given, False when taken away.
        details: Anything else worth keeping (a reason, a ticket); redacted.

    Returns:
        The event's id, or None when no database is configured.

    Raises:
        AuditWriteError: The event could not be written.

    .. versionadded:: 0.1
    """
    event = _event(
        PERMISSION_CHANGED,
        "user",
        target_user,
        details={**details, "permission": permission, "granted": granted},
    )
    return _record(event, own_transaction=True)


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Event:
    """One event, redacted and encoded: what the row and the log line are made from."""

    action: str
    outcome: str
    params: _Params
    log_fields: dict[str, object]

    @property
    def message(self) -> str:
        """The log line's message: the fields carry the rest."""
        return f"{self.action} {self.outcome}"


def _event(
    action: str,
    resource_type: str | None,
    resource_id: object,
    *,
    outcome: str = "success",
    error: str | None = None,
    error_type: str | None = None,
    duration_ms: float | None = None,
    details: Mapping[str, object] | None = None,
    context: Mapping[str, object] | None = None,
) -> _Event:
    """
    Build an event, redacted and encoded, in the caller's thread.

    The context lives in context variables and the redaction policy may change, so both
    are read here, before an async caller hands the write to another thread.
    """
    redactor = _redactor
    if context is None:
        context = current_context()
    rid = None if resource_id is None else _safe_str(resource_id)
    error = None if error is None else redactor.redact_text(error)
    redacted = None if details is None else redactor.redact_fields(details)
    params: _Params = {
        "action": action,
        "resource_type": resource_type,
        "resource_id": rid,
        "outcome": outcome,
        "error": error if error_type is None else f"{error_type}: {error}",
        "duration_ms": duration_ms,
        "details": None if redacted is None else _json(redacted, redactor),
        "context": _json(context, redactor),
    }
    optional: dict[str, object] = {
        "resource.type": resource_type,
        "resource.id": rid,
        "duration_ms": duration_ms,
        "error.type": error_type,
        "error.message": error,
        "event.details": redacted,
        "user.id": context.get("actor_id"),
        "user.name": context.get("actor_name"),
        "correlation_id": context.get("correlation_id"),
    }
    fields: dict[str, object] = {"event.action": action, "event.outcome": outcome}
    fields.update((key, value) for key, value in optional.items() if value is not None)
    return _Event(action, outcome, params, fields)


def _json(value: object, redactor: Redactor) -> str:
    """Encode for a jsonb argument; what JSON cannot hold is kept as redacted text."""

    def default(obj: object) -> str:
        return redactor.redact_text(_safe_str(obj))

    try:
        return orjson.dumps(value, default=default, option=_JSON_OPTIONS).decode()
    except orjson.JSONEncodeError:  # e.g. an int beyond 64 bits: keep the event, as text
        return orjson.dumps(default(value)).decode()


class _Audited:
    """What one `audit_log` decoration needs on every call, worked out once."""

    __slots__ = ("action", "record_names", "resource_id", "resource_type", "signature")

    def __init__(
        self,
        func: Callable[..., object],
        action: str,
        resource_type: str | None,
        resource_id: ResourceId,
        record_args: bool | Iterable[str],
    ) -> None:
        name = getattr(func, "__qualname__", repr(func))
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"audit_log cannot audit the generator {name}: its work runs while it is "
                "iterated, after the call returns; decorate the function that consumes it"
            )
        self.action = action
        self.resource_type = resource_type
        self.resource_id = resource_id
        needs_arguments = resource_id is not None or record_args is not False
        self.signature = inspect.signature(func) if needs_arguments else None
        parameters = self.signature.parameters if self.signature is not None else {}
        if record_args is True:
            names: tuple[str, ...] = tuple(parameters)
        elif record_args is False:
            names = ()
        else:
            names = (record_args,) if isinstance(record_args, str) else tuple(record_args)
        wanted = [*names, resource_id] if isinstance(resource_id, str) else names
        unknown = [n for n in wanted if n not in parameters]
        if unknown:
            raise TypeError(
                f"audit_log on {name}: no argument named {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(parameters) or 'no arguments'}"
            )
        self.record_names = names

    def start(self, args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
        """Bind the arguments and start the clock, before the function can change them."""
        arguments: Mapping[str, Any] = {}
        if self.signature is not None:
            bound = self.signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
        resource_id = self.resource_id
        if isinstance(resource_id, str):
            rid = arguments[resource_id]
        else:
            rid = resource_id(arguments) if resource_id is not None else None
        recorded = {name: arguments[name] for name in self.record_names}
        return _Call(self, rid, recorded, time.perf_counter())


class _Call(NamedTuple):
    audited: _Audited
    resource_id: object
    arguments: dict[str, object]
    started: float

    def succeeded(self) -> _Event:
        return self._event()

    def failed(self, error: Exception) -> _Event:
        return self._event(_safe_str(error), _qualified_name(type(error)))

    def _event(self, error: str | None = None, error_type: str | None = None) -> _Event:
        audited = self.audited
        return _event(
            audited.action,
            audited.resource_type,
            self.resource_id,
            outcome="success" if error_type is None else "failure",
            error=error,
            error_type=error_type,
            duration_ms=round((time.perf_counter() - self.started) * 1000, 3),
            details={"args": self.arguments} if self.audited.record_names else None,
        )


# --- writing -----------------------------------------------------------------------------


class _Route(NamedTuple):
    """Where one event goes: a write returning the row id, None for "nowhere"."""

    write: Callable[[], int] | None
    own_transaction: bool


def _route(event: _Event, *, own_transaction: bool) -> _Route:
    conn = active_connection()
    if conn is not None and not own_transaction:
        return _Route(functools.partial(_execute, conn, event.params), own_transaction=False)
    target = _target
    if target is None and conn is not None:
        target = functools.partial(_write_engine, conn.engine)
    if target is None:
        return _Route(None, own_transaction=True)
    # In a copy of the context: an instrumented engine's begin and commit hooks would
    # otherwise make this short transaction, then nothing, the caller's active one.
    run = contextvars.copy_context().run
    return _Route(functools.partial(run, target, event.params), own_transaction=True)


def _record(event: _Event, *, own_transaction: bool) -> int | None:
    route = _route(event, own_transaction=own_transaction)
    try:
        event_id = route.write() if route.write is not None else None
    except Exception as exc:  # any failure to write, driver's or pool's: reported alike
        raise _not_recorded(event, exc, route) from exc
    _recorded(event, event_id, route)
    return event_id


async def _arecord(event: _Event, *, own_transaction: bool) -> int | None:
    route = _route(event, own_transaction=own_transaction)
    try:
        if route.write is None:
            event_id = None
        elif route.own_transaction:
            event_id = await asyncio.to_thread(route.write)
        else:  # the caller's connection: used from this task, like its own statements
            event_id = route.write()
    except Exception as exc:  # any failure to write, driver's or pool's: reported alike
        raise _not_recorded(event, exc, route) from exc
    _recorded(event, event_id, route)
    return event_id


def _recorded(event: _Event, event_id: int | None, route: _Route) -> None:
    """Log the event; with no database to write to, count it and say how to add one."""
    global _unrecorded, _warned
    if route.write is None:
        with _lock:
            _unrecorded += 1
            warn, _warned = not _warned, True
        if warn:
            _logger.warning(
                "whodunit.audit has no database to write to, so audit events go to the log "
                "only: call whodunit.audit.configure(engine=...) or configure(dsn=...), or "
                "run audited code in a transaction of an engine passed to "
                "whodunit.context.instrument_sqlalchemy()"
            )
    fields = event.log_fields if event_id is None else {**event.log_fields, "event.id": event_id}
    level = logging.INFO if event.outcome == "success" else logging.WARNING
    _logger.log(level, event.message, **fields)


def _not_recorded(event: _Event, exc: Exception, route: _Route) -> AuditWriteError:
    """Log the event at ERROR (the log is now its only record), count it, build the error."""
    global _unrecorded
    with _lock:
        _unrecorded += 1
    reason = _redactor.redact_text(f"{type(exc).__name__}: {_first_line(exc)}")
    message = f"{event.message}, not recorded in the database"
    _logger.error(
        message,
        **event.log_fields,
        **{"audit.write_error": reason},
    )
    if route.own_transaction:
        consequence = (
            "it is recorded only in the log (logger whodunit.audit); check that the "
            "database given to whodunit.audit.configure() is reachable"
        )
    else:
        consequence = (
            "the caller's transaction cannot commit and must be rolled back; check that "
            "'whodunit install' ran on this database"
        )
    return AuditWriteError(
        f"could not record the audit event {event.action!r} ({event.outcome}) in the "
        f"database ({reason}): {consequence}"
    )


def _first_line(exc: Exception) -> str:
    text = _safe_str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def _execute(conn: Connection, params: _Params) -> int:
    return int(conn.execute(_sqlalchemy_statement(), params).scalar_one())


def _write_engine(engine: Engine, params: _Params) -> int:
    with engine.begin() as conn:
        return _execute(conn, params)


@functools.cache
def _sqlalchemy_statement() -> TextClause:
    from sqlalchemy import text

    return text(_SQLALCHEMY_SQL)


def _dsn_target(dsn: str) -> _Target:
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    from whodunit.db.connect import mask_dsn

    try:
        options = conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        # Not the parser's message: it may quote the string, password and all.
        raise ConfigError(
            f"whodunit.audit.configure: {mask_dsn(dsn)!r} is not a libpq connection string "
            "or URI; pass one like 'postgresql://app@db.internal/shop'"
        ) from exc
    timeout = options.get("connect_timeout")
    kwargs = {} if timeout is None else {"connect_timeout": timeout}
    return functools.partial(_write_dsn, dsn, kwargs)


def _write_dsn(dsn: str, kwargs: Mapping[str, object], params: _Params) -> int:
    from whodunit.db.connect import connect

    with connect(dsn, **kwargs) as conn:  # commits when the block ends without an error
        row = conn.execute(_PSYCOPG_SQL, params).fetchone()
    assert row is not None  # record_app_event() returns the new row's id, always
    return int(row[0])
