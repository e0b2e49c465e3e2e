"""The @audit_log decorator and the auth helpers, written to a real PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from sqlalchemy import create_engine, text
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import Connection, Engine

from tests.fixtures.postgres import TEMPLATE, Server
from whodunit import audit
from whodunit.audit import (
    AuditWriteError,
    audit_log,
    login_failed,
    login_succeeded,
    permission_changed,
)
from whodunit.context import acting_as, active_connection, instrument_sqlalchemy
from whodunit.errors import ConfigError, DatabaseUnavailableError, WhodunitError

Conn = psycopg.Connection[Any]
Row = dict[str, Any]

SECRET = "s3cr3t-planted-value"
CALLER = {"correlation_id": "req-7f3a", "client_ip": "203.0.113.9"}


class Declined(Exception):
    """The application's own error, raised by the audited functions below."""


@audit_log("order.refund", "order", resource_id="order_id", record_args=True)
def refund(order_id: int, amount: int = 5, *, password: str = "") -> str:
    """Refund an order (the password argument must never be stored)."""
    if amount < 0:
        raise Declined(f"negative amount for order {order_id}; token={SECRET}")
    return f"refunded {amount}"


@audit_log("order.refund", "order", resource_id="order_id")
async def refund_async(order_id: int, fail: bool = False) -> str:
    """The async twin of `refund`."""
    await asyncio.sleep(0)
    if fail:
        raise Declined("declined")
    return "refunded"


@dataclass
class Database:
    """The module's database: a superuser DSN and the app role's."""

    dsn: str
    app_dsn: str


class Trail:
    """The app_event rows a test wrote, read as the superuser."""

    def __init__(self, conn: Conn) -> None:
        self.cursor = conn.cursor(row_factory=dict_row)
        row = self.cursor.execute("SELECT coalesce(max(id), 0) AS id FROM whodunit.app_event")
        self.mark = row.fetchall()[0]["id"]

    def events(self) -> list[Row]:
        """Return the rows written since the test began, oldest first."""
        return self.cursor.execute(
            "SELECT * FROM whodunit.app_event WHERE id > %s ORDER BY id", (self.mark,)
        ).fetchall()


def txid(connection: Connection) -> str:
    """Return the id of the connection's open transaction."""
    return str(connection.execute(text("SELECT pg_current_xact_id()::text")).scalar_one())


@contextmanager
def make_engine(dsn: str, driver: str = "psycopg") -> Iterator[Engine]:
    """An instrumented engine on *dsn* through the given SQLAlchemy driver."""
    dbapi = psycopg if driver == "psycopg" else importlib.import_module("psycopg2")
    engine = create_engine(f"postgresql+{driver}://", creator=lambda: dbapi.connect(dsn))
    instrument_sqlalchemy(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def _unconfigured() -> Iterator[None]:
    """Each test starts and ends with nothing configured."""
    audit.configure()
    yield
    audit.configure()


@pytest.fixture(scope="module")
def database(pg_server: Server) -> Iterator[Database]:
    """
    One database with whodunit, and a non-superuser app role, for the whole module.

    Events are only ever added, so tests tell theirs apart by id (see `Trail`); a fresh
    database per test would cost more than all the tests.
    """
    name, role = f"whodunit_audit_{os.getpid()}", f"audit_app_{os.getpid()}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    dsn = pg_server.database_dsn(name)
    yield Database(dsn, psycopg.conninfo.make_conninfo(dsn, user=role))
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def app_dsn(database: Database) -> str:
    """The DSN of the non-superuser app role (overrides the per-test fixture)."""
    return database.app_dsn


@pytest.fixture
def trail(database: Database) -> Iterator[Trail]:
    """The events this test writes."""
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        yield Trail(conn)


@pytest.fixture
def engine(app_dsn: str) -> Iterator[Engine]:
    """An instrumented psycopg 3 engine, connected as the non-superuser app role."""
    with make_engine(app_dsn) as engine:
        yield engine


@pytest.fixture(params=["psycopg", "psycopg2"])
def any_engine(app_dsn: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An instrumented engine as the app role, once per supported SQLAlchemy dialect."""
    with make_engine(app_dsn, request.param) as engine:
        yield engine


@pytest.fixture
def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Return the records of the whodunit.audit logger."""
    return [r for r in caplog.records if r.name == "whodunit.audit"]


class TestInCallersTransaction:
    def test_success_is_written_in_the_callers_transaction(
        self, any_engine: Engine, trail: Trail
    ) -> None:
        """A success commits with the caller's transaction, with the context's actor."""
        with acting_as("u-7", "support-agent", **CALLER), any_engine.begin() as connection:
            caller_txid = txid(connection)
            assert "refunded 5" == refund(42)
        [event] = trail.events()
        assert ("order.refund", "order", "42", "success") == (
            event["action"],
            event["resource_type"],
            event["resource_id"],
            event["outcome"],
        )
        assert ("u-7", "support-agent", "req-7f3a", "203.0.113.9") == (
            event["actor_id"],
            event["actor_name"],
            event["correlation_id"],
            event["client_ip"],
        )
        assert caller_txid == str(event["txid"])
        assert event["error"] is None
        assert event["duration_ms"] >= 0

    def test_rolled_back_transaction_leaves_no_success(
        self, any_engine: Engine, trail: Trail
    ) -> None:
        """The success of an action that rolls back is gone with it."""
        with any_engine.connect() as connection:
            transaction = connection.begin()
            refund(42)
            transaction.rollback()
        assert [] == trail.events()

    def test_failure_survives_the_callers_rollback(self, any_engine: Engine, trail: Trail) -> None:
        """A failure is written apart (here through the caller's engine) and the error re-raised."""
        with acting_as("u-7", **CALLER), any_engine.connect() as connection:
            transaction = connection.begin()
            caller_txid = txid(connection)
            with pytest.raises(Declined) as raised:
                refund(42, -1)
            transaction.rollback()
        [event] = trail.events()
        assert ("failure", "u-7", "req-7f3a") == (
            event["outcome"],
            event["actor_id"],
            event["correlation_id"],
        )
        assert (
            f"tests.test_audit.Declined: {raised.value}".replace(SECRET, "[REDACTED]")
            == (event["error"])
        )
        assert caller_txid != str(event["txid"])

    def test_callers_transaction_stays_active_after_an_own_write(
        self, engine: Engine, trail: Trail
    ) -> None:
        """The own transaction of a failure does not hide the caller's from later events."""
        with engine.begin() as connection:
            with pytest.raises(Declined):
                refund(1, -1)
            assert connection is active_connection()
            caller_txid = txid(connection)
            refund(2)
        assert ["failure", "success"] == [e["outcome"] for e in trail.events()]
        assert caller_txid == str(trail.events()[1]["txid"])


class TestOwnTransaction:
    def test_success_without_a_transaction_uses_the_configured_engine(
        self, engine: Engine, trail: Trail, app_dsn: str
    ) -> None:
        """No transaction open: the event commits on its own, as the app role."""
        audit.configure(engine=engine)
        refund(7)
        [event] = trail.events()
        assert "success" == event["outcome"]
        app_role = psycopg.conninfo.conninfo_to_dict(app_dsn)["user"]
        assert (app_role, app_role) == (event["db_session_user"], event["db_current_user"])

    def test_dsn_target_writes_with_psycopg(self, app_dsn: str, trail: Trail) -> None:
        """A DSN target opens a psycopg connection and passes the context explicitly."""
        audit.configure(dsn=app_dsn)
        with acting_as("job:nightly", **CALLER):
            refund(7)
        [event] = trail.events()
        assert ("job:nightly", "req-7f3a") == (event["actor_id"], event["correlation_id"])

    def test_nothing_configured_logs_and_warns_once(self, caplog: pytest.LogCaptureFixture) -> None:
        """Without a database the log line is still written, with one warning on how to fix it."""
        before = audit.unrecorded_events()
        with acting_as("u-7", **CALLER):
            refund(1)
            refund(2)
        lines = log_lines(caplog)
        infos = [r for r in lines if r.levelno == logging.INFO]
        warnings = [r for r in lines if r.levelno == logging.WARNING]
        assert 2 == len(infos)
        assert 1 == len(warnings)
        assert "configure(engine=...)" in warnings[0].getMessage()
        fields = vars(infos[1])
        assert ("order.refund", "success", "order", "2") == (
            fields["event.action"],
            fields["event.outcome"],
            fields["resource.type"],
            fields["resource.id"],
        )
        assert ("u-7", "req-7f3a") == (fields["user.id"], fields["correlation_id"])
        assert "event.id" not in fields
        assert before + 2 == audit.unrecorded_events()

    def test_log_line_names_the_recorded_row(
        self, engine: Engine, trail: Trail, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A recorded event's log line carries the row id, so logs and trail join."""
        audit.configure(engine=engine)
        refund(3)
        [line] = log_lines(caplog)
        assert trail.events()[0]["id"] == vars(line)["event.id"]

    def test_engine_and_dsn_together_are_refused(self) -> None:
        """One target only: both arguments is a TypeError naming them."""
        unconnected = create_engine("postgresql+psycopg://")
        with pytest.raises(TypeError, match="engine= or dsn="):
            audit.configure(engine=unconnected, dsn="dbname=x")

    def test_malformed_dsn_is_a_config_error_without_the_password(self) -> None:
        """An unparsable DSN fails at configure time, its password masked."""
        with pytest.raises(ConfigError) as raised:
            audit.configure(dsn="postgresql://app:hunter2@db/shop?bogus_option=1")
        assert "hunter2" not in str(raised.value)


class TestFailureToRecord:
    def test_unreachable_database_on_failure_keeps_the_apps_exception(
        self, closed_port: int, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The app's own exception comes out unchanged; the event is logged at ERROR and counted."""
        audit.configure(dsn=f"host=127.0.0.1 port={closed_port} dbname=x user=x connect_timeout=2")
        before = audit.unrecorded_events()
        with pytest.raises(Declined) as raised:
            refund(9, -1)
        assert raised.value.__cause__ is None
        assert raised.value.__context__ is None
        [line] = [r for r in log_lines(caplog) if r.levelno == logging.ERROR]
        assert "failure" == vars(line)["event.outcome"]
        assert "DatabaseUnavailableError" in vars(line)["audit.write_error"]
        assert before + 1 == audit.unrecorded_events()

    def test_unreachable_database_on_success_raises(self, closed_port: int) -> None:
        """A success that cannot be recorded fails closed with an AuditWriteError."""
        audit.configure(dsn=f"host=127.0.0.1 port={closed_port} dbname=x user=x connect_timeout=2")
        with pytest.raises(AuditWriteError, match=re.escape("'order.refund' (success)")) as raised:
            refund(9)
        assert isinstance(raised.value, WhodunitError)
        assert isinstance(raised.value.__cause__, DatabaseUnavailableError)

    def test_write_error_in_the_callers_transaction_says_to_roll_back(
        self, pg_server: Server
    ) -> None:
        """In a database without whodunit, the caller learns its transaction cannot commit."""
        with (
            make_engine(pg_server.dsn) as bare,
            pytest.raises(AuditWriteError, match="rolled back"),
            bare.begin(),
        ):
            refund(9)


class TestArguments:
    def test_resource_id_from_a_callable(self, engine: Engine, trail: Trail) -> None:
        """A callable gets the bound arguments, defaults applied."""

        @audit_log("doc.share", "document", resource_id=lambda args: args["doc"]["id"])
        def share(doc: dict[str, int], mode: str = "read") -> None:
            """Share a document."""

        audit.configure(engine=engine)
        share({"id": 314})
        assert "314" == trail.events()[0]["resource_id"]

    def test_recorded_arguments_are_redacted(self, engine: Engine, trail: Trail) -> None:
        """record_args keeps the arguments, but never a password."""
        audit.configure(engine=engine)
        refund(5, 3, password=SECRET)
        assert {"args": {"order_id": 5, "amount": 3, "password": "[REDACTED]"}} == (
            trail.events()[0]["details"]
        )

    def test_named_arguments_only(self, engine: Engine, trail: Trail) -> None:
        """record_args with names stores just those; a big int is kept as text."""

        @audit_log("bulk.import", record_args=["batch"])
        def bulk(batch: int, payload: bytes) -> None:
            """Import a batch."""

        audit.configure(engine=engine)
        bulk(2**70, b"x" * 100)
        assert str({"args": {"batch": 2**70}}) == trail.events()[0]["details"]

    def test_secret_in_the_error_message_is_redacted(
        self, engine: Engine, trail: Trail, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A secret in the exception text reaches neither the row nor the log line."""
        audit.configure(engine=engine)
        with pytest.raises(Declined):
            refund(5, -1)
        assert SECRET not in trail.events()[0]["error"]
        assert "token=[REDACTED]" in trail.events()[0]["error"]
        assert all(SECRET not in str(vars(r)) for r in log_lines(caplog))

    def test_unknown_argument_names_fail_at_decoration(self) -> None:
        """A typo in resource_id or record_args is caught when the module loads."""
        with pytest.raises(TypeError, match="no argument named 'order'"):
            audit_log("x", resource_id="order")(refund.__wrapped__)  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match="'secret'"):
            audit_log("x", record_args=["order_id", "secret"])(refund.__wrapped__)  # type: ignore[attr-defined]

    def test_generators_are_refused(self) -> None:
        """A generator's work happens after the call, so it cannot be audited by decoration."""

        def rows() -> Iterator[int]:
            yield 1

        with pytest.raises(TypeError, match="generator"):
            audit_log("x")(rows)

    def test_wrapper_keeps_name_and_signature(self) -> None:
        """The decorated function looks like the original to introspection."""
        assert "refund" == refund.__name__
        assert ["order_id", "amount", "password"] == list(inspect.signature(refund).parameters)
        assert inspect.iscoroutinefunction(refund_async)


class TestAsync:
    def test_success_without_transaction(self, engine: Engine, trail: Trail) -> None:
        """An async function's event is written in its own transaction, off the event loop."""
        writers: list[int] = []
        sqlalchemy_event.listen(engine, "begin", lambda _: writers.append(threading.get_ident()))
        audit.configure(engine=engine)
        with acting_as("u-9"):
            assert "refunded" == asyncio.run(refund_async(11))
        assert [threading.get_ident()] != writers
        assert 1 == len(writers)
        [event] = trail.events()
        assert ("11", "success", "u-9") == (
            event["resource_id"],
            event["outcome"],
            event["actor_id"],
        )

    def test_failure_is_recorded_and_reraised(self, engine: Engine, trail: Trail) -> None:
        """The failure row is written and the coroutine's own exception comes out."""
        audit.configure(engine=engine)
        with pytest.raises(Declined, match="declined"):
            asyncio.run(refund_async(11, fail=True))
        assert [("failure", "tests.test_audit.Declined: declined")] == [
            (e["outcome"], e["error"]) for e in trail.events()
        ]

    def test_success_inside_a_transaction(self, engine: Engine, trail: Trail) -> None:
        """Inside a transaction, the async success goes into it too."""

        async def main() -> str:
            with engine.begin() as connection:
                await refund_async(12)
                return txid(connection)

        caller_txid = asyncio.run(main())
        assert caller_txid == str(trail.events()[0]["txid"])


class TestAuthHelpers:
    def test_login_failed_survives_the_rollback(self, engine: Engine, trail: Trail) -> None:
        """A failed login is recorded apart, with the client's address and request id."""
        with acting_as(**CALLER), engine.connect() as connection:
            transaction = connection.begin()
            event_id = login_failed("mallory", reason="unknown_user", attempt=3, password=SECRET)
            transaction.rollback()
        [event] = trail.events()
        assert event_id == event["id"]
        assert (
            audit.LOGIN_FAILED,
            "user",
            "mallory",
            "failure",
            "unknown_user",
            "203.0.113.9",
            "req-7f3a",
            None,
        ) == (
            event["action"],
            event["resource_type"],
            event["resource_id"],
            event["outcome"],
            event["error"],
            event["client_ip"],
            event["correlation_id"],
            event["actor_id"],
        )
        assert {"attempt": 3, "password": "[REDACTED]", "method": "password"} == event["details"]

    def test_login_succeeded_names_the_user_as_actor(self, engine: Engine, trail: Trail) -> None:
        """An anonymous request that logs in is recorded as the user's act."""
        audit.configure(engine=engine)
        with acting_as(**CALLER):
            login_succeeded(42, "player-one", method="sso")
        [event] = trail.events()
        assert (audit.LOGIN_SUCCEEDED, "42", "42", "player-one", "success") == (
            event["action"],
            event["resource_id"],
            event["actor_id"],
            event["actor_name"],
            event["outcome"],
        )
        assert {"user_name": "player-one", "method": "sso"} == event["details"]

    def test_permission_changed_names_the_admin_as_actor(
        self, engine: Engine, trail: Trail
    ) -> None:
        """The actor is the admin from the context; the user changed is the resource."""
        audit.configure(engine=engine)
        with acting_as("admin-1", "root-admin", **CALLER):
            permission_changed(42, "admin", granted=True, ticket="OPS-12")
        [event] = trail.events()
        assert (audit.PERMISSION_CHANGED, "42", "admin-1", "success") == (
            event["action"],
            event["resource_id"],
            event["actor_id"],
            event["outcome"],
        )
        assert {"permission": "admin", "granted": True, "ticket": "OPS-12"} == event["details"]

    def test_helpers_fail_closed(self, closed_port: int) -> None:
        """An auth event that cannot be written raises, like any other success."""
        audit.configure(dsn=f"host=127.0.0.1 port={closed_port} dbname=x user=x connect_timeout=2")
        with pytest.raises(AuditWriteError, match=re.escape(audit.LOGIN_FAILED)):
            login_failed("mallory")

    def test_helpers_without_a_database_return_none(self) -> None:
        """Unconfigured, the helpers log the event and return no id."""
        assert permission_changed("u-1", "admin", granted=False) is None
