"""
JSON logs, one object per line, from the `logging` calls an application already makes.

`configure_logging` puts a `JSONHandler` with a `JSONFormatter` on the root logger, so every
``logging.getLogger(__name__).info(...)`` in the app (and in its libraries) comes out as
JSON with the field names of the shared contract (OpenTelemetry semantic conventions; the
list is `FIELDS` and ``docs/logging.md``).
Fields bound with `bind` / `bound` live in a `contextvars.ContextVar`, so each thread and
each asyncio task sees its own, and they are merged into every record.

For keyword fields, `get_logger` returns a `Logger` (``log.info("paid", order_id=3)``)
that skips the LogRecord altogether when only whodunit's handlers would see the record.

Redaction (`whodunit.redact`) runs before serialization and is on by default.
The formatter never raises: a record it cannot render still gives one JSON line, with a
``whodunit_error`` field, and the failure is reported once to ``whodunit.internal``.

Speed: the standard library's own per-record work (the caller lookup, then building the
LogRecord) costs more than the JSON; see `configure_logging` for what is skipped, and
``docs/logging.md`` for the measurements.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from re import Pattern
from types import TracebackType
from typing import IO, Any

import orjson

from whodunit.redact import REDACTED, Redactor

__all__ = [
    "FIELDS",
    "JSONFormatter",
    "JSONHandler",
    "Logger",
    "bind",
    "bound",
    "clear_context",
    "configure_logging",
    "get_context",
    "get_logger",
    "unbind",
]

#: The record fields of the shared contract, in the order they are documented.
#: The formatter writes the first four; the others come from the bound context or extras.
FIELDS: tuple[str, ...] = (
    "ts",
    "level",
    "logger",
    "message",
    "service.name",
    "correlation_id",
    "trace_id",
    "span_id",
    "user.id",
    "user.name",
    "http.request.method",
    "http.route",
    "url.path",
    "http.response.status_code",
    "duration_ms",
    "client.address",
    "user_agent.original",
    "exception.type",
    "exception.message",
    "exception.stacktrace",
)

# Keyword arguments cannot contain dots, so bind(user_id=...) stands for "user.id".
_ALIASES = {name.replace(".", "_"): name for name in FIELDS if "." in name}
# Fields only the formatter writes: a context or extra field with one of these names is
# renamed with a trailing "_" rather than allowed to forge the timestamp or the level.
_CORE = frozenset(FIELDS[:4])
_SAMPLE_RECORD = logging.LogRecord("", logging.INFO, "", 0, "", (), None)
_RECORD_SIZE = len(vars(_SAMPLE_RECORD))
# Everything a LogRecord carries by itself; any other attribute came from extra= or a filter.
_RECORD_ATTRS = frozenset(vars(_SAMPLE_RECORD)) | {"message", "asctime", "taskName"}
# Names a Logger field may not take: the record's own attributes and the core fields.
_RESERVED = _RECORD_ATTRS | _CORE
_SCALARS = frozenset({str, int, float, bool, type(None)})
_JSON_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
_MAX_DEPTH = 32
_DIGITS3 = tuple(f"{n:03d}" for n in range(1000))
_STDLIB_SRCFILE = logging._srcfile
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

_internal = logging.getLogger("whodunit.internal")


class _Context(dict[str, object]):
    """
    The fields bound in one context.

    Never mutated once built (`bind` makes a new one), which is what makes sharing it
    between tasks safe and lets a formatter keep its redacted copy on it.
    """

    __slots__ = ("rendered",)

    def __init__(self, fields: Mapping[str, object]) -> None:
        super().__init__(fields)
        self.rendered: tuple[JSONFormatter, dict[str, object]] | None = None


_EMPTY = _Context({})
_CONTEXT: ContextVar[_Context] = ContextVar("whodunit_log_context", default=_EMPTY)


def bind(**fields: object) -> None:
    """
    Add fields to every record logged from the current context from now on.

    The current context is the running asyncio task, or the thread outside any task;
    a new thread starts empty.  Keyword names with ``_`` stand for the dotted contract
    names (``user_id=`` binds ``user.id``); pass other dotted names as ``**{"a.b": 1}``.

    Args:
        fields: Field names and values; a name already bound is replaced.
    """
    _CONTEXT.set(_Context({**_CONTEXT.get(), **_canonical(fields)}))


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """
    Bind fields for the duration of a ``with`` block, then restore the previous context.

    Whatever was bound or unbound inside the block is undone as well, so a request
    handler cannot leak its user into the next request served by the same thread.

    Args:
        fields: As for `bind`.

    Returns:
        A context manager (also usable as a decorator on sync functions).
    """
    token = _CONTEXT.set(_Context({**_CONTEXT.get(), **_canonical(fields)}))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def unbind(*names: str) -> None:
    """
    Stop adding the named fields to records from the current context.

    Args:
        names: Field names (the ``_`` aliases of `bind` work too); unknown names are ignored.
    """
    drop = {_ALIASES.get(name, name) for name in names}
    _CONTEXT.set(_Context({k: v for k, v in _CONTEXT.get().items() if k not in drop}))


def clear_context() -> None:
    """Remove every bound field from the current context."""
    _CONTEXT.set(_EMPTY)


def get_context() -> dict[str, object]:
    """
    Return a copy of the fields bound in the current context.

    Returns:
        Field names (dotted contract names) and values.
    """
    return dict(_CONTEXT.get())


def _canonical(fields: Mapping[str, object]) -> dict[str, object]:
    return {_ALIASES.get(key, key): value for key, value in fields.items()}


class JSONFormatter(logging.Formatter):
    """
    Render a `logging.LogRecord` as one line of JSON with the contract's field names.

    It reads the record and never changes it, so other handlers see the original.
    Values JSON cannot encode are written as their ``str()`` (``repr()`` if that fails).

    Args:
        service_name: Written as ``service.name`` on every record (a bound
            ``service.name`` wins).
        redact: True for the default policy, False for none, or a `Redactor`.
        extra_redact_keys: Key names to redact on top of the default policy.
        extra_redact_patterns: Regular expressions to redact on top of the default policy.
        callsite: Also write ``code.file.path``, ``code.line.number`` and
            ``code.function.name`` (needs the caller lookup `configure_logging` skips).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        service_name: str | None = None,
        redact: bool | Redactor = True,
        extra_redact_keys: Iterable[str] = (),
        extra_redact_patterns: Iterable[str | Pattern[str]] = (),
        callsite: bool = False,
    ) -> None:
        super().__init__()
        self._redactor = _make_redactor(redact, extra_redact_keys, extra_redact_patterns)
        self._static: dict[str, object] = {}
        if service_name is not None:
            self._static["service.name"] = service_name
        self._callsite = callsite
        self._second = (-1, "")
        self._reported: set[str] = set()
        self._json_default = self._default  # bound once, not on every record

    def format(self, record: logging.LogRecord) -> str:
        """
        Render the record as one line of JSON, without the trailing newline.

        Args:
            record: Any log record.

        Returns:
            The JSON text; never raises.
        """
        return self.format_bytes(record)[:-1].decode()

    def format_bytes(self, record: logging.LogRecord) -> bytes:
        """
        Render the record as UTF-8 JSON ending in a newline, ready to write.

        `JSONHandler` calls this rather than `format`, which saves a decode per record.

        Args:
            record: Any log record.

        Returns:
            The JSON line; never raises.
        """
        try:
            return self._dumps(self._fields(record))
        except Exception as exc:  # noqa: BLE001 - a log call must never raise
            return self._fallback(exc, getattr(record, "__dict__", {}))

    def _format_native(
        self,
        created: float,
        level: int,
        name: str,
        msg: object,
        args: tuple[object, ...],
        fields: Mapping[str, object],
        exc_info: _ExcInfo | None,
    ) -> bytes:
        """Render a log call without a LogRecord: the same line `format_bytes` gives."""
        levelname = logging.getLevelName(level)
        try:
            line = self._head(created, levelname, name, self._text(_interpolate(msg, args)))
            if fields:
                line.update(self._render_fields(fields))
            if exc_info:
                self._add_exception(line, exc_info, None)
            return self._dumps(line)
        except Exception as exc:  # noqa: BLE001 - a log call must never raise
            attrs = {"created": created, "levelname": levelname, "name": name, "msg": msg}
            return self._fallback(exc, attrs)

    def _fields(self, record: logging.LogRecord) -> dict[str, object]:
        fields = self._head(record.created, record.levelname, record.name, self._message(record))
        attrs = record.__dict__
        if len(attrs) > _RECORD_SIZE:
            extras = {k: v for k, v in attrs.items() if k not in _RECORD_ATTRS}
            fields.update(self._render_fields(extras))
        if record.exc_info or record.exc_text:
            self._add_exception(fields, record.exc_info, record.exc_text)
        if record.stack_info:
            fields["code.stacktrace"] = self._text(record.stack_info)
        if self._callsite:
            fields["code.file.path"] = record.pathname
            fields["code.line.number"] = record.lineno
            fields["code.function.name"] = record.funcName
        return fields

    def _head(self, created: float, levelname: str, name: str, message: str) -> dict[str, object]:
        """The core fields, then the static and bound ones (cached on the context)."""
        fields: dict[str, object] = {
            "ts": self._timestamp(created),
            "level": levelname,
            "logger": name,
            "message": message,
        }
        context = _CONTEXT.get()
        cached = context.rendered
        fields.update(
            cached[1] if cached is not None and cached[0] is self else self._context_fields(context)
        )
        return fields

    def _timestamp(self, created: float) -> str:
        """
        Write RFC 3339 UTC with microseconds, cheaply.

        The part up to the second is built once a second, and the six digits come from a
        table of three-digit strings: ``strftime`` or a ``%06d`` per record would cost
        more than all the rest of the timestamp.
        """
        second = int(created)
        cached_second, prefix = self._second
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._second = (second, prefix)
        millis, micros = divmod(int((created - second) * 1_000_000), 1000)
        return f"{prefix}{_DIGITS3[millis]}{_DIGITS3[micros]}Z"

    def _message(self, record: logging.LogRecord) -> str:
        msg = record.msg
        text = msg if type(msg) is str and not record.args else record.getMessage()
        return self._text(text)

    def _text(self, text: str) -> str:
        return text if self._redactor is None else self._redactor.redact_text(text)

    def _context_fields(self, context: _Context) -> dict[str, object]:
        """
        Return the static fields and the context's, ready to merge, redacted once per context.

        The result is kept on the (immutable) context only when all values are scalars:
        a bound list or dict could be changed in place after it was redacted.
        """
        rendered = {**self._static, **self._render_fields(context)}
        if all(type(value) in _SCALARS for value in context.values()):
            context.rendered = (self, rendered)
        return rendered

    def _render_fields(self, fields: Mapping[str, object]) -> dict[str, object]:
        rendered = dict(fields) if self._redactor is None else self._redactor.redact_fields(fields)
        if _CORE.isdisjoint(rendered):
            return rendered
        return {f"{key}_" if key in _CORE else key: value for key, value in rendered.items()}

    def _add_exception(
        self, fields: dict[str, object], exc_info: _ExcInfo | None, exc_text: str | None
    ) -> None:
        if exc_info and exc_info[0] is not None:
            exc_type, exc, tb = exc_info
            fields["exception.type"] = _qualified_name(exc_type)
            fields["exception.message"] = self._text(_safe_str(exc))
            stacktrace = "".join(traceback.format_exception(exc_type, exc, tb))
        elif exc_text:
            stacktrace = exc_text
        else:
            return
        fields["exception.stacktrace"] = self._text(stacktrace.rstrip("\n"))

    def _dumps(self, fields: dict[str, object]) -> bytes:
        try:
            return orjson.dumps(fields, default=self._json_default, option=_JSON_OPTIONS)
        except orjson.JSONEncodeError:
            # Integers beyond 64 bits, lone surrogates, deep nesting: make it plain.
            return orjson.dumps(self._plain(fields, 0), option=_JSON_OPTIONS)

    def _default(self, value: object) -> str:
        """Give orjson text for a type it does not know, redacted like any other text."""
        return self._text(_safe_str(value))

    def _plain(self, value: object, depth: int) -> object:
        """Rebuild a value from types orjson always accepts, for the rare rejected record."""
        if isinstance(value, str):
            return _valid_utf8(value)
        if isinstance(value, bool | float | None):
            return value
        if isinstance(value, int):
            return value if -(2**63) <= value < 2**64 else str(value)
        if depth >= _MAX_DEPTH:
            return "[TOO DEEP]"
        if isinstance(value, Mapping):
            return {_valid_utf8(_safe_str(k)): self._plain(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._plain(item, depth + 1) for item in value]
        return _valid_utf8(self._default(value))

    def _fallback(self, error: Exception, attrs: Mapping[str, Any]) -> bytes:
        """
        Write what can be saved of a record the normal path failed on, and say why.

        Args:
            error: What went wrong.
            attrs: The record's attributes (``created``, ``levelname``, ``name``, ``msg``).
        """
        name = _safe_str(attrs.get("name", ""))
        self._report(error, name)
        try:
            ts = self._timestamp(float(attrs["created"]))
        except Exception:  # noqa: BLE001 - the record itself may be what is broken
            ts = self._timestamp(time.time())
        fields = {
            "ts": ts,
            "level": _safe_str(attrs.get("levelname", "")),
            "logger": name,
            "message": self._fallback_text(attrs.get("msg", "")),
            "whodunit_error": self._fallback_text(f"{type(error).__name__}: {_safe_str(error)}"),
        }
        return orjson.dumps({k: _valid_utf8(v) for k, v in fields.items()}, option=_JSON_OPTIONS)

    def _fallback_text(self, value: object) -> str:
        """Redact with care: if redaction is what failed, hide the text rather than leak it."""
        try:
            return self._text(_safe_str(value))
        except Exception:  # noqa: BLE001 - never leak a secret because redaction broke
            return REDACTED

    def _report(self, error: Exception, logger_name: str) -> None:
        """Tell ``whodunit.internal`` about a failure, once per exception type."""
        kind = _qualified_name(type(error))
        if kind in self._reported:
            return
        self._reported.add(kind)
        _internal.error(
            "JSONFormatter could not render a record from logger %s and wrote a minimal line "
            "with a whodunit_error field instead; later %s failures are not reported",
            logger_name,
            kind,
            exc_info=error,
        )


class JSONHandler(logging.Handler):
    """
    Write each record as one JSON line, with a single lock and write per record.

    The record is rendered before the lock is taken, so threads only queue for the write.
    Binary streams get the formatter's bytes as they are; text streams get them decoded.
    With *path* the handler opens the file itself, unbuffered and in append mode: each
    line is then one ``write()`` system call, so processes sharing the file (web server
    workers) never interleave inside a line, and nothing is lost in a buffer on a crash.

    Args:
        stream: Where to write; `sys.stderr` by default.  The handler never closes it.
        level: The handler's level.
        path: A file to append to instead of *stream*; closed by `close`.
        formatter: A `JSONFormatter` by default; any `logging.Formatter` works.

    Raises:
        TypeError: Both *stream* and *path* were given.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        stream: IO[str] | IO[bytes] | None = None,
        level: int | str = logging.NOTSET,
        *,
        path: str | os.PathLike[str] | None = None,
        formatter: logging.Formatter | None = None,
    ) -> None:
        if stream is not None and path is not None:
            raise TypeError(
                f"JSONHandler got both stream={stream!r} and path={path!r}: pass one of them"
            )
        super().__init__(level)
        self.stream: IO[Any]
        if path is not None:
            self.stream = open(path, "ab", buffering=0)  # noqa: SIM115 - closed by close()
        else:
            self.stream = sys.stderr if stream is None else stream
        self._owns_stream = path is not None
        self._write = self._pick_writer(self.stream)
        # The stdlib's own lock, so that logging re-initialises it after a fork.
        self._lock = self.lock or threading.RLock()
        self.setFormatter(formatter or JSONFormatter())

    def handle(self, record: logging.LogRecord) -> bool:
        """
        Filter and emit a record, without taking the lock around the formatting.

        Args:
            record: The record to write.

        Returns:
            Whether the record passed the handler's filters.
        """
        if self.filters:
            verdict: object = self.filter(record)
            if not verdict:
                return False
            if isinstance(verdict, logging.LogRecord):
                record = verdict
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """
        Render and write one record; errors go to `logging.Handler.handleError`.

        Args:
            record: The record to write.
        """
        try:
            formatter = self.formatter
            if isinstance(formatter, JSONFormatter):
                data = formatter.format_bytes(record)
            else:
                data = (self.format(record) + "\n").encode()
            with self._lock:
                self._write(data)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - the stdlib contract: report, never raise
            self.handleError(record)

    def _native_formatter(self) -> JSONFormatter | None:
        """
        The formatter a `Logger` may call directly, or None when it must go the stdlib way.

        Subclasses, filters, other formatters and call-site fields all need a real record.
        """
        formatter = self.formatter
        if (
            type(self) is JSONHandler
            and not self.filters
            and type(formatter) is JSONFormatter
            and not formatter._callsite
        ):
            return formatter
        return None

    def _write_native(self, data: bytes, level: int, name: str, msg: object) -> None:
        """Write a line rendered without a LogRecord; a failure is reported like `emit` does."""
        try:
            with self._lock:
                self._write(data)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - the stdlib contract: report, never raise
            attrs = {"name": name, "levelno": level, "msg": msg}
            self.handleError(logging.makeLogRecord(attrs))

    def flush(self) -> None:
        """Flush the stream."""
        with self._lock:
            self.stream.flush()

    def close(self) -> None:
        """Close the file opened for *path*; a stream passed in is left open."""
        with self._lock:
            if self._owns_stream:
                self.stream.close()
        super().close()

    def _pick_writer(self, stream: IO[Any]) -> Callable[[bytes], None]:
        if isinstance(stream, io.RawIOBase):
            return self._write_raw
        if isinstance(stream, io.BufferedIOBase):
            return self._write_buffered
        return self._write_text

    def _write_raw(self, data: bytes) -> None:
        """One system call per line; loop only in the rare case of a partial write."""
        written = self.stream.write(data)
        while written is not None and written < len(data):
            data = data[written:]
            written = self.stream.write(data)

    def _write_buffered(self, data: bytes) -> None:
        self.stream.write(data)
        self.stream.flush()

    def _write_text(self, data: bytes) -> None:
        self.stream.write(data.decode())
        self.stream.flush()


class Logger:
    """
    Log with keyword fields, fast when whodunit does all the writing.

    ``log.info("order shipped", order_id=3)`` writes the same line as
    ``logging.getLogger(name).info("order shipped", extra={"order_id": 3})``.
    When every handler the record would reach is a plain `JSONHandler` (what
    `configure_logging` sets up), the line is rendered straight from the call, without
    building a `logging.LogRecord`; otherwise a record is built and handed to the standard
    library, so filters, other handlers and test capture see it as usual.

    Field names follow `bind` (``user_id=`` writes ``user.id``); a field named like a
    LogRecord attribute or a core field (``name``, ``module``, ``level``, ...) gets a
    trailing ``_``.  The message is written as given, never %-formatted.

    Args:
        name: The logger name, as for `logging.getLogger`.

    .. versionadded:: 0.1
    """

    __slots__ = ("_logger",)

    def __init__(self, name: str | None = None) -> None:
        self._logger = logging.getLogger(name)

    @property
    def name(self) -> str:
        """The logger name."""
        return self._logger.name

    def debug(self, message: str, /, **fields: object) -> None:
        """Log *message* with *fields* at DEBUG."""
        self._log(logging.DEBUG, message, fields, None)

    def info(self, message: str, /, **fields: object) -> None:
        """Log *message* with *fields* at INFO."""
        self._log(logging.INFO, message, fields, None)

    def warning(self, message: str, /, **fields: object) -> None:
        """Log *message* with *fields* at WARNING."""
        self._log(logging.WARNING, message, fields, None)

    def error(self, message: str, /, **fields: object) -> None:
        """Log *message* with *fields* at ERROR."""
        self._log(logging.ERROR, message, fields, None)

    def critical(self, message: str, /, **fields: object) -> None:
        """Log *message* with *fields* at CRITICAL."""
        self._log(logging.CRITICAL, message, fields, None)

    def exception(self, message: str, /, **fields: object) -> None:
        """Log *message* with *fields* at ERROR, with the exception being handled."""
        self._log(logging.ERROR, message, fields, sys.exc_info())

    def log(self, level: int, message: str, /, **fields: object) -> None:
        """Log *message* with *fields* at *level*."""
        self._log(level, message, fields, None)

    def _log(
        self, level: int, message: str, fields: dict[str, object], exc_info: _ExcInfo | None
    ) -> None:
        logger = self._logger
        if not logger.isEnabledFor(level):
            return
        if fields:
            fields = _field_names(fields)
        targets = _native_targets(logger, level)
        if targets is None:
            logger.handle(self._record(level, message, fields, exc_info))
        else:
            _emit_native(targets, level, logger.name, message, (), fields, exc_info)

    def _record(
        self, level: int, message: str, fields: dict[str, object], exc_info: _ExcInfo | None
    ) -> logging.LogRecord:
        """Build the LogRecord the standard library would have, fields set as by ``extra=``."""
        path, line, function = "(unknown file)", 0, "(unknown function)"
        if logging._srcfile:  # the caller lookup is on: point at the code that called us
            frame = sys._getframe(3)  # _record <- _log <- info() <- the caller
            path, line, function = frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name
        logger = self._logger
        record = logger.makeRecord(logger.name, level, path, line, message, (), exc_info, function)
        record.__dict__.update(fields)
        return record


def get_logger(name: str | None = None) -> Logger:
    """
    Return a `Logger` for keyword-field logging.

    Args:
        name: The logger name, usually ``__name__``.

    Returns:
        A logger sharing level and handlers with ``logging.getLogger(name)``.

    .. versionadded:: 0.1
    """
    return Logger(name)


def _field_names(fields: Mapping[str, object]) -> dict[str, object]:
    named = _canonical(fields)
    if _RESERVED.isdisjoint(named):
        return named
    return {f"{key}_" if key in _RESERVED else key: value for key, value in named.items()}


class _FastLogger(logging.Logger):
    """
    The stdlib Logger, minus the LogRecord when only whodunit's handlers would see it.

    `configure_logging` switches existing plain loggers to this class (and makes it the
    class of new ones) while the caller lookup is off; ``callsite=True`` switches them back.
    It changes nothing else: any filter, any other handler, or an ``extra=`` key the stdlib
    would refuse sends the call down the usual path.
    """

    def _log(
        self,
        level: int,
        msg: object,
        args: Any,
        exc_info: Any = None,
        extra: Mapping[str, object] | None = None,
        stack_info: bool = False,
        stacklevel: int = 1,
    ) -> None:
        targets = _native_targets(self, level)
        if targets is None or (extra is not None and not _RECORD_ATTRS.isdisjoint(extra)):
            super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel)
        else:
            fields = extra or {}
            _emit_native(targets, level, self.name, msg, args, fields, _exc_info(exc_info))


class _FastRootLogger(_FastLogger, logging.RootLogger):
    """The root logger with the same shortcut."""


_FAST_CLASSES: dict[type[logging.Logger], type[logging.Logger]] = {
    logging.Logger: _FastLogger,
    logging.RootLogger: _FastRootLogger,
}


def _use_fast_path(on: bool) -> None:
    """
    Switch plain loggers, existing and future, to or from the fast classes.

    Only loggers whose class is exactly the stdlib's (or ours) are touched: a logger
    class set by another library is left alone.
    """
    swap = _FAST_CLASSES if on else {v: k for k, v in _FAST_CLASSES.items()}
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        if isinstance(logger, logging.Logger) and type(logger) in swap:
            logger.__class__ = swap[type(logger)]
    if logging.getLoggerClass() in swap:
        logging.setLoggerClass(swap[logging.getLoggerClass()])


def _emit_native(
    targets: list[tuple[JSONHandler, JSONFormatter]],
    level: int,
    name: str,
    msg: object,
    args: tuple[object, ...],
    fields: Mapping[str, object],
    exc_info: _ExcInfo | None,
) -> None:
    created = time.time()
    for handler, formatter in targets:
        line = formatter._format_native(created, level, name, msg, args, fields, exc_info)
        handler._write_native(line, level, name, msg)


def _exc_info(exc_info: Any) -> _ExcInfo | None:
    """Turn ``exc_info=`` into a tuple, as `logging.Logger._log` does."""
    if not exc_info:
        return None
    if isinstance(exc_info, BaseException):
        return (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple):
        return exc_info
    return sys.exc_info()


def _interpolate(msg: object, args: tuple[object, ...]) -> str:
    """Build the message as `logging.LogRecord.getMessage` does, a lone mapping included."""
    text = msg if type(msg) is str else str(msg)
    if not args:
        return text
    if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        return text % args[0]
    return text % args


def _native_targets(
    logger: logging.Logger, level: int
) -> list[tuple[JSONHandler, JSONFormatter]] | None:
    """
    Find the handlers a record would reach, if `Logger` may write to them directly.

    Walks the hierarchy as `logging.Logger.callHandlers` does.  None means "build a
    LogRecord": a logger filter, a handler that is not a plain `JSONHandler`, or no handler
    at all (the standard library then applies its last-resort handler).
    """
    if logger.disabled or logger.filters:
        return None
    targets: list[tuple[JSONHandler, JSONFormatter]] = []
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if not isinstance(handler, JSONHandler):
                return None
            formatter = handler._native_formatter()
            if formatter is None:
                return None
            if level >= handler.level:
                targets.append((handler, formatter))
        if not current.propagate:
            break
        current = current.parent
    return targets or None


def configure_logging(
    level: int | str = "INFO",
    *,
    stream: IO[str] | IO[bytes] | None = None,
    path: str | os.PathLike[str] | None = None,
    service_name: str | None = None,
    redact: bool | Redactor = True,
    extra_redact_keys: Iterable[str] = (),
    extra_redact_patterns: Iterable[str | Pattern[str]] = (),
    callsite: bool = False,
    force: bool = False,
    loki_url: str | None = None,
    loki_options: Mapping[str, Any] | None = None,
) -> JSONHandler:
    """
    Make every record that reaches the root logger come out as one JSON line.

    Calling it again replaces any `JSONHandler` (and `whodunit.loki.LokiHandler`) on the
    root logger rather than adding another.
    The ``whodunit`` logger is set to WARNING if the app left it unset.
    Unless *callsite* is true it also sets ``logging._srcfile = None``, the switch the
    logging HOWTO ("Optimization") gives for skipping the caller lookup: that lookup is
    the costliest step of a log call, and its file and line are not in the contract.
    Other handlers then see ``(unknown file)`` in ``%(filename)s``.

    The same switch turns plain `logging.Logger` instances, existing and future, into a
    subclass that skips building the LogRecord when only plain `JSONHandler` s would see
    it (the next costliest step); ``callsite=True`` turns them back.
    Anything else in the way (a filter, another handler) gets the usual LogRecord.

    With *loki_url*, a `whodunit.loki.LokiHandler` sharing the formatter also ships every
    record to Loki (``docs/loki.md``).  A collector reading the JSON output stays the
    sturdier path; httpx is only imported when this is used.

    Args:
        level: The root logger's level.
        stream: Where to write; `sys.stderr` by default.
        path: A file to append to instead (see `JSONHandler`).
        service_name: Written as ``service.name`` on every record.
        redact: True for the default policy, False for none, or a `Redactor`.
        extra_redact_keys: Key names to redact on top of the default policy.
        extra_redact_patterns: Regular expressions to redact on top of the default policy.
        callsite: Keep the caller lookup and write the ``code.*`` fields.
        force: Remove every other root handler too (as `logging.basicConfig` does).
        loki_url: Also push records to this Loki: https, or http to a loopback address;
            default: the ``WHODUNIT_LOKI_URL`` environment variable, if set.
        loki_options: More `whodunit.loki.LokiHandler` keyword arguments (``labels``,
            ``spool_dir``, ...); its ``service_name`` and ``formatter`` come from here.

    Returns:
        The JSON handler added to the root logger.

    Raises:
        TypeError: Both *stream* and *path* were given, both *redact* as a `Redactor`
            and extra keys or patterns, or *loki_options* without *loki_url*.
        ValueError: *loki_url* or *loki_options* cannot be used.

    .. versionadded:: 0.1
    """
    formatter = JSONFormatter(
        service_name=service_name,
        redact=redact,
        extra_redact_keys=extra_redact_keys,
        extra_redact_patterns=extra_redact_patterns,
        callsite=callsite,
    )
    loki_handler = None
    loki_url = loki_url or os.environ.get("WHODUNIT_LOKI_URL") or None
    if loki_url is not None:
        from whodunit.loki import LokiHandler  # here: httpx is only loaded for those who ship

        loki_handler = LokiHandler(
            loki_url, service_name=service_name, formatter=formatter, **(loki_options or {})
        )
    elif loki_options is not None:
        raise TypeError("configure_logging got loki_options without loki_url: pass both")
    handler = JSONHandler(stream, path=path, formatter=formatter)
    loki = sys.modules.get("whodunit.loki")  # if it was never imported, no LokiHandler exists
    ours = (JSONHandler,) if loki is None else (JSONHandler, loki.LokiHandler)
    root = logging.getLogger()
    for old in list(root.handlers):
        if force or isinstance(old, ours):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    if loki_handler is not None:
        root.addHandler(loki_handler)
    root.setLevel(level)
    own = logging.getLogger("whodunit")
    if own.level == logging.NOTSET:  # our own chatter only when asked for
        own.setLevel(logging.WARNING)
    logging._srcfile = _STDLIB_SRCFILE if callsite else None
    _use_fast_path(not callsite)
    return handler


def _make_redactor(
    redact: bool | Redactor,
    extra_keys: Iterable[str],
    extra_patterns: Iterable[str | Pattern[str]],
) -> Redactor | None:
    extra_keys, extra_patterns = tuple(extra_keys), tuple(extra_patterns)
    if isinstance(redact, Redactor):
        if extra_keys or extra_patterns:
            raise TypeError(
                "pass extra_redact_keys / extra_redact_patterns or a Redactor as redact=, "
                "not both: build the Redactor with extra_keys= / extra_patterns= instead"
            )
        return redact
    if not redact:
        return None
    return Redactor(extra_keys=extra_keys, extra_patterns=extra_patterns)


def _safe_str(value: object) -> str:
    """``str()``, else ``repr()``, else a placeholder: some objects break both."""
    for render in (str, repr):
        try:
            return render(value)
        except Exception:  # noqa: BLE001, S112 - user objects may raise anything
            continue
    return f"<unprintable {type(value).__name__}>"


def _valid_utf8(text: str) -> str:
    """Replace lone surrogates, which orjson (rightly) refuses to encode."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _qualified_name(cls: type) -> str:
    """The class name as OpenTelemetry wants it: module-qualified except for builtins."""
    module = getattr(cls, "__module__", None)
    if module in (None, "builtins"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"
