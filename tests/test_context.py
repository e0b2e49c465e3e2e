"""The app context bridge: contextvars in Python, ``whodunit.context`` in every transaction."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg2
import pytest
from psycopg import pq, sql
from psycopg.rows import dict_row
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from tests.fixtures.postgres import sqlalchemy_url
from whodunit.context import (
    MAX_VALUE_CHARS,
    acting_as,
    active_connection,
    context_json,
    current_context,
    instrument_sqlalchemy,
    pop_context,
    push_context,
    set_db_context,
    uninstrument_sqlalchemy,
)

Conn = psycopg.Connection[Any]
DRIVERS = ["psycopg", "psycopg2"]
READ_CONTEXT = text("SELECT current_setting('whodunit.context', true)")


def engine_for(dsn: str, driver: str, **options: Any) -> Engine:
    """Return an instrumented SQLAlchemy engine on *dsn* through *driver*."""
    engine = create_engine(sqlalchemy_url(dsn, driver), **options)
    instrument_sqlalchemy(engine)
    return engine


def last_statements(conn: Conn, table: str) -> list[dict[str, Any]]:
    """Return the audited DML statements on *table*, oldest first."""
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT op, rows, actor_id, actor_name, correlation_id, request_path, context "
        "FROM whodunit.statement WHERE table_name = %s AND op <> 'DDL' ORDER BY id",
        (table,),
    ).fetchall()


@pytest.fixture
def games(conn: Conn) -> str:
    """An audited table the tests write to, its first rows there before auditing began."""
    conn.execute(
        "CREATE TABLE game (id, title) AS VALUES (1, 'chess'), (2, 'go'), (3, '100% orange')"
    )
    conn.execute("ALTER TABLE game ADD PRIMARY KEY (id)")
    return "game"


@pytest.fixture(params=DRIVERS)
def engine(request: pytest.FixtureRequest, dsn: str, games: str) -> Iterator[Engine]:
    """An instrumented engine with a one-connection pool, through each driver."""
    eng = engine_for(dsn, request.param, pool_size=1, max_overflow=0)
    yield eng
    eng.dispose()


class TestScopes:
    """The context as Python code sees it, without a database."""

    def test_empty_outside_any_scope(self) -> None:
        """Outside a request or acting_as block there is nothing to send."""
        assert {} == current_context()
        assert None is context_json()

    def test_acting_as_nests_and_restores(self) -> None:
        """An inner acting_as overrides the actor and keeps the outer fields."""
        with acting_as(actor_id=7, actor_name="cron", correlation_id="job-1"):
            with acting_as(actor_id="admin"):
                assert {"actor_id": "admin", "correlation_id": "job-1"} == current_context()
            assert {"actor_id": 7, "actor_name": "cron", "correlation_id": "job-1"} == (
                current_context()
            )
        assert {} == current_context()

    def test_long_values_are_capped(self) -> None:
        """A client-chosen value cannot make every transaction carry megabytes."""
        token = push_context({"user_agent": "x" * 100_000})
        try:
            assert MAX_VALUE_CHARS == len(str(current_context()["user_agent"]))
        finally:
            pop_context(token)

    def test_user_loader_is_asked_each_time(self) -> None:
        """A login in the middle of a request shows in the transactions after it."""
        user: list[tuple[object, object] | None] = [None]
        token = push_context({"correlation_id": "r1"}, user=lambda: user[0])
        try:
            assert '{"correlation_id":"r1"}' == context_json()
            user[0] = ("42", "player-one")
            assert '{"correlation_id":"r1","actor_id":"42","actor_name":"player-one"}' == (
                context_json()
            )
        finally:
            pop_context(token)

    def test_acting_as_overrides_the_user_loader(self) -> None:
        """A job run from a request acts as the job, not as the request's user."""
        token = push_context({"correlation_id": "r1"}, user=lambda: ("42", "player-one"))
        try:
            with acting_as(actor_id="system"):
                assert {"correlation_id": "r1", "actor_id": "system"} == current_context()
        finally:
            pop_context(token)

    def test_failing_user_loader_means_anonymous(self, caplog: pytest.LogCaptureFixture) -> None:
        """A broken loader never breaks the app's writes; it is reported once."""

        def broken() -> tuple[object, object]:
            raise RuntimeError("session store down")

        token = push_context({"correlation_id": "r1"}, user=broken)
        try:
            with caplog.at_level(logging.WARNING, logger="whodunit.internal"):
                assert '{"correlation_id":"r1"}' == context_json()
                assert '{"correlation_id":"r1"}' == context_json()
        finally:
            pop_context(token)
        assert 1 == sum("session store down" in r.getMessage() for r in caplog.records)

    def test_threads_do_not_share_context(self) -> None:
        """Two requests served by two threads at once each see their own actor."""
        barrier = threading.Barrier(2)
        seen: dict[str, object] = {}

        def serve(actor: str) -> None:
            with acting_as(actor_id=actor):
                barrier.wait()
                seen[actor] = current_context()["actor_id"]

        threads = [threading.Thread(target=serve, args=(a,)) for a in ("ann", "bob")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {"ann": "ann", "bob": "bob"} == seen


class TestSQLAlchemy:
    """Every transaction of an instrumented engine carries the context."""

    def test_changes_carry_the_context(self, engine: Engine, conn: Conn, games: str) -> None:
        """The audit trail names the actor and the request of the transaction."""
        actor = acting_as(actor_id="42", actor_name="player-one", path="/games/1", tenant="eu")
        with actor, engine.begin() as db:
            db.execute(text("DELETE FROM game WHERE id = :id"), {"id": 1})
        [deleted] = last_statements(conn, games)
        assert ("DELETE", 1, "42", "player-one", "/games/1", {"tenant": "eu"}) == (
            deleted["op"],
            deleted["rows"],
            deleted["actor_id"],
            deleted["actor_name"],
            deleted["request_path"],
            deleted["context"],
        )

    def test_percent_signs_survive(self, engine: Engine, conn: Conn, games: str) -> None:
        """Percent signs in the context, the SQL and the parameters keep their meaning."""
        with acting_as(actor_id="50%", path="/search?q=100%25"), engine.begin() as db:
            hits = db.execute(text("SELECT count(*) FROM game WHERE title LIKE '100%'")).scalar()
            db.execute(text("UPDATE game SET title = :t WHERE id = 2"), {"t": "go 5%"})
            db.exec_driver_sql("DELETE FROM game WHERE title LIKE 'chess%%'")
        assert 1 == hits
        assert [("UPDATE", "50%", "/search?q=100%25"), ("DELETE", "50%", "/search?q=100%25")] == [
            (s["op"], s["actor_id"], s["request_path"]) for s in last_statements(conn, games)
        ]
        assert [(2, "go 5%"), (3, "100% orange")] == conn.execute(
            "SELECT * FROM game ORDER BY id"
        ).fetchall()

    def test_pooled_connection_does_not_leak(self, engine: Engine, conn: Conn, games: str) -> None:
        """The next user of the same pooled connection starts without the last one's context."""
        with acting_as(actor_id="42"), engine.begin() as db:
            pid = db.execute(text("SELECT pg_backend_pid()")).scalar()
            db.execute(text("DELETE FROM game WHERE id = 1"))
        with engine.begin() as db:
            assert pid == db.execute(text("SELECT pg_backend_pid()")).scalar()
            assert "" == db.execute(READ_CONTEXT).scalar()
            db.execute(text("DELETE FROM game WHERE id = 2"))
        assert ["42", None] == [s["actor_id"] for s in last_statements(conn, games)]

    def test_rolled_back_transaction_then_new_context(self, engine: Engine) -> None:
        """After a rollback the next transaction carries its own, new context."""
        with acting_as(actor_id="a"), engine.connect() as db:
            db.execute(text("SELECT 1"))
            db.rollback()
        with acting_as(actor_id="b"), engine.begin() as db:
            assert '{"actor_id":"b"}' == db.execute(READ_CONTEXT).scalar()

    def test_orm_session(self, engine: Engine, conn: Conn, games: str) -> None:
        """A Session's transaction is the engine's: the ORM needs nothing more."""
        with acting_as(actor_id="orm"), Session(engine) as session:
            session.execute(text("DELETE FROM game WHERE id = 3"))
            session.commit()
        assert ["orm"] == [s["actor_id"] for s in last_statements(conn, games)]

    def test_executemany(self, engine: Engine, conn: Conn, games: str) -> None:
        """Many parameter sets in one call still carry the context."""
        rows = [{"id": n, "title": f"game {n}"} for n in range(10, 15)]
        with acting_as(actor_id="bulk"), engine.begin() as db:
            db.execute(text("INSERT INTO game VALUES (:id, :title)"), rows)
        assert {"bulk"} == {s["actor_id"] for s in last_statements(conn, games)}

    def test_server_side_cursor(self, engine: Engine) -> None:
        """A streamed result (a named cursor with psycopg2) still carries the context."""
        with acting_as(actor_id="stream"), engine.connect() as db:
            result = db.execution_options(stream_results=True).execute(READ_CONTEXT)
            assert '{"actor_id":"stream"}' == result.scalar()

    def test_isolation_level_is_kept(self, dsn: str, games: str) -> None:
        """Opening the transaction ourselves keeps the engine's isolation level."""
        for driver in DRIVERS:
            eng = engine_for(dsn, driver, isolation_level="SERIALIZABLE")
            with acting_as(actor_id="x"), eng.begin() as db:
                level = db.execute(text("SHOW transaction_isolation")).scalar()
                assert ("serializable", '{"actor_id":"x"}') == (
                    level,
                    db.execute(READ_CONTEXT).scalar(),
                )
            eng.dispose()

    def test_without_context_nothing_is_sent(self, engine: Engine) -> None:
        """Code outside any request or job leaves the setting alone."""
        with engine.begin() as db:
            assert db.execute(READ_CONTEXT).scalar() in (None, "")

    def test_active_connection(self, engine: Engine) -> None:
        """The connection with an open transaction is known; after commit it is not."""
        with engine.begin() as db:
            db.execute(text("SELECT 1"))
            assert db is active_connection()
        assert None is active_connection()

    def test_app_role_may_set_the_context(self, app_dsn: str, conn: Conn, games: str) -> None:
        """A non-superuser application role writes the context like anyone else."""
        role = psycopg.conninfo.conninfo_to_dict(app_dsn)["user"]
        conn.execute(sql.SQL("GRANT SELECT, DELETE ON game TO {}").format(sql.Identifier(role)))
        eng = engine_for(app_dsn, "psycopg")
        with acting_as(actor_id="app"), eng.begin() as db:
            db.execute(text("DELETE FROM game WHERE id = 1"))
        eng.dispose()
        assert ["app"] == [s["actor_id"] for s in last_statements(conn, games)]

    def test_uninstrument(self, dsn: str, games: str) -> None:
        """A removed bridge sends nothing; instrumenting twice adds nothing."""
        eng = engine_for(dsn, "psycopg")
        instrument_sqlalchemy(eng)
        uninstrument_sqlalchemy(eng)
        with acting_as(actor_id="x"), eng.begin() as db:
            assert db.execute(READ_CONTEXT).scalar() in (None, "")
        eng.dispose()


class TestRawConnections:
    """`set_db_context` on connections the app manages itself."""

    def test_psycopg3_idle_connection_opens_the_transaction(
        self, dsn: str, conn: Conn, games: str
    ) -> None:
        """On an idle connection the context comes with the BEGIN."""
        with psycopg.connect(dsn) as raw:
            with acting_as(actor_id="raw3"):
                assert set_db_context(raw)
            assert pq.TransactionStatus.INTRANS == raw.info.transaction_status
            raw.execute("DELETE FROM game WHERE id = 1")
            raw.commit()
        assert ["raw3"] == [s["actor_id"] for s in last_statements(conn, games)]

    def test_psycopg3_inside_a_transaction(self, dsn: str) -> None:
        """Inside an open transaction block it sets the context for the rest of it."""
        with psycopg.connect(dsn, autocommit=True) as raw, raw.transaction():
            raw.execute("SELECT 1")
            with acting_as(actor_id="tx", path="/it's 100%\\"):
                set_db_context(raw)
            row = raw.execute("SELECT current_setting('whodunit.context')").fetchone()
            assert ('{"actor_id":"tx","path":"/it\'s 100%\\\\"}',) == row

    def test_psycopg3_autocommit_is_refused(self, dsn: str) -> None:
        """Autocommit outside a transaction would lose the context at once: say so."""
        with (
            psycopg.connect(dsn, autocommit=True) as raw,
            acting_as(actor_id="x"),
            pytest.raises(ValueError, match="autocommit"),
        ):
            set_db_context(raw)

    def test_psycopg2(self, dsn: str, conn: Conn, games: str) -> None:
        """psycopg2 connections get the context in their current transaction."""
        raw = psycopg2.connect(dsn)
        try:
            with acting_as(actor_id="raw2", correlation_id="c-2"):
                assert set_db_context(raw)
            with raw.cursor() as cur:
                cur.execute("DELETE FROM game WHERE id = %s", (2,))
            raw.commit()
            raw.autocommit = True
            with acting_as(actor_id="x"), pytest.raises(ValueError, match="autocommit"):
                set_db_context(raw)
        finally:
            raw.close()
        assert [("raw2", "c-2")] == [
            (s["actor_id"], s["correlation_id"]) for s in last_statements(conn, games)
        ]

    def test_no_context_writes_nothing(self, dsn: str) -> None:
        """Without a context the connection is left untouched."""
        with psycopg.connect(dsn) as raw:
            assert not set_db_context(raw)
            assert pq.TransactionStatus.IDLE == raw.info.transaction_status

    def test_other_objects_are_refused(self) -> None:
        """Passing something else (an Engine, a Session) names what was passed."""
        with acting_as(actor_id="x"), pytest.raises(TypeError, match=r"builtins\.object"):
            set_db_context(object())
