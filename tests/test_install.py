"""Installing, upgrading, inspecting and removing whodunit."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from whodunit.db import install as installer
from whodunit.db.connect import connect
from whodunit.errors import ConfigError, DatabaseUnavailableError, PrivilegeError

Conn = psycopg.Connection[Any]


def catalog(conn: Conn) -> list[tuple[Any, ...]]:
    """Return whodunit's objects, columns, indexes and functions, for comparisons."""
    return conn.execute(
        """
        SELECT 'column', c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace = 'whodunit'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relname NOT LIKE 'capture\\_%%'
        UNION ALL
        SELECT 'index', indexrelid::regclass::text, pg_get_indexdef(indexrelid)
        FROM pg_index
        WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'whodunit'::regnamespace)
        UNION ALL
        SELECT 'function', p.oid::regprocedure::text, md5(p.prosrc)
        FROM pg_proc p
        WHERE p.pronamespace = 'whodunit'::regnamespace AND p.proname NOT LIKE 'capture\\_%%'
        UNION ALL
        SELECT 'event trigger', evtname, evtevent FROM pg_event_trigger
        ORDER BY 1, 2
        """
    ).fetchall()


@pytest.fixture
def empty_db(pg_server: Any) -> Any:
    """A database without whodunit, as (superuser DSN, connection)."""
    name = "whodunit_bare"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = pg_server.database_dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield dsn, conn
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


class TestInstall:
    def test_fresh_install_is_current(self, conn: Conn) -> None:
        """The template database holds the latest schema version."""
        assert installer.latest_version() == installer.installed_version(conn)

    def test_install_is_idempotent(self, conn: Conn) -> None:
        """Installing again changes nothing and keeps one set of triggers per table."""
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        before = catalog(conn)
        result = installer.install(conn, ["public"])
        triggers = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass AND NOT tgisinternal"
        ).fetchone()
        assert (installer.latest_version(), ["t"], 4) == (
            result.from_version,
            result.tables_enabled,
            triggers[0],
        )
        assert before == catalog(conn)

    def test_upgrade_from_previous_version_keeps_the_trail(self, empty_db: Any) -> None:
        """An install at the previous version, with a trail, upgrades in place to the latest."""
        _, conn = empty_db
        installer.install(conn, ["public"], target_version=installer.latest_version() - 1)
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        conn.execute("DELETE FROM t WHERE id = 1")
        trail = conn.execute(
            "SELECT * FROM whodunit.row_change ORDER BY statement_id, pk_hash"
        ).fetchall()
        result = installer.install(conn, ["public"])
        assert (installer.latest_version() - 1, installer.latest_version()) == (
            result.from_version, result.to_version
        )  # fmt: skip
        assert (
            trail
            == conn.execute(
                "SELECT * FROM whodunit.row_change ORDER BY statement_id, pk_hash"
            ).fetchall()
        )
        conn.execute("DELETE FROM t")
        assert (
            3
            == conn.execute("SELECT count(*) FROM whodunit.statement WHERE op <> 'DDL'").fetchone()[
                0
            ]
        )

    def test_upgraded_catalog_equals_fresh_install(self, empty_db: Any, conn: Conn) -> None:
        """Upgrading from the previous version yields exactly the objects of a fresh install."""
        _, bare = empty_db
        installer.install(bare, ["public"], target_version=installer.latest_version() - 1)
        installer.install(bare, ["public"])
        assert catalog(conn) == catalog(bare)

    def test_excluded_tables_are_not_audited(self, conn: Conn) -> None:
        """--exclude leaves a table out, now and when it is created again later."""
        conn.execute("CREATE TABLE sessions (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE users (id int PRIMARY KEY)")
        installer.install(conn, ["public"], ["sessions"])
        conn.execute("DROP TABLE sessions")
        conn.execute("CREATE TABLE sessions (id int PRIMARY KEY)")
        audited = [t.name for t in installer.status(conn).tables if t.audited]
        assert ["users"] == audited

    def test_unknown_excluded_table_is_a_clear_error(self, conn: Conn) -> None:
        """An --exclude naming no table fails before anything changes."""
        with pytest.raises(ConfigError, match="--exclude 'nope': no such table"):
            installer.install(conn, ["public"], ["nope"])

    def test_unknown_schema_is_a_clear_error(self, conn: Conn) -> None:
        """A --schema that does not exist fails with its name."""
        with pytest.raises(ConfigError, match="schema 'nowhere' does not exist"):
            installer.install(conn, ["nowhere"])

    def test_install_needs_a_superuser(self, app_dsn: str) -> None:
        """A non-superuser gets a PrivilegeError naming the role, not a SQL error."""
        with (
            connect(app_dsn, autocommit=True) as app,
            pytest.raises(PrivilegeError, match="needs a superuser"),
        ):
            installer.install(app, ["public"])

    def test_bad_dsn_is_a_clear_error(self) -> None:
        """An unreachable database raises DatabaseUnavailableError with the DSN masked."""
        with pytest.raises(DatabaseUnavailableError, match=r"cannot connect to .*:\*\*\*@"):
            connect("postgresql://someone:s3cret@127.0.0.1:1/nowhere", connect_timeout=2)

    def test_status_lists_audited_and_unaudited_tables(self, conn: Conn) -> None:
        """status shows each table, its key, its guard and the trail's size."""
        conn.execute("CREATE SCHEMA other")
        conn.execute("CREATE TABLE other.untracked (id int)")
        conn.execute("CREATE TABLE tracked (a int, b int, PRIMARY KEY (a, b))")
        conn.execute("SELECT whodunit.set_guard('tracked', 10, true, false)")
        report = installer.status(conn)
        rows = {t.name: (t.audited, t.key_columns, t.guard) for t in report.tables}
        assert {
            "other.untracked": (False, None, None),
            "tracked": (True, ["a", "b"], {"max_rows": 10, "no_truncate": True, "no_drop": False}),
        } == rows
        assert report.trail_bytes > 0
        assert {"whodunit_ddl_end", "whodunit_ddl_start", "whodunit_sql_drop"} == set(
            report.event_triggers
        )


class TestUninstall:
    def test_uninstall_keeps_the_trail(self, conn: Conn) -> None:
        """Without --drop-trail the triggers go and the history stays."""
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert ["t"] == installer.uninstall(conn)
        conn.execute("INSERT INTO t VALUES (2)")
        assert (
            1
            == conn.execute(
                "SELECT count(*) FROM whodunit.statement WHERE op = 'INSERT'"
            ).fetchone()[0]
        )
        assert [] == conn.execute("SELECT evtname FROM pg_event_trigger").fetchall()

    def test_uninstall_with_drop_trail_removes_everything(self, conn: Conn) -> None:
        """--drop-trail removes the schema too."""
        installer.uninstall(conn, drop_trail=True)
        assert installer.installed_version(conn) is None


class TestRepair:
    def test_install_after_uninstall_restores_ddl_capture(self, conn: Conn) -> None:
        """Event triggers come back with the next install, and status is healthy again."""
        installer.uninstall(conn)
        assert not installer.status(conn).healthy
        installer.install(conn, ["public"])
        conn.execute("CREATE TABLE after (id int PRIMARY KEY)")
        assert installer.status(conn).healthy
        assert ["after"] == [t.name for t in installer.status(conn).tables if t.audited]

    def test_install_keeps_configured_limits(self, conn: Conn) -> None:
        """Re-running install does not reset what 'whodunit configure' set."""
        installer.configure(conn, "snapshot_max_rows", 7)
        installer.install(conn, ["public"])
        installer.apply_settings(conn, {}, {})
        found = conn.execute("SELECT value FROM whodunit.setting WHERE key = 'snapshot_max_rows'")
        assert ("7",) == found.fetchone()

    def test_excluding_an_audited_table_stops_its_audit(self, conn: Conn) -> None:
        """install --exclude T switches auditing of an already audited T off."""
        conn.execute("CREATE TABLE noisy (id int PRIMARY KEY)")
        installer.install(conn, ["public"], ["noisy"])
        assert [] == [t.name for t in installer.status(conn).tables if t.audited]

    def test_guard_on_unaudited_table_is_refused(self, conn: Conn) -> None:
        """A row limit on a table whodunit does not audit would never apply: it is an error."""
        conn.execute("CREATE SCHEMA elsewhere")
        conn.execute("CREATE TABLE elsewhere.t (id int)")
        with pytest.raises(ConfigError, match="is not audited"):
            installer.set_guard(conn, "elsewhere.t", max_rows=5)

    def test_non_superuser_gets_status_but_not_guard(self, app_dsn: str) -> None:
        """Any role may read the status; changing guards needs a superuser."""
        with connect(app_dsn, autocommit=True) as app:
            assert installer.status(app).current
            with pytest.raises(PrivilegeError, match="whodunit guard needs a superuser"):
                installer.set_guard(app, "whodunit.meta", no_drop=True)
