"""The detectors: each fires on its scenario, stays silent just below, honours allow-lists."""

from __future__ import annotations

import ipaddress
import itertools
import os
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from whodunit.watch.alert import Alert, Severity
from whodunit.watch.daemon import Watcher
from whodunit.watch.detectors import (
    DETECTORS,
    BruteForce,
    BruteForceOptions,
    Detector,
    DetectorOptions,
    Drop,
    DropOptions,
    FailureBurst,
    FailureBurstOptions,
    HumanAccess,
    HumanAccessOptions,
    MassChangeOptions,
    MassDelete,
    MassUpdate,
    MassUpdateOptions,
    PrivilegeChange,
    PrivilegeChangeOptions,
    Truncate,
    TruncateOptions,
    WorkingHours,
    build,
)
from whodunit.watch.reader import AppEvent, Event, StatementEvent
from whodunit.watch.settings import Settings, WatchSettings

Conn = psycopg.Connection[Any]
_AT = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)  # a Monday
_roles = itertools.count()
_runs = itertools.count()


def statement(**fields: Any) -> StatementEvent:
    """A statement event with plain defaults (a one-row DELETE on public.t by postgres)."""
    values: dict[str, Any] = {
        "id": 1, "at": _AT, "txid": "100", "op": "DELETE", "schema_name": "public",
        "table_name": "t", "rows": 1, "rows_captured": None, "command_tag": None,
        "object_type": None, "object_identity": None, "query": "DELETE FROM t",
        "db_session_user": "postgres", "db_current_user": "postgres", "client_addr": None,
        "application_name": "app", "backend_pid": 42, "actor_id": None, "actor_name": None,
        "correlation_id": None, "client_ip": None,
    }  # fmt: skip
    values.update(fields)
    return StatementEvent(**values)


def app_event(**fields: Any) -> AppEvent:
    """An app event with plain defaults (a failed login for alice from 198.51.100.7)."""
    values: dict[str, Any] = {
        "id": 1, "at": _AT, "txid": "100", "action": "auth.login_failed",
        "resource_type": "user", "resource_id": "alice", "outcome": "failure",
        "error": "invalid_credentials", "details": None, "db_session_user": "app",
        "db_current_user": "app", "client_addr": None, "application_name": "app",
        "actor_id": None, "actor_name": None, "correlation_id": "req-1",
        "client_ip": "198.51.100.7",
    }  # fmt: skip
    values.update(fields)
    return AppEvent(**values)


def feed(detector: Detector[Any], events: Iterable[Event]) -> list[Alert]:
    return [alert for event in events for alert in detector.observe(event)]


def watch(dsn: str, rule: str, options: DetectorOptions) -> list[Alert]:
    """Run the watcher once over the whole trail with only *rule* enabled."""
    detectors = {
        name: kind.options_type(enabled=False) for name, kind in DETECTORS.items() if name != rule
    }
    settings = Settings(
        dsn=dsn,
        # A name of its own: each run reads the whole trail from its own checkpoint.
        watch=WatchSettings(name=f"run{next(_runs)}", start="beginning", metrics_port=0),
        detectors={**detectors, rule: options},
    )
    sink: list[Alert] = []

    class Sink:
        def submit(self, alerts: Any) -> None:
            sink.extend(alerts)

    with Watcher(settings, Sink()) as watcher:
        watcher.run(once=True)
    return sink


@pytest.fixture
def t(conn: Conn) -> Conn:
    """An audited table t with 100 rows."""
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    conn.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g")
    return conn


def as_actor(conn: Conn, actor: str, statement: str) -> None:
    """Run *statement* in a transaction carrying the app context of *actor*."""
    with conn.transaction():
        conn.execute(
            "SELECT set_config('whodunit.context', %s, true)",
            (f'{{"actor_id": "{actor}", "actor_name": "{actor}"}}',),
        )
        conn.execute(statement)


class TestMassDelete:
    def test_statement_fires_at_the_threshold(self, dsn: str, t: Conn) -> None:
        """A DELETE of statement_rows rows fires; one row fewer does not."""
        t.execute("DELETE FROM t WHERE id <= 9")
        t.execute("DELETE FROM t WHERE id BETWEEN 10 AND 19")
        alerts = watch(dsn, "mass_delete", MassChangeOptions(statement_rows=10))
        assert [("10", "statement")] == [(a.evidence["rows"], a.evidence["scope"]) for a in alerts]
        alert = alerts[0]
        assert (Severity.CRITICAL, "public.t", "postgres") == (
            alert.severity,
            alert.evidence["table"],
            alert.evidence["actor"],
        )
        assert "DELETE FROM t WHERE id BETWEEN 10 AND 19" == alert.evidence["sql"]
        assert "--table public.t" in (alert.investigate or "")

    def test_transaction_adds_up_its_statements(self, dsn: str, t: Conn) -> None:
        """Two DELETEs of 6 rows in one transaction cross 12; 6 + 5 elsewhere do not."""
        with t.transaction():
            t.execute("DELETE FROM t WHERE id <= 6")
            t.execute("DELETE FROM t WHERE id BETWEEN 7 AND 12")
        with t.transaction():
            t.execute("DELETE FROM t WHERE id BETWEEN 13 AND 18")
            t.execute("DELETE FROM t WHERE id BETWEEN 19 AND 23")
        options = MassChangeOptions(statement_rows=0, transaction_rows=12)
        alerts = watch(dsn, "mass_delete", options)
        assert [("transaction", "12")] == [
            (a.evidence["scope"], a.evidence["rows"]) for a in alerts
        ]
        assert 2 == len(alerts[0].statement_ids)

    def test_actor_window_adds_up_one_users_deletes(self, dsn: str, t: Conn) -> None:
        """bob's 3 DELETEs of 4 rows cross 12 within the window; carol's 11 rows do not."""
        for low in (1, 5, 9):
            as_actor(t, "bob", f"DELETE FROM t WHERE id BETWEEN {low} AND {low + 3}")
        for low in (20, 24):
            as_actor(t, "carol", f"DELETE FROM t WHERE id BETWEEN {low} AND {low + 3}")
        as_actor(t, "carol", "DELETE FROM t WHERE id BETWEEN 28 AND 30")
        options = MassChangeOptions(statement_rows=0, transaction_rows=0, actor_rows=12)
        alerts = watch(dsn, "mass_delete", options)
        assert [("actor", "bob", 3)] == [
            (a.evidence["scope"], a.evidence["actor"], len(a.statement_ids)) for a in alerts
        ]
        assert "--table" not in (alerts[0].investigate or "")

    def test_table_window_adds_up_everyones_deletes(self, dsn: str, t: Conn) -> None:
        """Two actors' deletes on one table cross table_rows together."""
        as_actor(t, "bob", "DELETE FROM t WHERE id <= 10")
        as_actor(t, "carol", "DELETE FROM t WHERE id BETWEEN 11 AND 20")
        options = MassChangeOptions(statement_rows=0, transaction_rows=0, table_rows=20)
        alerts = watch(dsn, "mass_delete", options)
        assert [("table", "20")] == [(a.evidence["scope"], a.evidence["rows"]) for a in alerts]

    def test_ignored_tables_and_roles_are_not_counted(self, dsn: str, t: Conn) -> None:
        """A table matched by ignore_tables and a role in ignore_roles raise nothing."""
        t.execute("CREATE TABLE tmp_sessions (id int PRIMARY KEY)")
        t.execute("INSERT INTO tmp_sessions SELECT generate_series(1, 50)")
        t.execute("DELETE FROM tmp_sessions")
        retention = new_role(t)
        t.execute(f"GRANT DELETE, SELECT ON t TO {retention}")
        t.execute(f"SET ROLE {retention}")
        t.execute("DELETE FROM t")
        t.execute("RESET ROLE")
        options = MassChangeOptions(
            statement_rows=10, ignore_tables=("public.tmp_*",), ignore_roles=(retention,)
        )
        alerts = watch(dsn, "mass_delete", options)
        t.execute(f"DROP OWNED BY {retention}")
        t.execute(f"DROP ROLE {retention}")
        assert [] == alerts

    def test_one_alert_per_statement_names_the_wider_scopes(self) -> None:
        """A statement crossing every scope raises one alert, for the narrowest."""
        detector = MassDelete(MassChangeOptions(statement_rows=5, transaction_rows=5))
        alerts = feed(detector, [statement(rows=5)])
        assert [("statement", "transaction")] == [
            (a.evidence["scope"], a.evidence["also_crossed"]) for a in alerts
        ]


class TestMassUpdate:
    def test_update_fires_at_its_own_threshold(self, dsn: str, t: Conn) -> None:
        """An UPDATE of statement_rows rows fires mass_update; a DELETE does not."""
        t.execute("UPDATE t SET v = 'y' WHERE id <= 30")
        t.execute("UPDATE t SET v = 'z' WHERE id <= 29")
        t.execute("DELETE FROM t")
        alerts = watch(dsn, "mass_update", MassUpdateOptions(statement_rows=30))
        assert [("mass_update", "30", Severity.WARNING)] == [
            (a.rule, a.evidence["rows"], a.severity) for a in alerts
        ]


class TestTruncate:
    def test_truncate_fires_with_rows_and_snapshot(self, dsn: str, t: Conn) -> None:
        """TRUNCATE of an audited table fires, saying how many rows were saved."""
        t.execute("TRUNCATE t")
        alerts = watch(dsn, "truncate", TruncateOptions())
        assert ["DB role postgres truncated public.t (100 rows)"] == [a.title for a in alerts]
        assert "100 of them saved in the trail" in alerts[0].summary

    def test_below_min_rows_and_ignored_tables_are_silent(self, dsn: str, t: Conn) -> None:
        """A TRUNCATE below min_rows, or of an ignored table, raises nothing."""
        t.execute("CREATE TABLE staging (id int PRIMARY KEY)")
        t.execute("INSERT INTO staging SELECT generate_series(1, 500)")
        t.execute("TRUNCATE staging")
        t.execute("TRUNCATE t")
        options = TruncateOptions(min_rows=101, ignore_tables=("public.staging",))
        assert [] == watch(dsn, "truncate", options)


class TestDrop:
    def test_drop_table_and_drop_schema_fire(self, dsn: str, t: Conn) -> None:
        """DROP TABLE fires once; DROP SCHEMA CASCADE fires for the schema and its table."""
        t.execute("CREATE SCHEMA billing")
        t.execute("CREATE TABLE billing.invoice (id int PRIMARY KEY)")
        t.execute("DROP TABLE t")
        t.execute("DROP SCHEMA billing CASCADE")
        alerts = watch(dsn, "drop", DropOptions())
        assert {
            "DB role postgres dropped table public.t (100 rows)",
            "DB role postgres dropped table billing.invoice (0 rows)",
            "DB role postgres dropped schema billing",
        } == {a.title for a in alerts}
        assert 3 == len(alerts)

    def test_other_ddl_and_ignored_roles_are_silent(self, dsn: str, t: Conn) -> None:
        """ALTER TABLE raises nothing; a migration role's DROP is ignored when listed."""
        t.execute("ALTER TABLE t ADD COLUMN w int")
        migrator = new_role(t)
        t.execute(f"ALTER TABLE t OWNER TO {migrator}")
        t.execute(f"SET ROLE {migrator}")
        t.execute("DROP TABLE t")
        t.execute("RESET ROLE")
        alerts = watch(dsn, "drop", DropOptions(ignore_roles=(migrator,)))
        t.execute(f"DROP ROLE {migrator}")
        assert [] == alerts


class TestPrivilegeChange:
    def test_grant_and_default_privileges_fire_once_per_transaction(
        self, dsn: str, t: Conn
    ) -> None:
        """GRANT fires; a REVOKE of default privileges (two trail rows) fires once."""
        reader = new_role(t)
        t.execute(f"GRANT SELECT ON t TO {reader}")
        t.execute(f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {reader}")
        t.execute(f"ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM {reader}")
        t.execute(f"REVOKE SELECT ON t FROM {reader}")
        t.execute(f"DROP ROLE {reader}")
        alerts = watch(dsn, "privilege_change", PrivilegeChangeOptions())
        assert ["GRANT", "ALTER DEFAULT PRIVILEGES", "ALTER DEFAULT PRIVILEGES", "REVOKE"] == [
            a.evidence["command"] for a in alerts
        ]
        assert f"GRANT SELECT ON t TO {reader}" == alerts[0].evidence["sql"]

    def test_role_commands_never_reach_the_trail(self, dsn: str, conn: Conn) -> None:
        """CREATE / ALTER / DROP ROLE and role grants fire no event trigger: nothing to see."""
        intruder = new_role(conn)
        conn.execute(f"ALTER ROLE {intruder} SUPERUSER")
        conn.execute(f"GRANT pg_read_all_data TO {intruder}")
        conn.execute(f"DROP ROLE {intruder}")
        assert [] == watch(dsn, "privilege_change", PrivilegeChangeOptions())

    def test_app_permission_changes_fire(self, dsn: str, conn: Conn) -> None:
        """auth.permission_changed events from the app fire, naming the permission."""
        conn.execute(
            "SELECT whodunit.record_app_event('auth.permission_changed', 'user', 'bob', "
            'p_details => \'{"permission": "admin", "granted": true}\', '
            'p_context => \'{"actor_id": "7", "actor_name": "carol"}\')'
        )
        alerts = watch(dsn, "privilege_change", PrivilegeChangeOptions())
        assert ["carol granted admin for user bob"] == [a.title for a in alerts]


class TestHumanAccess:
    def test_console_fires_once_per_transaction(self, dsn: str, t: Conn) -> None:
        """Two changes from psql in one transaction raise one alert; the app's raise none."""
        t.execute("SET application_name = 'psql'")
        with t.transaction():
            t.execute("UPDATE t SET v = 'h' WHERE id = 1")
            t.execute("DELETE FROM t WHERE id = 2")
        t.execute("SET application_name = 'shop-api'")
        t.execute("DELETE FROM t WHERE id = 3")
        alerts = watch(dsn, "human_access", HumanAccessOptions())
        assert ["console psql"] == [a.evidence["reasons"] for a in alerts]
        assert "timeline --db-user postgres" in (alerts[0].investigate or "")

    def test_local_socket_outside_the_allow_list(self, dsn: str, t: Conn) -> None:
        """With an allow-list, a socket connection counts as inside unless allow_local is off."""
        t.execute("SET application_name = 'shop-api'")
        t.execute("DELETE FROM t WHERE id = 1")
        networks = (ipaddress.ip_network("10.0.0.0/8"),)
        inside = watch(dsn, "human_access", HumanAccessOptions(allow_cidrs=networks))
        outside = watch(
            dsn, "human_access", HumanAccessOptions(allow_cidrs=networks, allow_local=False)
        )
        assert [] == inside
        assert {"address local socket outside the allow-list"} == {
            a.evidence["reasons"] for a in outside
        }

    def test_addresses_are_matched_against_the_allow_list(self) -> None:
        """An address inside a CIDR passes; one outside fires; the app name is not needed."""
        detector = HumanAccess(
            HumanAccessOptions(applications=(), allow_cidrs=(ipaddress.ip_network("10.0.0.0/8"),))
        )
        inside = statement(client_addr="10.1.2.3", txid="1")
        outside = statement(client_addr="192.0.2.10", txid="2")
        assert ["2"] == [a.key.rsplit(":", 1)[1] for a in feed(detector, [inside, outside])]

    def test_off_hours_only(self) -> None:
        """With only_off_hours, a change at 14:00 on a Monday is silent; at 03:00 it fires."""
        detector = HumanAccess(
            HumanAccessOptions(
                only_off_hours=True,
                working_hours=WorkingHours(time(8), time(18)),
                timezone=ZoneInfo("UTC"),
            )
        )
        day = statement(application_name="psql", txid="1")
        night = statement(application_name="psql", txid="2", at=_AT.replace(hour=3))
        sunday = statement(application_name="psql", txid="3", at=_AT - timedelta(days=1))
        alerts = feed(detector, [day, night, sunday])
        assert ["2", "3"] == [a.key.rsplit(":", 1)[1] for a in alerts]
        assert "console psql; off-hours" == alerts[0].evidence["reasons"]

    def test_working_hours_past_midnight(self) -> None:
        """A span ending after midnight contains the small hours."""
        night_shift = WorkingHours.parse("22:00-06:00")
        assert (True, True, False) == (
            time(23) in night_shift,
            time(5) in night_shift,
            time(12) in night_shift,
        )


class TestBruteForce:
    def test_per_user_fires_at_the_threshold(self, dsn: str, conn: Conn) -> None:
        """10 failed logins for alice fire; 9 for bob do not."""
        for user, count in (("alice", 10), ("bob", 9)):
            for _ in range(count):
                login_failed(conn, user, f"203.0.113.{count}")
        alerts = watch(dsn, "brute_force", BruteForceOptions(per_ip=0))
        assert [("user", "alice", "10")] == [
            (a.evidence["scope"], a.evidence["resource"].split(":")[1], a.evidence["count"])
            for a in alerts
        ]
        assert "timeline --client-addr 203.0.113.10" in (alerts[0].investigate or "")

    def test_per_ip_and_allow_list(self, dsn: str, conn: Conn) -> None:
        """Failures spread over users add up per address, except from an allowed network."""
        for n in range(5):
            login_failed(conn, f"user{n}", "192.0.2.66")
            login_failed(conn, f"user{n}", "10.0.0.5")
        options = BruteForceOptions(
            per_user=0, per_ip=5, allow_cidrs=(ipaddress.ip_network("10.0.0.0/8"),)
        )
        alerts = watch(dsn, "brute_force", options)
        assert [("ip", "192.0.2.66")] == [
            (a.evidence["scope"], a.evidence["client_ip"]) for a in alerts
        ]

    def test_window_slides(self) -> None:
        """Failures further apart than the window do not add up; a new burst fires again."""
        detector = BruteForce(BruteForceOptions(per_user=3, per_ip=0, window=timedelta(minutes=5)))
        minutes = [0, 1, 7, 8, 20, 21, 22, 23]
        events = [app_event(id=i, at=_AT + timedelta(minutes=m)) for i, m in enumerate(minutes, 1)]
        assert ["brute_force:user:alice:7"] == [a.key for a in feed(detector, events)]

    def test_one_alert_per_burst(self) -> None:
        """A burst stays one alert while it stays above the threshold."""
        detector = BruteForce(BruteForceOptions(per_user=3, per_ip=0))
        events = [app_event(id=i, at=_AT + timedelta(seconds=i)) for i in range(1, 20)]
        assert ["brute_force:user:alice:3"] == [a.key for a in feed(detector, events)]


class TestFailureBurst:
    def test_fires_at_count_and_ignores_logins(self, dsn: str, conn: Conn) -> None:
        """5 failed app events fire; failed logins are not counted; 4 would not fire."""
        for _ in range(4):
            conn.execute(
                "SELECT whodunit.record_app_event('order.refund', 'order', '1', 'failure', "
                "'card declined')"
            )
        login_failed(conn, "alice", "192.0.2.1")
        assert [] == watch(dsn, "failure_burst", FailureBurstOptions(count=5))
        conn.execute("SELECT whodunit.record_app_event('report.export', p_outcome => 'failure')")
        alerts = watch(dsn, "failure_burst", FailureBurstOptions(count=5))
        assert [("5", "all")] == [(a.evidence["count"], a.evidence["group"]) for a in alerts]

    def test_group_by_action(self) -> None:
        """Grouped by action, two actions' failures do not add up."""
        detector = FailureBurst(FailureBurstOptions(count=3, group_by="action"))
        events = [
            app_event(id=i, action=("a" if i % 2 else "b"), at=_AT + timedelta(seconds=i))
            for i in range(1, 6)
        ]
        assert ["failure_burst:action:a:5"] == [a.key for a in feed(detector, events)]


class TestKeys:
    def test_the_same_events_give_the_same_keys(self) -> None:
        """Fresh detectors fed the same events raise the same keys (a re-read after a crash)."""
        events: list[Event] = [
            statement(id=i, rows=2000, txid=str(i // 2), at=_AT + timedelta(seconds=i))
            for i in range(1, 8)
        ]
        events += [app_event(id=i, at=_AT + timedelta(seconds=i)) for i in range(1, 12)]

        def keys() -> list[str]:
            return [a.key for d in build() for e in events for a in d.observe(e)]

        first = keys()
        assert first == keys()
        assert len(first) == len(set(first))

    def test_a_late_event_counts_in_its_own_window_only(self) -> None:
        """An event read late (an old transaction) does not re-key alerts already raised."""
        detector = BruteForce(BruteForceOptions(per_user=3, per_ip=0))
        on_time = [app_event(id=i, at=_AT + timedelta(seconds=i)) for i in (2, 3, 4)]
        late = app_event(id=9, at=_AT)
        assert ["brute_force:user:alice:4"] == [a.key for a in feed(detector, [*on_time, late])]

    def test_every_rule_has_a_detector_class(self) -> None:
        """The registry names each rule once, with options defaulting to enabled."""
        assert {
            MassDelete,
            MassUpdate,
            Truncate,
            Drop,
            PrivilegeChange,
            HumanAccess,
            BruteForce,
            FailureBurst,
        } == set(DETECTORS.values())
        assert all(kind.options_type().enabled for kind in DETECTORS.values())


def new_role(conn: Conn) -> str:
    """Create a role no other test uses (roles belong to the whole server)."""
    name = f"r_{os.getpid()}_{next(_roles)}"
    conn.execute(f"CREATE ROLE {name}")
    return name


def login_failed(conn: Conn, user: str, ip: str) -> None:
    conn.execute(
        "SELECT whodunit.record_app_event('auth.login_failed', 'user', %s, 'failure', "
        "'invalid_credentials', p_context => jsonb_build_object('client_ip', %s::text))",
        (user, ip),
    )
