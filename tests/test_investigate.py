"""
Investigations over the trail: the incident report and the focused questions.

The scenarios run once per module, in order, on one gameclub database (uuid keys, quoted
CamelCase tables, ON DELETE CASCADE from "User" to everything a user owns): an admin
wipes users through the app (a), a developer wipes a table from psql as another role (b),
truncates and then drops a table (c), and several people work at once while only one of
them destroys anything (d).  Tests that change the database get one of their own.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson
import psycopg
import pytest
from psycopg import sql

from tests.fixtures.gameclub import SCHEMA_SQL, TABLES
from tests.fixtures.postgres import TEMPLATE, Server
from whodunit.context import acting_as, set_db_context
from whodunit.errors import ConfigError, PrivilegeError, SchemaNotInstalledError, WhodunitError
from whodunit.investigate import (
    FileLogSource,
    LokiLogSource,
    Window,
    history,
    investigate,
    timeline,
    trace,
    who_deleted,
)
from whodunit.investigate.queries import actor_phrase, who_from

Conn = psycopg.Connection[Any]

#: The app request that wipes users in scenario (a).
WIPE = {
    "actor_id": "u-1",
    "actor_name": "player1",
    "correlation_id": "req-wipe-1",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "method": "DELETE",
    "path": "/admin/users",
}
#: The admin's login, an earlier request.
LOGIN = {"actor_id": "u-1", "actor_name": "player1", "correlation_id": "req-login-1"}
#: A name no report may print unescaped.
EVIL = "<script>alert(1)</script>"
_names = itertools.count()


@dataclass
class Club:
    """A gameclub database with an app role and a developer role that may change it."""

    conn: Conn
    dsn: str
    app_dsn: str
    dev_dsn: str
    dev_role: str
    app_role: str

    def value(self, query: str | sql.Composed, params: tuple[Any, ...] = ()) -> Any:
        """The first column of the first row of *query*."""
        row = self.conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]

    def counts(self) -> dict[str, int]:
        """Rows per gameclub table (tables that are gone are left out)."""
        found = {}
        for table in TABLES:
            if self.value("SELECT to_regclass(%s)", (f'"{table}"',)):
                found[table] = self.value(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                )
        return found

    def user_id(self, username: str) -> str:
        """The uuid of a user, as text."""
        return str(self.value('SELECT id::text FROM "User" WHERE username = %s', (username,)))

    def as_app(self, statement: str, params: tuple[Any, ...] = (), **context: Any) -> None:
        """Run *statement* in the app's role, with *context* as the app would set it."""
        with psycopg.connect(self.app_dsn) as app, acting_as(**context):
            set_db_context(app)
            app.execute(statement, params)

    def as_psql(self, statement: str) -> None:
        """Run *statement* as the developer in psql: another role, no app context."""
        with psycopg.connect(self.dev_dsn, autocommit=True, application_name="psql") as dev:
            dev.execute(statement)

    def lost(self, action: Any) -> dict[str, int]:
        """Run *action*; return the rows each table lost (a table gone lost all it had)."""
        before = self.counts()
        action()
        after = self.counts()
        return {t: n - after.get(t, 0) for t, n in before.items() if n - after.get(t, 0)}

    def record_event(self, action: str, context: dict[str, Any], **args: Any) -> None:
        """An app event as whodunit.audit writes it."""
        named = "".join(f", p_{name} => %({name})s" for name in args)
        self.conn.execute(
            f"SELECT whodunit.record_app_event(%(action)s{named}, p_context => %(context)s::jsonb)",
            {"action": action, "context": orjson.dumps(context).decode(), **args},
        )


@contextmanager
def roles(conn: Conn, dsn: str) -> Iterator[Club]:
    """Make the app and developer login roles for a gameclub database; drop them after."""
    made = []
    for prefix in ("app", "dev"):
        name = f"{prefix}_{os.getpid()}_{next(_names)}"
        conn.execute(
            sql.SQL(
                "CREATE ROLE {0} LOGIN; GRANT USAGE ON SCHEMA public TO {0}; GRANT SELECT, "
                "INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {0}"
            ).format(sql.Identifier(name))
        )
        made.append((name, psycopg.conninfo.make_conninfo(dsn, user=name)))
    (app_role, app_dsn), (dev_role, dev_dsn) = made
    try:
        yield Club(conn, dsn, app_dsn, dev_dsn, dev_role, app_role)
    finally:
        for name, _ in made:
            conn.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(name)))


@dataclass
class Scenes:
    """The shared database after every scenario, and what each scenario did."""

    club: Club
    #: When the admin's request (a) ran.
    wiped_at: datetime
    #: Rows each table lost, per scenario: app, psql, truncate, several.
    lost: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Keys of rows the tests ask about.
    keys: dict[str, str] = field(default_factory=dict)
    #: Profiles player3 updated in (d), below the mass-update threshold.
    overwritten: int = 0


def play_scenes(server: Server) -> Iterator[Scenes]:
    """Create a gameclub database, play every scenario once, drop it after the module."""
    name = f"whodunit_scenes_{os.getpid()}_{next(_names)}"
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    dsn = server.database_dsn(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA_SQL.read_text())
            with roles(conn, dsn) as club:
                yield _play(club)
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _play(club: Club) -> Scenes:
    keys = {
        "player31": club.user_id("player31"),
        "player33": club.user_id("player33"),
        "player2": club.user_id("player2"),
    }
    # Logins and a failed attempt of the admin's own, shortly before (a).
    club.record_event("auth.login_succeeded", LOGIN, resource_type="user", resource_id="u-1")
    club.record_event(
        "auth.login_failed", {}, resource_type="user", resource_id="player1", outcome="failure"
    )
    club.record_event("admin.purge", WIPE, outcome="failure", error="timeout")
    wiped_at = datetime.now(UTC)
    scenes = Scenes(club, wiped_at, keys=keys)
    scenes.lost["app"] = club.lost(
        lambda: club.as_app('DELETE FROM "User" WHERE username LIKE %s', ("player3%",), **WIPE)
    )
    scenes.lost["psql"] = club.lost(lambda: club.as_psql('DELETE FROM "FriendRequest"'))
    keys["session"] = club.value('SELECT id::text FROM "ScheduledSession" LIMIT 1')
    club.conn.execute(
        sql.SQL('ALTER TABLE "ScheduledSession" OWNER TO {}').format(sql.Identifier(club.dev_role))
    )
    scenes.lost["truncate"] = club.lost(lambda: club.as_psql('TRUNCATE "ScheduledSession"'))
    club.as_psql('DROP TABLE "ScheduledSession"')
    scenes.overwritten, scenes.lost["several"] = _several(club)
    # A row's whole life: created and edited through the app, deleted from psql.
    club.as_app(
        "INSERT INTO \"User\" (username, email) VALUES ('player99', 'a@example.com')",
        actor_id="u-9",
        actor_name="player9",
    )
    keys["player99"] = club.user_id("player99")
    club.as_app(
        "UPDATE \"User\" SET email = 'b@example.com' WHERE username = 'player99'",
        actor_id="u-9",
        actor_name="player9",
    )
    club.as_psql("DELETE FROM \"User\" WHERE username = 'player99'")
    # Markup in a user name and in an actor name, for the renderers.
    club.conn.execute("INSERT INTO \"User\" (username, email) VALUES (%s, 'x')", (EVIL,))
    club.as_app('DELETE FROM "User" WHERE username = %s', (EVIL,), actor_id="u-6", actor_name=EVIL)
    return scenes


def _several(club: Club) -> tuple[int, dict[str, int]]:
    """(d): three app users at once; only player4 deletes (two game requests)."""
    game = club.value('SELECT game_id FROM "GameRequest" ORDER BY game_id LIMIT 1')
    overwritten = club.value("SELECT count(*) FROM \"Profile\" WHERE country = 'FR'")
    before = club.counts()
    sessions = [psycopg.connect(club.app_dsn) for _ in range(3)]
    try:
        for app, n in zip(sessions, (2, 3, 4), strict=True):
            with acting_as(actor_id=f"u-{n}", actor_name=f"player{n}", correlation_id=f"req-{n}"):
                set_db_context(app)
        sessions[0].execute(
            'INSERT INTO "Game" (title, owner_id, max_players) '
            "SELECT 'new game', id, 4 FROM \"User\" WHERE username = 'player2'"
        )
        sessions[1].execute("UPDATE \"Profile\" SET bio = 'hi' WHERE country = 'FR'")
        sessions[2].execute('DELETE FROM "GameRequest" WHERE game_id = %s', (game,))
        for app in sessions:
            app.commit()
    finally:
        for app in sessions:
            app.close()
    after = club.counts()
    return overwritten, {t: before[t] - after[t] for t in before if before[t] > after[t]}


@pytest.fixture(scope="module")
def scenes(pg_server: Server) -> Iterator[Scenes]:
    """Every scenario, played once for this module's tests (which only read)."""
    yield from play_scenes(pg_server)


def write_logs(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    """Write JSON lines (dicts) and raw text lines to *path*."""
    text = [line if isinstance(line, str) else orjson.dumps(line).decode() for line in lines]
    path.write_text("\n".join(text) + "\n")
    return path


def log(ts: datetime, message: str, level: str = "info", **fields: Any) -> dict[str, Any]:
    """A log record with the shared field names (``user.id`` for user_id, ...)."""
    record = {"ts": ts.isoformat().replace("+00:00", "Z"), "level": level, "message": message}
    record.update({k.replace("user_", "user."): v for k, v in fields.items()})
    return record


class TestWhoDeleted:
    def test_names_the_app_user_behind_a_cascaded_delete(self, scenes: Scenes) -> None:
        """A profile removed by the cascade of a DELETE on "User" points at that request."""
        uid = scenes.keys["player31"]
        found = who_deleted(scenes.club.conn, "Profile", uid)
        assert found is not None
        assert ("DELETE", "player1", "u-1") == (found.op, found.who.actor_name, found.who.actor_id)
        assert ("req-wipe-1", "DELETE", "/admin/users") == (
            found.how.correlation_id,
            found.how.request_method,
            found.how.request_path,
        )
        assert found.old_row is not None
        assert uid == found.old_row["user_id"]
        assert '"User"' in str(found.how.query)
        assert not found.who.inferred

    def test_reads_names_and_keys_as_people_type_them(self, scenes: Scenes) -> None:
        """An unquoted CamelCase name and an upper-case uuid find the row."""
        uid = scenes.keys["player33"]
        for name in ("User", '"User"', 'public."User"', "PUBLIC.user"):
            found = who_deleted(scenes.club.conn, name, uid.upper())
            assert found is not None, name
            assert uid == found.old_row["id"]  # type: ignore[index]
            assert 'public."User"' == found.table

    def test_finds_rows_of_a_table_dropped_since(self, scenes: Scenes) -> None:
        """After TRUNCATE and DROP TABLE, the TRUNCATE is what removed the row."""
        found = who_deleted(scenes.club.conn, "ScheduledSession", scenes.keys["session"])
        assert found is not None
        assert ("TRUNCATE", scenes.club.dev_role, "psql") == (
            found.op,
            found.who.db_current_user,
            found.who.application_name,
        )
        assert found.who.inferred
        assert "no app context" in found.who.summary

    def test_none_for_a_row_never_deleted(self, scenes: Scenes) -> None:
        """A row that still exists has no deletion."""
        assert who_deleted(scenes.club.conn, "User", scenes.keys["player2"]) is None

    def test_bad_tables_and_keys(self, scenes: Scenes) -> None:
        """An unknown table names `whodunit status`; a key of the wrong type names the key."""
        with pytest.raises(ConfigError, match=r"no audited table 'Nope'.*whodunit status"):
            who_deleted(scenes.club.conn, "Nope", "1")
        with pytest.raises(ConfigError, match=r"'nope' is not a key of public.\"User\" \(id\)"):
            who_deleted(scenes.club.conn, "User", "nope")

    def test_composite_keys_as_json_array_or_commas(self, conn: Conn) -> None:
        """A two-column key is given as [7, "admin"] or 7,admin."""
        conn.execute("CREATE TABLE membership (club int, member text, PRIMARY KEY (club, member))")
        conn.execute("INSERT INTO membership VALUES (7, 'admin'), (7, 'guest'), (8, 'admin')")
        conn.execute("DELETE FROM membership WHERE club = 7")
        for pk in ('[7, "admin"]', "7,admin", "7, guest"):
            found = who_deleted(conn, "membership", pk)
            assert found is not None, pk
            assert "DELETE" == found.op
        assert who_deleted(conn, "membership", "8,admin") is None
        with pytest.raises(ConfigError, match="key of 2 columns"):
            who_deleted(conn, "membership", "7")


class TestHistory:
    def test_tells_a_rows_whole_life(self, scenes: Scenes) -> None:
        """INSERT, UPDATE and DELETE of one row, in order, with images and who."""
        changes = history(scenes.club.conn, "User", scenes.keys["player99"])
        assert ["INSERT", "UPDATE", "DELETE"] == [c.op for c in changes]
        assert "a@example.com" == changes[0].new_row["email"]  # type: ignore[index]
        assert ("a@example.com", "b@example.com") == (
            changes[1].old_row["email"],  # type: ignore[index]
            changes[1].new_row["email"],  # type: ignore[index]
        )
        assert ["player9", "player9", None] == [c.who.actor_name for c in changes]
        assert [False, False, True] == [c.who.inferred for c in changes]
        assert changes[2].who.db_current_user == scenes.club.dev_role

    def test_empty_for_an_unknown_key(self, scenes: Scenes) -> None:
        """A key never seen has no history."""
        assert [] == history(scenes.club.conn, "User", "00000000-0000-0000-0000-000000000000")


class TestWho:
    def test_an_anonymous_request_is_not_a_direct_session(self) -> None:
        """A context without an actor still shows the statement came through the app."""
        anonymous = who_from({"db_current_user": "app", "correlation_id": "req-7"})
        assert (True, True) == (anonymous.inferred, anonymous.app_context)
        assert "an anonymous app request (no actor recorded) as DB role app" == anonymous.summary
        direct = who_from(
            {"db_current_user": "dev1", "db_session_user": "login1", "client_addr": "10.0.0.5"}
        )
        assert (True, False) == (direct.inferred, direct.app_context)
        assert (
            "no app context: a direct database session (no application_name) as role dev1 "
            "(logged in as login1) from 10.0.0.5"
        ) == direct.summary
        assert "role dev1 (no app context: a direct database session from 10.0.0.5)" == (
            actor_phrase(direct)
        )


class TestTimeline:
    def test_by_actor_merges_statements_and_events(self, scenes: Scenes) -> None:
        """The admin's logins (a failed one by name), the failed purge, then the DELETEs."""
        events = timeline(scenes.club.conn, actor="player1")
        assert ["auth.login_succeeded", "auth.login_failed", "admin.purge"] == [
            e.what for e in events[:3]
        ]
        assert ["DELETE"] * len(TABLES) == [e.what for e in events[3:]]
        assert events == sorted(events, key=lambda e: e.at)

    def test_by_db_user_and_correlation_id(self, scenes: Scenes) -> None:
        """A DB role's statements; a correlation id's statements and events."""
        by_role = timeline(scenes.club.conn, db_user=scenes.club.dev_role)
        assert [
            ('public."FriendRequest"', "DELETE"),
            ('public."ScheduledSession"', "TRUNCATE"),
            ('public."ScheduledSession"', "DROP TABLE"),
            ('public."User"', "DELETE"),
        ] == [(e.target, e.what) for e in by_role]
        by_request = timeline(scenes.club.conn, correlation_id="req-wipe-1")
        assert {"req-wipe-1"} == {e.correlation_id for e in by_request}
        assert [] == timeline(scenes.club.conn, client_addr="10.0.0.5")

    def test_needs_a_filter_and_a_real_address(self, scenes: Scenes) -> None:
        """No filter, or a client address that is not one, is refused."""
        with pytest.raises(ConfigError, match="needs an actor"):
            timeline(scenes.club.conn)
        with pytest.raises(ConfigError, match=r"'10\.0\.0\.x' is not an IP address"):
            timeline(scenes.club.conn, client_addr="10.0.0.x")


class TestTrace:
    def test_merges_log_lines_events_and_changes(self, scenes: Scenes, tmp_path: Path) -> None:
        """One request's log lines, app event and DELETEs in one ordered list."""
        at = scenes.wiped_at
        source = FileLogSource(str(tmp_path / "*.jsonl"))
        write_logs(
            tmp_path / "app.jsonl",
            [
                log(at - timedelta(seconds=5), "request started", correlation_id="req-wipe-1"),
                log(at, "other request", correlation_id="req-other"),
                '{"ts": "2026-06-01T14:00:00Z", "correlation_id": "req-wipe-1", "mess',
                log(at + timedelta(seconds=5), "done", correlation_id="req-wipe-1", user_id="u-1"),
            ],
        )
        entries = trace(scenes.club.conn, "req-wipe-1", source)
        assert ["log", "app_event", "statement"] == [e.source for e in entries[:3]]
        assert "done" == entries[-1].detail
        assert len(TABLES) == sum(e.source == "statement" for e in entries)
        assert 1 == source.skipped


class TestInvestigate:
    def test_app_wipe_names_the_user_and_groups_cascades(self, scenes: Scenes) -> None:
        """(a): player1's DELETE on "User" is one incident with five cascades."""
        expected = scenes.lost["app"]
        report = investigate(scenes.club.conn, since=timedelta(hours=1), actor="player1")
        assert 1 == report.total
        incident = report.incidents[0]
        assert ("player1", "u-1", False) == (
            incident.who.actor_name,
            incident.who.actor_id,
            incident.who.inferred,
        )
        assert expected == {s.table_name: s.rows for s in incident.statements}
        assert sum(expected.values()) == incident.rows_lost
        root = next(s for s in incident.statements if s.table_name == "User")
        assert root.cascaded_from is None
        assert {root.id} == {s.cascaded_from for s in incident.statements if s is not root}
        assert report.answer.startswith(
            f'player1 (actor id u-1) deleted {expected["User"]} rows from public."User", '
            f"cascading to {sum(expected.values()) - expected['User']} rows in 5 tables"
        )
        assert "via DELETE /admin/users (correlation id req-wipe-1)." in report.answer
        assert ("req-wipe-1", WIPE["trace_id"]) == (
            incident.how.correlation_id,
            incident.how.trace_id,
        )
        assert scenes.wiped_at <= incident.first_at <= incident.last_at
        assert 3 == len(root.sample)
        assert root.sample[0]["username"].startswith("player3")
        assert ["auth.login_succeeded", "auth.login_failed"] == [
            e.what for e in incident.why.logins
        ]
        assert ["admin.purge"] == [e.what for e in incident.why.app_events]
        assert ["admin.purge"] == [e.what for e in incident.why.errors_before]
        assert [
            f'role {scenes.club.app_role} may DELETE on public."User"; '
            "add `whodunit guard 'public.\"User\"' --max-rows 100`"
        ] == incident.prevention

    def test_psql_wipe_is_inferred_from_the_db_identity(self, scenes: Scenes) -> None:
        """(b): no app context; the role, psql and the socket are named plainly."""
        dev = scenes.club.dev_role
        report = investigate(scenes.club.conn, table="FriendRequest", actor=dev)
        assert 1 == report.total
        incident = report.incidents[0]
        assert (True, False) == (incident.who.inferred, incident.who.app_context)
        assert (dev, "psql") == (incident.who.db_current_user, incident.who.application_name)
        assert report.answer.startswith(
            f"Role {dev} (no app context: a direct psql session over a local socket) deleted "
            f'{scenes.lost["psql"]["FriendRequest"]} rows from public."FriendRequest", at '
        )
        assert (
            f"no app context: a direct database session (psql) as role {dev} over a local socket"
        ) == incident.who.summary
        assert any("backend pid" in note for note in incident.why.notes)
        assert (
            f"role {dev} is used from a direct database session and may still DELETE on "
            f'public."FriendRequest": give people a read-only role '
            f'(REVOKE DELETE ON public."FriendRequest" FROM {dev})'
        ) in incident.prevention

    def test_truncate_then_drop(self, scenes: Scenes) -> None:
        """(c): the TRUNCATE lost the rows and ranks first; the DROP follows."""
        lost = scenes.lost["truncate"]["ScheduledSession"]
        report = investigate(scenes.club.conn, table="ScheduledSession", actor=scenes.club.dev_role)
        assert 2 == report.total
        first, second = report.incidents
        assert ("TRUNCATE", lost) == (first.statements[0].kind, first.rows_lost)
        assert ("DROP TABLE", 0) == (second.statements[0].kind, second.rows_lost)
        assert f'truncated public."ScheduledSession" ({lost} rows)' in report.answer
        assert 'dropped table public."ScheduledSession" (0 rows)' in second.summary
        assert first.first_at < second.first_at
        assert [
            'public."ScheduledSession" no longer exists: once it is back, add '
            "`whodunit guard 'public.\"ScheduledSession\"' --no-truncate`"
        ] == first.prevention
        assert any("--no-drop" in p for p in second.prevention)

    def test_only_the_destructive_actor_among_several(self, scenes: Scenes) -> None:
        """(d): three people at once; only player4's DELETE is an incident."""
        report = investigate(scenes.club.conn, actor="player4")
        assert ("player4", sum(scenes.lost["several"].values())) == (
            report.incidents[0].who.actor_name,
            report.incidents[0].rows_lost,
        )
        for bystander in ("player2", "player3"):
            assert 0 == investigate(scenes.club.conn, actor=bystander).total
        overwrite = investigate(scenes.club.conn, actor="player3", mass_rows=1).incidents[0]
        assert (0, scenes.overwritten) == (overwrite.rows_lost, overwrite.rows_overwritten)
        assert f'updated {scenes.overwritten} rows of public."Profile"' in overwrite.summary

    def test_ranks_every_incident_by_damage(self, scenes: Scenes) -> None:
        """Unfiltered, the app wipe ranks first; a --table filter keeps the cascades' cause."""
        report = investigate(scenes.club.conn)
        assert "player1" == report.incidents[0].who.actor_name
        lost = [i.rows_lost for i in report.incidents]
        assert sorted(lost, reverse=True) == lost
        assert 7 == report.total  # (a), (b), (c) twice, (d), player99, the markup row
        by_table = investigate(scenes.club.conn, table="Profile")
        assert {"User", "Profile", "Game", "FriendRequest", "GameRequest", "ScheduledSession"} == {
            s.table_name for s in by_table.incidents[0].statements
        }
        assert 'public."Profile"' == by_table.filters["table"]

    def test_why_has_the_requests_log_lines(self, scenes: Scenes, tmp_path: Path) -> None:
        """The correlation id's log lines; the actor's error lines just before."""
        at = scenes.wiped_at
        write_logs(
            tmp_path / "app.jsonl",
            [
                log(at - timedelta(minutes=2), "purge failed", "error", user_id="u-1"),
                log(at, "purging users", correlation_id="req-wipe-1", user_id="u-1"),
                log(at, "unrelated", correlation_id="req-2"),
            ],
        )
        source = FileLogSource(str(tmp_path / "*.jsonl"))
        why = investigate(scenes.club.conn, actor="u-1", log_source=source).incidents[0].why
        assert ["purging users"] == [line.message for line in why.log_lines]
        assert ["error", "admin.purge"] == [e.what for e in why.errors_before]

    def test_an_empty_window_says_so(self, scenes: Scenes) -> None:
        """Nothing destructive: the answer says between which times."""
        until = scenes.wiped_at - timedelta(hours=1)
        report = investigate(scenes.club.conn, Window(until - timedelta(hours=1), until))
        assert [] == report.incidents
        assert report.answer.startswith("nothing destructive found between ")

    def test_bad_windows_and_tables(self, scenes: Scenes) -> None:
        """Both --since and a window, a reversed window, an unknown table: clear errors."""
        now = datetime.now(UTC)
        with pytest.raises(ConfigError, match="not both"):
            investigate(scenes.club.conn, Window(now, None), since=timedelta(hours=1))
        with pytest.raises(ConfigError, match=r"ends .* before it starts"):
            investigate(scenes.club.conn, Window(now, now - timedelta(hours=1)))
        with pytest.raises(ConfigError, match="no audited table 'Ghost'"):
            investigate(scenes.club.conn, table="Ghost")


class TestTrailChecks:
    def test_an_old_schema_asks_for_an_upgrade(self, conn: Conn) -> None:
        """A trail below schema v3 is refused with 'whodunit install'."""
        conn.execute("UPDATE whodunit.meta SET value = '2' WHERE key = 'schema_version'")
        with pytest.raises(WhodunitError, match=r"schema is v2.*run 'whodunit install' to upgrade"):
            investigate(conn)

    def test_no_schema_at_all(self, conn: Conn, dsn: str) -> None:
        """A database without whodunit says to install it."""
        name = f"bare_{os.getpid()}_{next(_names)}"
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        try:
            bare = psycopg.conninfo.make_conninfo(dsn, dbname=name)
            with (
                psycopg.connect(bare, autocommit=True) as other,
                pytest.raises(SchemaNotInstalledError, match="run 'whodunit install'"),
            ):
                investigate(other)
        finally:
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))

    def test_a_role_that_cannot_read_the_trail(self, app_dsn: str) -> None:
        """A non-superuser gets a PrivilegeError naming the role."""
        with (
            psycopg.connect(app_dsn, autocommit=True) as conn,
            pytest.raises(PrivilegeError, match="may not read the audit trail"),
        ):
            investigate(conn)


class LokiStub:
    """Loki's query_range on a local port: answers the documented JSON, keeps the queries."""

    def __init__(self, lines: list[dict[str, Any]], status: int = 200) -> None:
        self.queries: list[dict[str, list[str]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                stub.queries.append(parse_qs(url.query))
                body = orjson.dumps(stub.answer(lines)) if status == 200 else b"bad query"
                self.send_response(status if url.path == "/loki/api/v1/query_range" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                """Keep the test output clean."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def answer(lines: list[dict[str, Any]]) -> dict[str, Any]:
        """The query_range response shape: streams of [ns timestamp, line] pairs."""
        values = [
            [str(int(datetime.fromisoformat(r["ts"]).timestamp() * 1e9)), orjson.dumps(r).decode()]
            for r in lines
        ]
        values.append([str(10**18), "not json"])
        return {
            "status": "success",
            "data": {
                "resultType": "streams",
                "result": [{"stream": {"service": "gameclub", "level": "info"}, "values": values}],
                "stats": {},
            },
        }

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loki_stub(request: pytest.FixtureRequest) -> Iterator[LokiStub]:
    """A LokiStub answering the lines given by indirect parametrization (or none)."""
    param: tuple[list[dict[str, Any]], int] = getattr(request, "param", ([], 200))
    stub = LokiStub(*param)
    yield stub
    stub.close()


NOW = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)


class TestLoki:
    @pytest.mark.parametrize(
        "loki_stub",
        [([log(NOW, "deleting users", correlation_id="req-wipe-1", user_id="u-1")], 200)],
        indirect=True,
    )
    def test_queries_logql_and_parses_streams(self, loki_stub: LokiStub) -> None:
        """A LogQL filter on the correlation id; lines parsed; a non-JSON line counted."""
        source = LokiLogSource(loki_stub.url, '{service="gameclub"}')
        lines = source.lines(correlation_id="req-wipe-1", since=NOW - timedelta(hours=1))
        assert ["deleting users"] == [line.message for line in lines]
        assert ("u-1", NOW) == (lines[0].user_id, lines[0].ts)
        assert 1 == source.skipped
        sent = loki_stub.queries[0]
        assert ['{service="gameclub"} | json | correlation_id="req-wipe-1"'] == sent["query"]
        assert ["forward"] == sent["direction"]
        assert [str(int((NOW - timedelta(hours=1)).timestamp()) * 10**9)] == sent["start"]

    def test_quotes_values_in_logql(self) -> None:
        """A quote in a value cannot end the LogQL string."""
        source = LokiLogSource("http://loki:3100")
        assert '{service=~".+"} | json | (user_id="a\\"b" or user_name="a\\"b")' == source.query(
            actor='a"b'
        )

    @pytest.mark.parametrize("loki_stub", [([], 400)], indirect=True)
    def test_an_error_answer_is_reported(self, loki_stub: LokiStub) -> None:
        """Loki's status and body are in the error."""
        with pytest.raises(WhodunitError, match="answered 400: bad query"):
            LokiLogSource(loki_stub.url).lines(correlation_id="x")

    def test_an_unreachable_loki_is_reported(self) -> None:
        """A refused connection names the URL and the option."""
        with pytest.raises(WhodunitError, match=r"cannot query Loki at http://127.0.0.1:9.*"):
            LokiLogSource("http://127.0.0.1:9", timeout=1).lines()

    def test_only_http_urls(self) -> None:
        """Anything but http(s) is refused at once."""
        with pytest.raises(ConfigError, match="must start with http"):
            LokiLogSource("loki:3100")


class TestFileLogs:
    def test_filters_and_skips(self, tmp_path: Path) -> None:
        """Lines are filtered by actor and window across files; malformed ones are counted."""
        write_logs(
            tmp_path / "a.jsonl",
            [
                log(NOW, "login", user_id="u-1"),
                '["a list"]',
                {"level": "info", "message": "no timestamp"},
            ],
        )
        (tmp_path / "sub").mkdir()
        write_logs(
            tmp_path / "sub" / "b.jsonl",
            [log(NOW + timedelta(minutes=1), "boom", level="error", user_name="player1")],
        )
        source = FileLogSource(str(tmp_path / "**" / "*.jsonl"))
        assert ["login"] == [line.message for line in source.lines(actor="u-1")]
        assert ["boom"] == [
            line.message
            for line in source.lines(actor="player1", since=NOW, until=NOW + timedelta(hours=1))
        ]
        assert [] == source.lines(since=NOW + timedelta(hours=1))
        assert 2 == source.skipped
