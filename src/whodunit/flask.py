"""
The Flask extension: a correlation id, a request log line and the user, for every request.

``Whodunit(app)`` (or ``Whodunit()`` then ``init_app(app)``) gives each request:

- a correlation id, taken from the ``X-Request-ID`` header when it is safe to (at most
  128 characters of ``[A-Za-z0-9._:-]``) and made up otherwise, echoed in the response
  and available as `correlation_id`;
- a log context (`whodunit.log.bind`) with the correlation id, method, route, path,
  client address and user, so every log line of the request carries them, undone when
  the request ends;
- a database context (`whodunit.context.push_context`), so every transaction of the
  request is audited with the same correlation id, user, method, path and client;
- one JSON log line when it ends, on the ``whodunit.request`` logger;
- one log line with the stack for an unhandled exception (Flask's own, when Flask logs
  it; whodunit's, when Flask re-raises it in debug or testing mode).

How it hooks in: `Whodunit.init_app` wraps ``app.wsgi_app`` in a WSGI middleware (Flask's
documented way to add one) and connects two signals.  The middleware runs each request in
a copy of the caller's `contextvars` context, so the log fields bound and the database
context pushed for it vanish with it (no pop to forget, nothing leaks to the thread's
next request); it sets the correlation id, wraps ``start_response`` (status, size, the
echoed header) and writes the log line.  ``request_started``, sent once Flask has routed
the request, binds the log and database contexts; ``got_request_exception`` sees
unhandled exceptions.  A middleware call and one signal cost less than Flask's
before/after_request plumbing, and the middleware still sees requests whose exception
escapes Flask.  Nothing queries the database, and the app's error handling is left as
it is.

Settings are the ``WHODUNIT_*`` keys of ``app.config``, or else the environment variables
of the same names (``docs/flask.md``), read once by `Whodunit.init_app`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar, copy_context
from typing import TYPE_CHECKING, Any

from flask import Flask, got_request_exception, request, request_started

from whodunit import _flask_users as users
from whodunit.context import MAX_VALUE_CHARS, UserLoader, instrument_sqlalchemy, push_context
from whodunit.errors import ConfigError
from whodunit.log import bind, get_logger

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Config

__all__ = ["DEFAULT_SKIP_PATHS", "REQUEST_LOGGER", "Whodunit", "correlation_id", "users"]

#: The logger of the request lines and of whodunit's own exception lines.
REQUEST_LOGGER = "whodunit.request"
#: Paths that get a correlation id but no request log line, unless configured otherwise.
DEFAULT_SKIP_PATHS: tuple[str, ...] = ("/health", "/healthz", "/metrics")

_EXTENSION = "whodunit"
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}").fullmatch
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+").fullmatch
_SHOWN_REJECTED_CHARS = 64

_log = get_logger(REQUEST_LOGGER)
_stdlib_log = logging.getLogger(REQUEST_LOGGER)
_internal = logging.getLogger("whodunit.internal")


class _Request:
    """
    What whodunit knows about the request being served; one per request.

    Its `start_response` is what the wrapped app gets: it records the status and size,
    echoes the correlation id, and asks for a user who logged in during the request.
    """

    __slots__ = (
        "correlation_id",
        "environ",
        "exception",
        "method",
        "path",
        "rejected",
        "respond",
        "route",
        "routed",
        "size",
        "skip",
        "start",
        "state",
        "status",
        "user",
    )

    def __init__(self, state: _AppState, environ: WSGIEnvironment, respond: StartResponse) -> None:
        self.start = time.perf_counter()
        self.state = state
        self.environ = environ
        self.respond = respond
        incoming = environ.get(state.environ_key)
        if isinstance(incoming, str) and _VALID_ID(incoming):
            self.correlation_id: str = incoming
            self.rejected: str | None = None
        else:
            self.correlation_id = _new_id()
            self.rejected = _shown(incoming)
        self.routed = False  # set once request_started has filled in what follows
        self.method: str = environ.get("REQUEST_METHOD", "")
        self.path = ""
        self.route: str | None = None
        self.skip = False
        self.user: tuple[object, object] | None = None
        self.status: int | None = None
        self.size: int | None = None
        self.exception: BaseException | None = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        """The WSGI ``start_response`` the wrapped app calls, inside Flask's request context."""
        state = self.state
        try:
            self.status = int(status[:3])
            echo = True
            for name, value in headers:
                lowered = name.lower()
                if lowered == "content-length":
                    self.size = int(value)
                elif lowered == state.header_lower:
                    echo = False  # the app set its own: leave it
            if echo:
                headers = [*headers, (state.header, self.correlation_id)]
            if self.user is None and self.routed and not self.skip:
                state.late_user(self)
        except Exception as error:  # noqa: BLE001 - never break the app's response
            _report_internal("start_response", error)
        return self.respond(status, headers, exc_info)


_REQUEST: ContextVar[_Request | None] = ContextVar("whodunit_flask_request", default=None)


def correlation_id() -> str | None:
    """
    Return the correlation id of the request being served.

    Returns:
        The id echoed in the response header, or None outside a request.

    .. versionadded:: 0.1
    """
    current = _REQUEST.get()
    return current.correlation_id if current is not None else None


class Whodunit:
    """
    The Flask extension: correlation id, request log, user and database context.

    Args:
        app: The app to set up now; or call `init_app` later (app factories).
        user_loader: Returns ``(actor_id, actor_name)`` for the current request, or None
            when anonymous; see ``whodunit.flask.users`` for ready-made ones.
        skip_paths: Default for ``WHODUNIT_SKIP_PATHS`` (an app's config wins).
        skip_endpoints: Default for ``WHODUNIT_SKIP_ENDPOINTS`` (an app's config wins).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        user_loader: UserLoader | None = None,
        skip_paths: Iterable[str] | None = None,
        skip_endpoints: Iterable[str] | None = None,
    ) -> None:
        self.user_loader = user_loader
        self._skip_paths = DEFAULT_SKIP_PATHS if skip_paths is None else tuple(skip_paths)
        self._skip_endpoints = () if skip_endpoints is None else tuple(skip_endpoints)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """
        Set up *app*: read its ``WHODUNIT_*`` settings, wrap its WSGI app, connect signals.

        Args:
            app: The Flask app.

        Raises:
            RuntimeError: A `Whodunit` is already registered on *app*.
            ConfigError: A ``WHODUNIT_*`` setting has a value that cannot be used.
        """
        if _EXTENSION in app.extensions:
            raise RuntimeError(
                "A 'Whodunit' instance is already registered on this Flask app; "
                "import and use that instance instead of creating another one."
            )
        config = app.config
        state = _AppState(
            self,
            header=_setting(config, "WHODUNIT_REQUEST_ID_HEADER", "X-Request-ID"),
            trusted_proxies=_setting(config, "WHODUNIT_TRUSTED_PROXIES", None),
            skip_paths=_setting(config, "WHODUNIT_SKIP_PATHS", self._skip_paths),
            skip_endpoints=_setting(config, "WHODUNIT_SKIP_ENDPOINTS", self._skip_endpoints),
        )
        instrument = _flag(
            "WHODUNIT_INSTRUMENT_SQLALCHEMY",
            _setting(config, "WHODUNIT_INSTRUMENT_SQLALCHEMY", True),
        )
        app.extensions[_EXTENSION] = state
        app.wsgi_app = _Middleware(app.wsgi_app, state)  # type: ignore[method-assign]
        request_started.connect(_on_request_started, sender=app)
        got_request_exception.connect(_on_exception, sender=app)
        request_logger = logging.getLogger(REQUEST_LOGGER)
        if request_logger.level == logging.NOTSET:
            # configure_logging() quiets the "whodunit" logger to WARNING; request lines
            # are the app's access log, not whodunit's chatter.
            request_logger.setLevel(logging.INFO)
        if instrument:
            _instrument_flask_sqlalchemy(app)


class _AppState:
    """One app's settings and request steps, kept in ``app.extensions["whodunit"]``."""

    def __init__(
        self,
        extension: Whodunit,
        *,
        header: object,
        trusted_proxies: object,
        skip_paths: object,
        skip_endpoints: object,
    ) -> None:
        self.extension = extension
        if not isinstance(header, str) or not _HEADER_NAME(header):
            raise ConfigError(
                f"WHODUNIT_REQUEST_ID_HEADER must be a header name such as 'X-Request-ID', "
                f"got {header!r}"
            )
        self.header = header
        self.header_lower = header.lower()
        self.environ_key = "HTTP_" + header.upper().replace("-", "_")
        self.client_address = _client_address_reader(trusted_proxies)
        self.skip_paths = _names("WHODUNIT_SKIP_PATHS", skip_paths, prefix="/")
        self.skip_endpoints = _names("WHODUNIT_SKIP_ENDPOINTS", skip_endpoints, prefix="")
        self.user_loader = extension.user_loader
        # Handed to the database context, which calls it at each transaction.
        self.db_user_loader: UserLoader | None = self.load_user if self.user_loader else None
        self._loader_failed = False

    def load_user(self) -> tuple[object, object] | None:
        """Call the app's user loader; a failure means "unknown user", reported once."""
        loader = self.user_loader
        if loader is None:
            return None
        try:
            actor = loader()
            if actor is None:
                return None
            actor_id, actor_name = actor
            if actor_id is None:
                return None
        except Exception as error:  # noqa: BLE001 - the app's loader must not break its requests
            if not self._loader_failed:
                self._loader_failed = True
                _internal.warning(
                    "whodunit user loader %r failed (%s: %s); requests are logged without a "
                    "user until it works, and later failures are not reported",
                    loader,
                    type(error).__name__,
                    error,
                    exc_info=error,
                )
            return None
        return actor_id, actor_name

    def request_started(self, current: _Request) -> None:
        """Bind the routed request's fields to the log and database contexts."""
        try:
            # One look-up through the proxy (werkzeug's documented way out), not one per field.
            req = request._get_current_object()  # type: ignore[attr-defined]
            rule = req.url_rule
            environ = req.environ
            current.method = method = req.method
            current.path = path = req.path[:MAX_VALUE_CHARS]
            fields: dict[str, object] = {
                "correlation_id": current.correlation_id,
                "http.request.method": method,
                "url.path": path,
            }
            if rule is not None:
                current.route = fields["http.route"] = rule.rule
            client = self.client_address(environ)
            if client is not None:
                fields["client.address"] = client
            current.skip = path in self.skip_paths or (
                rule is not None and rule.endpoint in self.skip_endpoints
            )
            if not current.skip:
                current.user = user = self.load_user()
                if user is not None:
                    fields.update(_user_fields(user))
            bind(**fields)
            push_context(
                {
                    "correlation_id": current.correlation_id,
                    "method": method,
                    "path": path,
                    "client_ip": client,
                    "user_agent": environ.get("HTTP_USER_AGENT"),
                },
                user=self.db_user_loader,
            )
            current.routed = True
        except Exception as error:  # noqa: BLE001 - never break the app's request
            _report_internal("request_started", error)

    def late_user(self, current: _Request) -> None:
        """Ask again for a user when the response starts, if the request began anonymous."""
        user = self.load_user()
        if user is not None:
            current.user = user
            bind(**_user_fields(user))

    def finish(self, current: _Request) -> None:
        """Write the request log line."""
        if current.routed:
            if current.skip:
                return
            fields: dict[str, object] = {}
        else:  # Flask never routed it: an inner middleware answered, or Flask failed early
            current.path = path = _decoded_path(current.environ)
            if path in self.skip_paths:
                return
            fields = {
                "correlation_id": current.correlation_id,
                "http.request.method": current.method,
                "url.path": path,
            }
            client = self.client_address(current.environ)
            if client is not None:
                fields["client.address"] = client
        status = current.status or 500  # no response started: the exception escaped
        fields["http.response.status_code"] = status
        fields["duration_ms"] = round((time.perf_counter() - current.start) * 1000, 3)
        if current.size is not None:
            fields["http.response.body.size"] = current.size
        agent = current.environ.get("HTTP_USER_AGENT")
        if agent:
            fields["user_agent.original"] = agent[:MAX_VALUE_CHARS]
        if current.rejected is not None:
            fields["rejected_request_id"] = current.rejected
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        _log.log(level, f"{current.method} {current.route or current.path} {status}", **fields)


class _Middleware:
    """Wraps ``app.wsgi_app``: each request's state, its correlation id and its log line."""

    def __init__(self, wsgi_app: WSGIApplication, state: _AppState) -> None:
        self.wsgi_app = wsgi_app
        self.state = state

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        # Each request runs in a copy of the caller's context: whatever it binds or pushes
        # (log fields, the database context, this request's state) is gone when it
        # returns, so nothing can leak into the next request served by the same thread.
        return copy_context().run(self._serve, environ, start_response)

    def _serve(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        current = _Request(self.state, environ, start_response)
        _REQUEST.set(current)
        try:
            return self.wsgi_app(environ, current.start_response)
        except Exception as error:
            if current.exception is not error:  # got_request_exception did not see it
                current.exception = error
                _log_exception(error, current)
            raise
        finally:
            try:
                self.state.finish(current)
            except Exception as error:  # noqa: BLE001 - never break the app's request
                _report_internal("finish", error)


def _on_request_started(sender: Flask, **extra: object) -> None:
    current = _REQUEST.get()
    if current is not None:  # None: dispatched outside the middleware (a hand-made context)
        current.state.request_started(current)


def _on_exception(sender: Flask, exception: BaseException, **extra: object) -> None:
    """Log an unhandled exception once: here, unless Flask is about to log it itself."""
    current = _REQUEST.get()
    if current is None:
        return
    current.exception = exception
    if not _flask_logs_exception(sender):
        _log_exception(exception, current)


def _user_fields(user: tuple[object, object]) -> dict[str, object]:
    """The log fields of a user; no ``user.name`` rather than a null one."""
    actor_id, actor_name = user
    return (
        {"user.id": actor_id}
        if actor_name is None
        else {"user.id": actor_id, "user.name": actor_name}
    )


def _new_id() -> str:
    """128 random bits as 32 hex digits, the shape of a W3C trace id."""
    return os.urandom(16).hex()


def _shown(rejected: object) -> str | None:
    """A rejected request id as it may be logged: cut short and escaped, or None if absent."""
    if rejected is None:
        return None
    text = rejected if isinstance(rejected, str) else repr(rejected)
    shown = ascii(text[:_SHOWN_REJECTED_CHARS])[1:-1]
    return shown + "..." if len(text) > _SHOWN_REJECTED_CHARS else shown


def _decoded_path(environ: WSGIEnvironment) -> str:
    """The path as Werkzeug decodes it, for requests Flask did not route."""
    raw = environ.get("PATH_INFO", "") or "/"
    return raw.encode("latin-1", "replace").decode("utf-8", "replace")[:MAX_VALUE_CHARS]


def _log_exception(error: BaseException, current: _Request) -> None:
    _stdlib_log.error(
        "unhandled exception: %s",
        type(error).__name__,
        exc_info=error,
        extra={"correlation_id": current.correlation_id},  # also when Flask never routed it
    )


def _flask_logs_exception(app: Flask) -> bool:
    """Tell whether `Flask.handle_exception` will log the exception rather than re-raise it."""
    propagate = app.config["PROPAGATE_EXCEPTIONS"]
    if propagate is None:
        propagate = app.testing or app.debug
    return not propagate and getattr(app.log_exception, "__func__", None) is Flask.log_exception


_reported: set[str] = set()


def _report_internal(where: str, error: Exception) -> None:
    """Report a bug of whodunit's own to ``whodunit.internal``, once per place and type."""
    key = f"{where}:{type(error).__qualname__}"
    if key in _reported:
        return
    _reported.add(key)
    _internal.error(
        "whodunit's Flask extension failed in %s and skipped that step; the request went on. "
        "Later %s failures there are not reported",
        where,
        type(error).__name__,
        exc_info=error,
    )


def _setting(config: Config, key: str, default: object) -> Any:
    """
    Read a setting once: the app's config, else the environment variable of the same name.

    The value in force is written back to the config, so the app can see what was used.
    """
    if key not in config and key in os.environ:
        config[key] = os.environ[key]
    return config.setdefault(key, default)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _flag(key: str, value: object) -> bool:
    """Read a boolean setting, also written as text in the environment (``"false"``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{key} must be True or False, got {value!r}")


def _names(key: str, value: object, *, prefix: str) -> frozenset[str]:
    """Read a list setting: an iterable of strings, or one comma-separated string."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, Iterable) or not all(
        isinstance(item, str) and item.startswith(prefix) for item in value
    ):
        expected = "paths starting with '/'" if prefix else "endpoint names"
        raise ConfigError(f"{key} must be a list of {expected}, got {value!r}")
    return frozenset(value)


# --- client address ----------------------------------------------------------------------

_ClientReader = Callable[["WSGIEnvironment"], "str | None"]
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _client_address_reader(trusted: object) -> _ClientReader:
    """
    Build the function that finds the client's address for ``WHODUNIT_TRUSTED_PROXIES``.

    None or 0 trusts nobody: the address is ``REMOTE_ADDR``, whatever ``X-Forwarded-For``
    says.  A number of hops trusts that many proxies in front of the app, as Werkzeug's
    ``ProxyFix(x_for=n)``.  A list of networks trusts the proxies whose addresses are in
    them: the client is the first address, from the right, that is not one of them.
    """
    if trusted is None or trusted == 0 or trusted == "" or trusted == []:
        return _remote_addr
    if isinstance(trusted, str) and trusted.strip().isdigit():
        trusted = int(trusted)
    if isinstance(trusted, int) and not isinstance(trusted, bool) and trusted > 0:
        return _HopCount(trusted)
    if isinstance(trusted, str):
        trusted = [part.strip() for part in trusted.split(",") if part.strip()]
    if isinstance(trusted, list | tuple | set | frozenset):
        try:
            return _TrustedNetworks([ipaddress.ip_network(net, strict=False) for net in trusted])
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"WHODUNIT_TRUSTED_PROXIES: {exc}; give networks such as ['10.0.0.0/8'], "
                f"or a number of proxy hops"
            ) from exc
    raise ConfigError(
        f"WHODUNIT_TRUSTED_PROXIES must be a number of proxy hops or a list of networks "
        f"such as ['10.0.0.0/8'], got {trusted!r}"
    )


def _remote_addr(environ: WSGIEnvironment) -> str | None:
    address = environ.get("REMOTE_ADDR")
    return address if isinstance(address, str) and address else None


def _forwarded_for(environ: WSGIEnvironment) -> list[str]:
    header = environ.get("HTTP_X_FORWARDED_FOR")
    return [part.strip() for part in header.split(",")] if isinstance(header, str) else []


def _ip(text: str) -> str | None:
    """The address in canonical form, or None for anything that is not a bare IP address."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class _HopCount:
    """Trust the last *hops* entries of ``X-Forwarded-For``, as ``ProxyFix(x_for=hops)``."""

    def __init__(self, hops: int) -> None:
        self.hops = hops

    def __call__(self, environ: WSGIEnvironment) -> str | None:
        forwarded = _forwarded_for(environ)
        if len(forwarded) >= self.hops:
            client = _ip(forwarded[-self.hops])
            if client is not None:
                return client
        return _remote_addr(environ)


class _TrustedNetworks:
    """Walk ``X-Forwarded-For`` from the right while the hop it came from is a trusted proxy."""

    def __init__(self, networks: list[_Network]) -> None:
        self.networks = tuple(networks)

    def __call__(self, environ: WSGIEnvironment) -> str | None:
        client = _remote_addr(environ)
        forwarded = _forwarded_for(environ)
        while client is not None and forwarded and self._trusted(client):
            hop = _ip(forwarded.pop())
            if hop is None:  # malformed: the trusted proxy that sent it is all we know
                break
            client = hop
        return client

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


# --- Flask-SQLAlchemy --------------------------------------------------------------------


def _instrument_flask_sqlalchemy(app: Flask) -> None:
    """Instrument the PostgreSQL engines of a Flask-SQLAlchemy already registered on *app*."""
    db = app.extensions.get("sqlalchemy")
    if db is None:
        return
    with app.app_context():  # Flask-SQLAlchemy keeps its engines per app
        engines = list(db.engines.values())
    for engine in engines:
        if engine.dialect.name == "postgresql":  # the context is a PostgreSQL setting
            instrument_sqlalchemy(engine)
