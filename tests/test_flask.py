"""Tests for whodunit.flask: correlation id, request log, users, client address, DB context."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg
import pytest
from flask import Flask, Response, abort, g, jsonify
from psycopg.rows import dict_row

from tests.fixtures.postgres import sqlalchemy_url
from whodunit import flask as whodunit_flask
from whodunit.context import current_context
from whodunit.errors import ConfigError
from whodunit.flask import Whodunit, correlation_id, users
from whodunit.log import (
    JSONHandler,
    _use_fast_path,
    bind,
    clear_context,
    configure_logging,
    get_context,
)

GAME = "/games/7d1f2a3e-5b4c-4d3e-8f2a-1b0c9d8e7f6a"
NEW_ID = re.compile(r"^[0-9a-f]{32}$")
SETTINGS = (
    "WHODUNIT_REQUEST_ID_HEADER",
    "WHODUNIT_TRUSTED_PROXIES",
    "WHODUNIT_SKIP_PATHS",
    "WHODUNIT_SKIP_ENDPOINTS",
    "WHODUNIT_INSTRUMENT_SQLALCHEMY",
)
REQUEST_LINE_FIELDS = {
    "ts",
    "level",
    "logger",
    "message",
    "correlation_id",
    "http.request.method",
    "url.path",
    "http.route",
    "client.address",
    "user.id",
    "user.name",
    "http.response.status_code",
    "duration_ms",
    "http.response.body.size",
    "user_agent.original",
}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Give each test a clean log context and put the loggers back as they were."""
    root = logging.getLogger()
    touched = [logging.getLogger(name) for name in ("whodunit", "whodunit.request")]
    levels = [logger.level for logger in touched]
    root_level, srcfile, before = root.level, logging._srcfile, set(root.handlers)
    clear_context()
    yield
    clear_context()
    for logger, level in zip(touched, levels, strict=True):
        logger.setLevel(level)
    for handler in root.handlers[:]:
        if handler not in before and isinstance(handler, JSONHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(root_level)
    logging._srcfile = srcfile
    _use_fast_path(False)


@pytest.fixture(autouse=True)
def no_settings_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep WHODUNIT_* variables of the machine running the tests out of the apps."""
    for key in SETTINGS:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def out() -> io.BytesIO:
    """The JSON log output of the whole process, as `configure_logging` sets it up."""
    stream = io.BytesIO()
    configure_logging(stream=stream)
    return stream


def lines(stream: io.BytesIO, logger: str | None = None) -> list[dict[str, Any]]:
    """Parse the JSON lines written so far, those of one logger if given."""
    parsed = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in parsed if logger is None or line["logger"] == logger]


def request_lines(stream: io.BytesIO) -> list[dict[str, Any]]:
    """The request log lines (not whodunit's exception lines, on the same logger)."""
    return [line for line in lines(stream, "whodunit.request") if "duration_ms" in line]


def make_app(**config: Any) -> Flask:
    """A small app with one route of each kind the tests need, not yet set up."""
    app = Flask("shop")
    app.config.update(SECRET_KEY="test", **config)
    view_log = logging.getLogger("shop.views")

    @app.get("/games/<uuid:game_id>")
    def game(game_id: object) -> str:
        view_log.info("showing a game")
        return "ok"

    @app.get("/forbidden")
    def forbidden() -> str:
        abort(403)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("the view failed")

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.get("/context")
    def context() -> Any:
        return jsonify(correlation_id=correlation_id(), log=get_context(), db=current_context())

    return app


def setup(user_loader: Callable[[], Any] | None = None, **config: Any) -> Flask:
    """An app with `Whodunit` registered."""
    app = make_app(**config)
    Whodunit(app, user_loader=user_loader)
    return app


def ann() -> tuple[str, str]:
    """A user loader for a logged-in user."""
    return "42", "ann"


class TestCorrelationId:
    """The X-Request-ID header: accepted when safe, replaced otherwise, always echoed."""

    def test_valid_id_is_kept_and_echoed(self, out: io.BytesIO) -> None:
        """A safe incoming id becomes the correlation id, in the response and the logs."""
        response = setup().test_client().get(GAME, headers={"X-Request-ID": "req-7f3a:1.b_c"})

        assert "req-7f3a:1.b_c" == response.headers["X-Request-ID"]
        assert ["req-7f3a:1.b_c"] * 2 == [line["correlation_id"] for line in lines(out)]
        assert "rejected_request_id" not in request_lines(out)[0]

    def test_128_characters_are_accepted(self) -> None:
        """The longest id accepted is 128 characters."""
        incoming = "a" * 128

        response = setup().test_client().get(GAME, headers={"X-Request-ID": incoming})

        assert incoming == response.headers["X-Request-ID"]

    @pytest.mark.parametrize(
        ("incoming", "shown"),
        [
            ("a" * 129, "a" * 64 + "..."),
            ("caf\u00e9", "caf\\xe9"),
            ("abc\r\nX-Injected: 1", "abc\\r\\nX-Injected: 1"),
            ("two words", "two words"),
            ("a,b", "a,b"),
            ("", ""),
        ],
        ids=["over-long", "non-ascii", "crlf-injection", "space", "comma", "empty"],
    )
    def test_unsafe_id_is_replaced_never_echoed(
        self, out: io.BytesIO, incoming: str, shown: str
    ) -> None:
        """An unsafe id is replaced by a new one; the log says so, escaped and cut short."""
        client = setup().test_client()

        # Set through the environ: the test client itself refuses CR/LF in headers.
        response = client.get(GAME, environ_overrides={"HTTP_X_REQUEST_ID": incoming})

        echoed = response.headers["X-Request-ID"]
        assert NEW_ID.match(echoed)
        assert [echoed] == response.headers.getlist("X-Request-ID")
        assert "X-Injected" not in response.headers
        (line,) = request_lines(out)
        assert (echoed, shown) == (line["correlation_id"], line["rejected_request_id"])

    def test_missing_id_gets_a_new_one(self, out: io.BytesIO) -> None:
        """Without the header, each request gets its own new id."""
        client = setup().test_client()

        first, second = (client.get(GAME).headers["X-Request-ID"] for _ in range(2))

        assert NEW_ID.match(first)
        assert NEW_ID.match(second)
        assert first != second
        assert "rejected_request_id" not in request_lines(out)[0]

    def test_header_name_is_configurable(self) -> None:
        """WHODUNIT_REQUEST_ID_HEADER names the header read and echoed."""
        client = setup(WHODUNIT_REQUEST_ID_HEADER="X-Correlation-ID").test_client()

        response = client.get(GAME, headers={"X-Correlation-ID": "abc-1"})

        assert ("abc-1", None) == (
            response.headers["X-Correlation-ID"],
            response.headers.get("X-Request-ID"),
        )

    def test_app_header_is_left_alone(self) -> None:
        """An X-Request-ID the app sets itself is not overwritten nor doubled."""
        app = setup()

        @app.after_request
        def own_id(response: Response) -> Response:
            response.headers["X-Request-ID"] = "own"
            return response

        response = app.test_client().get(GAME)

        assert ["own"] == response.headers.getlist("X-Request-ID")

    def test_correlation_id_during_and_after_the_request(self) -> None:
        """correlation_id() gives the request's id inside it and None outside."""
        response = setup().test_client().get("/context", headers={"X-Request-ID": "r-1"})

        assert "r-1" == response.json["correlation_id"]
        assert correlation_id() is None


class TestRequestLog:
    """One JSON line per request, on the whodunit.request logger."""

    def test_one_line_with_every_field(self, out: io.BytesIO) -> None:
        """The request line carries every field of the contract, with the right values."""
        client = setup(user_loader=ann).test_client()

        client.get(GAME, headers={"X-Request-ID": "r-1", "User-Agent": "pytest/1"})

        (line,) = request_lines(out)
        assert REQUEST_LINE_FIELDS == set(line)
        assert {
            "level": "INFO",
            "message": "GET /games/<uuid:game_id> 200",
            "correlation_id": "r-1",
            "http.request.method": "GET",
            "url.path": GAME,
            "http.route": "/games/<uuid:game_id>",
            "client.address": "127.0.0.1",
            "user.id": "42",
            "user.name": "ann",
            "http.response.status_code": 200,
            "http.response.body.size": 2,
            "user_agent.original": "pytest/1",
        } == {key: line[key] for key in REQUEST_LINE_FIELDS - {"ts", "logger", "duration_ms"}}
        assert 0 < line["duration_ms"] < 10_000

    def test_app_lines_carry_the_request_context(self, out: io.BytesIO) -> None:
        """A line the view logs carries the correlation id, route, client and user."""
        setup(user_loader=ann).test_client().get(GAME, headers={"X-Request-ID": "r-2"})

        (line,) = lines(out, "shop.views")
        assert ("r-2", "/games/<uuid:game_id>", GAME, "127.0.0.1", "42", "ann") == (
            line["correlation_id"],
            line["http.route"],
            line["url.path"],
            line["client.address"],
            line["user.id"],
            line["user.name"],
        )

    @pytest.mark.parametrize(
        ("path", "status", "level"),
        [(GAME, 200, "INFO"), ("/forbidden", 403, "WARNING"), ("/nowhere", 404, "WARNING")],
    )
    def test_level_follows_the_status(
        self, out: io.BytesIO, path: str, status: int, level: str
    ) -> None:
        """Success is INFO, a client error WARNING."""
        setup().test_client().get(path)

        (line,) = request_lines(out)
        assert (status, level) == (line["http.response.status_code"], line["level"])

    def test_unrouted_path_has_no_route(self, out: io.BytesIO) -> None:
        """A 404 has its path but no route, and the path is the message."""
        setup().test_client().get("/nowhere")

        (line,) = request_lines(out)
        assert ("GET /nowhere 404", None) == (line["message"], line.get("http.route"))

    @pytest.mark.parametrize("path", ["/health", "/metrics"])
    def test_skip_paths_get_an_id_but_no_line(self, out: io.BytesIO, path: str) -> None:
        """Health checks and metrics scrapes are not logged, but still echo an id."""
        response = setup().test_client().get(path)

        assert NEW_ID.match(response.headers["X-Request-ID"])
        assert [] == request_lines(out)

    def test_skip_paths_and_endpoints_from_config(self, out: io.BytesIO) -> None:
        """WHODUNIT_SKIP_PATHS and WHODUNIT_SKIP_ENDPOINTS replace the defaults."""
        client = setup(
            WHODUNIT_SKIP_PATHS=["/forbidden"], WHODUNIT_SKIP_ENDPOINTS="game, context"
        ).test_client()

        for path in (GAME, "/context", "/forbidden", "/health"):
            client.get(path)

        assert ["/health"] == [line["url.path"] for line in request_lines(out)]

    def test_skip_endpoints_from_the_constructor(self, out: io.BytesIO) -> None:
        """Whodunit(skip_endpoints=...) applies when the app's config does not say."""
        app = make_app()
        Whodunit(app, skip_endpoints=["game"])

        app.test_client().get(GAME)

        assert [] == request_lines(out)

    def test_request_lines_survive_a_quiet_whodunit_logger(self, out: io.BytesIO) -> None:
        """configure_logging quiets "whodunit" to WARNING; request lines still come out."""
        assert logging.WARNING == logging.getLogger("whodunit").level

        setup().test_client().get(GAME)

        assert 1 == len(request_lines(out))


class TestExceptions:
    """Unhandled exceptions: logged once with the stack, the app's handling untouched."""

    def test_logged_once_with_stack_and_500_returned(self, out: io.BytesIO) -> None:
        """In production mode Flask logs it once, with our context, and answers 500."""
        response = setup().test_client().get("/boom", headers={"X-Request-ID": "r-boom"})

        assert 500 == response.status_code
        (error,) = [line for line in lines(out) if "exception.stacktrace" in line]
        assert ("RuntimeError", "the view failed", "r-boom", "/boom") == (
            error["exception.type"],
            error["exception.message"],
            error["correlation_id"],
            error["http.route"],
        )
        assert "raise RuntimeError" in error["exception.stacktrace"]
        (line,) = request_lines(out)
        assert ("ERROR", 500, "r-boom") == (
            line["level"],
            line["http.response.status_code"],
            line["correlation_id"],
        )

    def test_propagated_exception_logged_once_by_whodunit(self, out: io.BytesIO) -> None:
        """When Flask re-raises (testing mode), whodunit logs it, once, and the line says 500."""
        client = setup(TESTING=True).test_client()

        with pytest.raises(RuntimeError, match="the view failed"):
            client.get("/boom", headers={"X-Request-ID": "r-boom"})

        (error,) = [line for line in lines(out) if "exception.stacktrace" in line]
        assert ("whodunit.request", "r-boom", "RuntimeError") == (
            error["logger"],
            error["correlation_id"],
            error["exception.type"],
        )
        (line,) = request_lines(out)
        assert ("ERROR", 500) == (line["level"], line["http.response.status_code"])

    def test_app_error_handler_is_untouched(self, out: io.BytesIO) -> None:
        """An exception the app handles itself is its business: its answer, no stack logged."""
        app = setup()
        app.register_error_handler(RuntimeError, lambda error: ("handled", 503))

        response = app.test_client().get("/boom")

        assert (503, b"handled") == (response.status_code, response.data)
        assert [] == [line for line in lines(out) if "exception.stacktrace" in line]
        assert "ERROR" == request_lines(out)[0]["level"]

    def test_exception_on_a_skipped_path_is_still_logged(self, out: io.BytesIO) -> None:
        """Skipping a path drops its request line, never its exception."""
        client = setup(TESTING=True, WHODUNIT_SKIP_PATHS=["/boom"]).test_client()

        with pytest.raises(RuntimeError):
            client.get("/boom")

        assert [] == request_lines(out)
        assert 1 == len([line for line in lines(out) if "exception.stacktrace" in line])

    def test_internal_failure_never_breaks_the_request(
        self, out: io.BytesIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failure inside whodunit is reported once to whodunit.internal; the app answers."""

        def broken(*args: object, **kwargs: object) -> None:
            raise OSError("broken bridge")

        monkeypatch.setattr(whodunit_flask, "push_context", broken)
        monkeypatch.setattr(whodunit_flask, "_reported", set())
        client = setup().test_client()

        responses = [client.get(GAME) for _ in range(2)]

        assert [200, 200] == [response.status_code for response in responses]
        (report,) = lines(out, "whodunit.internal")
        assert ("ERROR", "OSError") == (report["level"], report["exception.type"])
        assert 2 == len(request_lines(out))


class TestUsers:
    """The user loader and the ready-made ones in whodunit.flask.users."""

    def test_flask_login(self, out: io.BytesIO) -> None:
        """The authenticated flask-login user is logged, from the login request on."""
        flask_login = pytest.importorskip("flask_login")

        class User(flask_login.UserMixin):
            def __init__(self, user_id: str) -> None:
                self.id = user_id
                self.email = f"user{user_id}@example.com"

        app = setup(user_loader=users.flask_login(name_attr="email"))
        manager = flask_login.LoginManager(app)
        manager.user_loader(User)
        app.add_url_rule("/login", "login", lambda: str(flask_login.login_user(User("7"))))
        client = app.test_client()

        for path in (GAME, "/login", GAME):
            client.get(path)

        logged = [(line.get("user.id"), line.get("user.name")) for line in request_lines(out)]
        assert [(None, None), ("7", "user7@example.com"), ("7", "user7@example.com")] == logged

    def test_from_g(self, out: io.BytesIO) -> None:
        """Attributes the app puts on g, dotted paths included, name the user."""

        class Account:
            id = 5
            handle = "bob"

        app = setup(user_loader=users.from_g("account.id", "account.handle"))
        app.before_request(lambda: setattr(g, "account", Account()))

        app.test_client().get(GAME)

        (line,) = request_lines(out)
        assert (5, "bob") == (line["user.id"], line["user.name"])

    def test_from_g_anonymous(self, out: io.BytesIO) -> None:
        """Nothing on g means anonymous: no user fields."""
        setup(user_loader=users.from_g()).test_client().get(GAME)

        assert "user.id" not in request_lines(out)[0]

    def test_jwt_with_flask_jwt_extended(self, out: io.BytesIO) -> None:
        """A valid token names the user on every line, even in a view without @jwt_required."""
        jwt_extended = pytest.importorskip("flask_jwt_extended")
        app = setup(user_loader=users.jwt_claim("sub", "name"), JWT_SECRET_KEY="k" * 32)
        jwt_extended.JWTManager(app)
        with app.app_context():
            token = jwt_extended.create_access_token("7", additional_claims={"name": "ann"})
        client = app.test_client()

        client.get(GAME, headers={"Authorization": f"Bearer {token}"})
        client.get(GAME, headers={"Authorization": "Bearer not.a.token"})
        client.get(GAME)

        view_line = lines(out, "shop.views")[0]
        assert ("7", "ann") == (view_line["user.id"], view_line["user.name"])
        logged = [line.get("user.id") for line in request_lines(out)]
        assert ["7", None, None] == logged
        assert [] == lines(out, "whodunit.internal")  # a bad token is not a loader failure

    def test_jwt_claims_on_g(self, out: io.BytesIO) -> None:
        """Without flask-jwt-extended, the claims are the app's own decoded dict on g."""
        app = setup(user_loader=users.jwt_claim("sub", "name", g_attr="claims"))
        app.before_request(lambda: setattr(g, "claims", {"sub": "u-9", "name": "cy"}))

        app.test_client().get(GAME)

        (line,) = request_lines(out)
        assert ("u-9", "cy") == (line["user.id"], line["user.name"])

    def test_failing_loader_means_unknown_user(self, out: io.BytesIO) -> None:
        """A loader that raises leaves the user out and is reported once, not per request."""

        def broken() -> tuple[str, str]:
            raise LookupError("user store down")

        client = setup(user_loader=broken).test_client()

        statuses = [client.get(GAME).status_code for _ in range(3)]

        assert [200, 200, 200] == statuses
        assert all("user.id" not in line for line in request_lines(out))
        (report,) = lines(out, "whodunit.internal")
        assert "LookupError" == report["exception.type"]

    def test_malformed_loader_answer_means_unknown_user(self, out: io.BytesIO) -> None:
        """A loader answering something other than a pair counts as a failure."""
        setup(user_loader=lambda: ("1", "a", "extra")).test_client().get(GAME)

        assert "user.id" not in request_lines(out)[0]
        assert 1 == len(lines(out, "whodunit.internal"))


class TestClientAddress:
    """client.address and the DB context's client_ip, with and without trusted proxies."""

    @staticmethod
    def client_of(app: Flask, remote: str, forwarded: str | None) -> tuple[str, str]:
        """The client address as logged and as put in the database context."""
        environ = {"REMOTE_ADDR": remote}
        if forwarded is not None:
            environ["HTTP_X_FORWARDED_FOR"] = forwarded
        body = app.test_client().get("/context", environ_overrides=environ).json
        return body["log"]["client.address"], body["db"]["client_ip"]

    def test_spoofed_forwarded_for_is_ignored_by_default(self) -> None:
        """Without trusted proxies, X-Forwarded-For is not believed."""
        assert ("203.0.113.5", "203.0.113.5") == self.client_of(
            setup(), "203.0.113.5", "198.51.100.1"
        )

    @pytest.mark.parametrize(
        ("forwarded", "expected"),
        [
            ("198.51.100.7", "198.51.100.7"),
            ("6.6.6.6, 198.51.100.7", "198.51.100.7"),  # the spoofed left part is ignored
            ("not-an-ip", "10.0.0.2"),
            ("198.51.100.7:5000", "10.0.0.2"),
            ("", "10.0.0.2"),
        ],
    )
    def test_hop_count(self, forwarded: str, expected: str) -> None:
        """A hop count trusts that many entries from the right, as ProxyFix(x_for=n)."""
        app = setup(WHODUNIT_TRUSTED_PROXIES=1)

        assert (expected, expected) == self.client_of(app, "10.0.0.2", forwarded)

    def test_hop_count_with_too_few_entries(self) -> None:
        """Fewer entries than hops: the peer address is all we know."""
        app = setup(WHODUNIT_TRUSTED_PROXIES="2")

        assert ("10.0.0.2", "10.0.0.2") == self.client_of(app, "10.0.0.2", "198.51.100.7")

    @pytest.mark.parametrize(
        ("remote", "forwarded", "expected"),
        [
            ("10.0.0.2", "6.6.6.6, 198.51.100.7", "198.51.100.7"),
            ("10.0.0.2", "198.51.100.7, 10.1.2.3", "198.51.100.7"),  # two trusted hops
            ("203.0.113.5", "198.51.100.7", "203.0.113.5"),  # not through our proxy
            ("10.0.0.2", "10.0.0.3, garbage", "10.0.0.2"),  # malformed: stop at the proxy
            ("10.0.0.2", "2001:db8::1", "2001:db8::1"),
        ],
    )
    def test_trusted_networks(self, remote: str, forwarded: str, expected: str) -> None:
        """Networks trust only proxies inside them, walking the header from the right."""
        app = setup(WHODUNIT_TRUSTED_PROXIES=["10.0.0.0/8", "fd00::/8"])

        assert (expected, expected) == self.client_of(app, remote, forwarded)

    @pytest.mark.parametrize("value", [["10.0.0.0/33"], ["nonsense"], -1, True, {"a": 1}])
    def test_bad_setting_is_refused(self, value: object) -> None:
        """An unusable WHODUNIT_TRUSTED_PROXIES fails at init_app, naming the key."""
        with pytest.raises(ConfigError, match="WHODUNIT_TRUSTED_PROXIES"):
            setup(WHODUNIT_TRUSTED_PROXIES=value)


class TestIsolation:
    """Each request sees only its own context, and leaves nothing behind."""

    def test_nothing_leaks_after_a_request(self) -> None:
        """After a request the thread's log and database contexts are as before."""
        client = setup(user_loader=ann).test_client()

        client.get(GAME)

        assert ({}, {}, None) == (get_context(), current_context(), correlation_id())

    def test_outer_fields_are_kept_and_restored(self, out: io.BytesIO) -> None:
        """Fields bound outside the request show in it and are exactly as before afterwards."""
        bind(deployment="blue")
        client = setup(user_loader=ann).test_client()

        client.get(GAME)

        assert {"deployment": "blue"} == get_context()
        assert "blue" == request_lines(out)[0]["deployment"]

    def test_concurrent_requests_see_their_own_context(self) -> None:
        """Two requests in flight at once on two threads each keep their own context."""
        app = setup(user_loader=lambda: (g.get("who"), None))
        barrier = threading.Barrier(2, timeout=10)

        @app.get("/together/<who>")
        def together(who: str) -> Any:
            g.who = who
            barrier.wait()  # both requests are now inside their views
            return jsonify(id=correlation_id(), log=get_context(), db=current_context())

        results: dict[str, Any] = {}

        def call(who: str) -> None:
            response = app.test_client().get(f"/together/{who}", headers={"X-Request-ID": who})
            results[who] = response.json

        threads = [threading.Thread(target=call, args=(who,)) for who in ("t1", "t2")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        for who in ("t1", "t2"):
            body = results[who]
            assert (who, who, who, who) == (
                body["id"],
                body["log"]["correlation_id"],
                body["db"]["correlation_id"],
                body["db"]["actor_id"],
            )


class TestInitApp:
    """The extension contract: registration, factories, settings."""

    def test_second_registration_is_refused(self) -> None:
        """Registering twice on one app fails and says what to do instead."""
        app = setup()

        with pytest.raises(RuntimeError, match="use that instance"):
            Whodunit(app)

    def test_factory_pattern(self, out: io.BytesIO) -> None:
        """One extension object can set up several apps later, keeping no app itself."""
        extension = Whodunit(user_loader=ann)
        apps = [make_app(), make_app()]
        for app in apps:
            extension.init_app(app)

        for app in apps:
            app.test_client().get(GAME)

        assert 2 == len(request_lines(out))
        assert not hasattr(extension, "app")
        assert all(app.extensions["whodunit"].extension is extension for app in apps)

    def test_settings_are_written_back_with_their_defaults(self) -> None:
        """init_app records every setting it used in app.config."""
        app = setup()

        assert {
            "WHODUNIT_REQUEST_ID_HEADER": "X-Request-ID",
            "WHODUNIT_TRUSTED_PROXIES": None,
            "WHODUNIT_SKIP_PATHS": ("/health", "/healthz", "/metrics"),
            "WHODUNIT_SKIP_ENDPOINTS": (),
            "WHODUNIT_INSTRUMENT_SQLALCHEMY": True,
        } == {key: app.config[key] for key in SETTINGS}

    def test_settings_from_the_environment(
        self, out: io.BytesIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without a config key, the environment variable of the same name is used."""
        monkeypatch.setenv("WHODUNIT_SKIP_PATHS", "/forbidden, /context")
        monkeypatch.setenv("WHODUNIT_TRUSTED_PROXIES", "10.0.0.0/8")
        client = setup().test_client()

        client.get("/forbidden")
        client.get(
            GAME,
            environ_overrides={"REMOTE_ADDR": "10.0.0.2"},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )

        assert ["198.51.100.7"] == [line["client.address"] for line in request_lines(out)]

    def test_config_wins_over_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A key set in app.config is used even when the environment says otherwise."""
        monkeypatch.setenv("WHODUNIT_REQUEST_ID_HEADER", "X-From-Env")

        response = setup(WHODUNIT_REQUEST_ID_HEADER="X-From-Config").test_client().get(GAME)

        assert "X-From-Config" in response.headers
        assert "X-From-Env" not in response.headers

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("WHODUNIT_REQUEST_ID_HEADER", "X Request\nID"),
            ("WHODUNIT_REQUEST_ID_HEADER", 7),
            ("WHODUNIT_SKIP_PATHS", ["health"]),
            ("WHODUNIT_SKIP_ENDPOINTS", [1]),
            ("WHODUNIT_INSTRUMENT_SQLALCHEMY", "maybe"),
            ("WHODUNIT_INSTRUMENT_SQLALCHEMY", 1),
        ],
    )
    def test_bad_setting_is_refused(self, key: str, value: object) -> None:
        """A setting whodunit cannot use fails at init_app, naming the key."""
        with pytest.raises(ConfigError, match=key):
            setup(**{key: value})

    @pytest.mark.parametrize(
        ("config", "environment", "instrumented"),
        [
            ({}, None, True),
            ({"WHODUNIT_INSTRUMENT_SQLALCHEMY": False}, None, False),
            ({}, "off", False),
        ],
    )
    def test_flask_sqlalchemy_engines_are_instrumented(
        self,
        monkeypatch: pytest.MonkeyPatch,
        config: dict[str, bool],
        environment: str | None,
        instrumented: bool,
    ) -> None:
        """A Flask-SQLAlchemy registered first gets its PostgreSQL engines instrumented."""
        from flask_sqlalchemy import SQLAlchemy
        from sqlalchemy import event

        from whodunit.context import _on_begin

        if environment is not None:
            monkeypatch.setenv("WHODUNIT_INSTRUMENT_SQLALCHEMY", environment)
        app = make_app(
            SQLALCHEMY_DATABASE_URI="postgresql+psycopg://app@db.invalid/shop",
            SQLALCHEMY_BINDS={"cache": "sqlite://"},
            **config,
        )
        db = SQLAlchemy(app)  # engines are made now; nothing connects yet
        Whodunit(app)

        with app.app_context():
            engines = db.engines
        assert {None: instrumented, "cache": False} == {
            key: event.contains(engine, "begin", _on_begin) for key, engine in engines.items()
        }

    def test_import_whodunit_does_not_import_flask(self) -> None:
        """The package itself works without Flask (daemon, formatter-only users)."""
        code = "import sys, whodunit, whodunit.log; assert 'flask' not in sys.modules"

        subprocess.run([sys.executable, "-c", code], check=True)


# --- with a real PostgreSQL -------------------------------------------------------------


@pytest.fixture(params=["psycopg", "psycopg2"])
def game_app(request: pytest.FixtureRequest, app_dsn: str) -> Iterator[Flask]:
    """A Flask-SQLAlchemy app (as the non-superuser app role) with a games table."""
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy import Column, Integer, Text, delete, insert

    db = SQLAlchemy()
    games = db.Table("games", Column("id", Integer, primary_key=True), Column("name", Text))

    app = make_app(SQLALCHEMY_DATABASE_URI=sqlalchemy_url(app_dsn, request.param))
    db.init_app(app)
    Whodunit(app, user_loader=users.from_g("user_id", "user_name"))

    @app.before_request
    def log_in() -> None:
        g.user_id, g.user_name = "7", "ann"

    @app.delete("/games/<int:game_id>")
    def delete_game(game_id: int) -> str:
        db.session.execute(delete(games).where(games.c.id == game_id))
        db.session.commit()
        return "deleted"

    with app.app_context():
        db.create_all()  # after install: the event trigger audits the new table
        db.session.execute(insert(games), [{"id": 1, "name": "chess"}, {"id": 2, "name": "go"}])
        db.session.commit()
    yield app
    with app.app_context():
        db.engine.dispose()


class TestDatabaseContext:
    """Transactions made during a request are audited with the request's context."""

    def test_delete_carries_the_request_context(
        self, game_app: Flask, conn: psycopg.Connection[Any]
    ) -> None:
        """The audit row of a DELETE names the request's id, user, method and path."""
        response = game_app.test_client().delete("/games/1", headers={"X-Request-ID": "req-del"})

        assert 200 == response.status_code
        (row,) = (
            conn.cursor(row_factory=dict_row)
            .execute("SELECT * FROM whodunit.statement WHERE op = 'DELETE'")
            .fetchall()
        )
        assert ("req-del", "7", "ann", "DELETE", "/games/1", "127.0.0.1") == (
            row["correlation_id"],
            row["actor_id"],
            row["actor_name"],
            row["request_method"],
            row["request_path"],
            row["client_ip"],
        )

    def test_work_outside_requests_has_no_request_context(
        self, game_app: Flask, conn: psycopg.Connection[Any]
    ) -> None:
        """The set-up INSERT, made outside any request, carries no correlation id."""
        rows = conn.execute(
            "SELECT correlation_id, actor_id FROM whodunit.statement WHERE op = 'INSERT'"
        ).fetchall()

        assert {(None, None)} == set(rows)
