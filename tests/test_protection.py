"""The trail is append-only: the application cannot change or forge it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[Any]

TAMPERING = [
    "UPDATE whodunit.statement SET actor_id = 'nobody'",
    "DELETE FROM whodunit.row_change",
    "TRUNCATE whodunit.statement",
    "INSERT INTO whodunit.statement "
    "(id, at, txid, op, db_session_user, db_current_user, backend_pid) "
    "VALUES (-1, now(), '1', 'DELETE', 'x', 'x', 1)",
    "SELECT whodunit.disable_audit('t')",
    "SELECT whodunit.configure('query_max_bytes', '0')",
    "ALTER TABLE whodunit.statement DISABLE TRIGGER protect_trail",
]


@pytest.fixture
def app(conn: Conn, app_dsn: str) -> Any:
    """The application's connection; it owns the audited table t and has one audited row."""
    with psycopg.connect(app_dsn, autocommit=True) as app_conn:
        app_conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        app_conn.execute("INSERT INTO t VALUES (1, 'a')")
        yield app_conn


class TestAppRole:
    def test_app_changes_are_audited_under_its_role(self, app: Conn, conn: Conn) -> None:
        """A table the app creates is audited, and its role is recorded."""
        role = app.info.user
        found = conn.execute(
            "SELECT db_session_user, db_current_user FROM whodunit.statement WHERE op = 'INSERT'"
        ).fetchone()
        assert (role, role) == found

    @pytest.mark.parametrize("statement", TAMPERING)
    def test_app_cannot_tamper(self, app: Conn, statement: str) -> None:
        """Every way to change the trail or the capture is refused to the app role."""
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(statement)

    def test_app_event_identity_cannot_be_forged(self, app: Conn, conn: Conn) -> None:
        """The app records events through the function; the DB identity is filled in by it."""
        app.execute("SELECT whodunit.record_app_event('login_failed', 'user', '42', 'failure')")
        found = conn.execute(
            "SELECT action, outcome, db_session_user FROM whodunit.app_event"
        ).fetchone()
        assert ("login_failed", "failure", app.info.user) == found

    def test_dropping_the_capture_triggers_is_recorded(self, app: Conn, conn: Conn) -> None:
        """The table's owner may drop the triggers, but the DROP TRIGGER itself is in the trail."""
        app.execute("DROP TRIGGER whodunit_capture_delete ON t")
        found = conn.execute(
            "SELECT command_tag, object_identity, db_session_user FROM whodunit.statement "
            "WHERE command_tag = 'DROP TRIGGER'"
        ).fetchone()
        assert ("DROP TRIGGER", "whodunit_capture_delete on public.t", app.info.user) == found


class TestOwner:
    def test_owner_cannot_change_rows_without_maintenance(self, app: Conn, conn: Conn) -> None:
        """Even the owner role is refused UPDATE/DELETE unless maintenance is on."""
        conn.execute("SET ROLE whodunit")
        with pytest.raises(psycopg.DatabaseError, match="append-only") as info:
            conn.execute("DELETE FROM whodunit.row_change")
        assert "WD002" == info.value.sqlstate
        with conn.transaction():
            conn.execute("SELECT set_config('whodunit.maintenance', 'on', true)")
            conn.execute("DELETE FROM whodunit.row_change")
        conn.execute("RESET ROLE")

    def test_superuser_cannot_drop_the_schema_by_accident(self, conn: Conn) -> None:
        """DROP SCHEMA whodunit is refused outside 'whodunit uninstall'."""
        with pytest.raises(psycopg.DatabaseError, match="whodunit uninstall"):
            conn.execute("DROP SCHEMA whodunit CASCADE")


class TestForgery:
    def test_forged_pending_drop_cannot_remove_rows(self, app: Conn, conn: Conn) -> None:
        """Setting whodunit.pending_drop by hand and running some other DROP removes nothing."""
        before = conn.execute("SELECT count(*) FROM whodunit.row_change").fetchone()
        statement_id = conn.execute("SELECT min(id) FROM whodunit.statement").fetchone()[0]
        with app.transaction():
            app.execute(
                "SELECT set_config('whodunit.pending_drop', %s, true)",
                (f'{{"1": [{statement_id}, 0, 0]}}',),
            )
            app.execute("CREATE VIEW v AS SELECT 1 AS one")
            app.execute("DROP VIEW v")
        assert before == conn.execute("SELECT count(*) FROM whodunit.row_change").fetchone()

    def test_capture_functions_cannot_be_borrowed(self, app: Conn, conn: Conn) -> None:
        """The app cannot attach another table's capture function to forge its trail."""
        conn.execute("CREATE TABLE secret (id int PRIMARY KEY)")
        oid = conn.execute("SELECT 'secret'::regclass::oid").fetchone()[0]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(
                f"CREATE TRIGGER fake AFTER DELETE ON t REFERENCING OLD TABLE AS old_rows "
                f"FOR EACH STATEMENT EXECUTE FUNCTION whodunit.capture_{oid}()"
            )

    def test_temp_table_cannot_shadow_the_catalog(self, app: Conn, conn: Conn) -> None:
        """A temporary table named pg_class does not blind the privileged functions."""
        app.execute("CREATE TEMP TABLE pg_class (oid oid, relname name)")
        app.execute("CREATE TABLE innocent (id int PRIMARY KEY)")
        audited = conn.execute(
            "SELECT count(*) FROM whodunit.audited_table WHERE table_name = 'innocent'"
        ).fetchone()
        assert (1,) == audited

    def test_owner_disabling_protection_is_recorded(self, conn: Conn) -> None:
        """Even a superuser's ALTER TABLE on the trail leaves a DDL row."""
        conn.execute("ALTER TABLE whodunit.statement DISABLE TRIGGER protect_trail")
        conn.execute("ALTER TABLE whodunit.statement ENABLE ALWAYS TRIGGER protect_trail")
        found = conn.execute(
            "SELECT count(*) FROM whodunit.statement WHERE object_identity = 'whodunit.statement'"
        ).fetchone()
        assert (2,) == found
