"""Restore: the rows a statement, a transaction or a time window removed, put back."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from tests.fixtures.gameclub import SCHEMA_SQL, checksums
from whodunit.db import install as installer
from whodunit.errors import ConfigError, PrivilegeError, WhodunitError
from whodunit.investigate import restore_command
from whodunit.investigate.restore import (
    ON_CONFLICT,
    RestorePlan,
    RestoreResult,
    Selection,
    apply_restore,
    plan_restore,
)

Conn = psycopg.Connection[Any]


def now(conn: Conn) -> datetime:
    """The server's clock: a window starting here holds only what comes next."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def last_statement(conn: Conn, op: str, table: str) -> int:
    """The id of the latest statement of *op* (or DDL command tag) on *table*."""
    row = conn.execute(
        "SELECT id FROM whodunit.statement WHERE coalesce(command_tag, op) = %s "
        "AND table_name = %s ORDER BY at DESC, id DESC LIMIT 1",
        (op, table),
    ).fetchone()
    assert row is not None, f"no {op} on {table} in the trail"
    return int(row[0])


def restore(conn: Conn, on_conflict: Any = "skip", **selection: Any) -> RestoreResult:
    """Plan and apply, as ``whodunit restore --apply`` does."""
    return apply_restore(conn, plan_restore(conn, Selection(**selection)), on_conflict)


def by_table(plan: RestorePlan) -> dict[str, Any]:
    """The plan's tables by name."""
    return {t.table_name: t for t in plan.tables}


def create_table_text(table: str) -> str:
    """The fixture's CREATE TABLE of *table*, as an engineer would re-run it by hand."""
    return next(s for s in SCHEMA_SQL.read_text().split(";\n") if f'CREATE TABLE "{table}"' in s)


class TestWipe:
    def test_wipe_of_users_with_cascades_comes_back(
        self, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """DELETE FROM "User" cascades to every table; restoring it brings all of them back."""
        conn.execute('DELETE FROM "User"')
        result = restore(conn, statement_id=last_statement(conn, "DELETE", "User"))
        assert gameclub == checksums(conn)
        assert 40 + 40 + 25 + 80 + 50 + 25 == result.inserted
        # Parents first: "User" before every table that references it.
        assert 'public."User"' == result.tables[0].table

    def test_dry_run_changes_nothing(self, conn: Conn, gameclub: dict[str, str]) -> None:
        """The plan counts the rows per table, and the database and the trail stay as they were."""
        conn.execute("DELETE FROM \"User\" WHERE username IN ('player1', 'player2')")
        wiped = checksums(conn)
        trail = conn.execute("SELECT count(*) FROM whodunit.statement").fetchone()
        plan = plan_restore(conn, Selection(statement_id=last_statement(conn, "DELETE", "User")))
        assert 2 == by_table(plan)["User"].insert
        assert 2 == by_table(plan)["Profile"].insert
        assert (0, 0) == (plan.rows_to_revert, plan.conflicts)
        assert wiped == checksums(conn)
        assert trail == conn.execute("SELECT count(*) FROM whodunit.statement").fetchone()

    def test_transaction_is_restored_whole(self, conn: Conn, gameclub: dict[str, str]) -> None:
        """--tx undoes every statement of one transaction: deletes and updates alike."""
        with conn.transaction():
            conn.execute("UPDATE \"Profile\" SET bio = 'gone fishing'")
            conn.execute('DELETE FROM "Game" WHERE max_players > 4')
            txid = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert txid is not None
        restore(conn, txid=txid[0])
        assert gameclub == checksums(conn)

    def test_window_can_be_narrowed_to_one_table(
        self, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """--since with --table restores that table only."""
        since = now(conn)
        conn.execute("UPDATE \"Profile\" SET country = 'XX'")
        conn.execute('DELETE FROM "FriendRequest"')
        restore(conn, since=since, table='"Profile"')
        after = checksums(conn)
        assert gameclub["Profile"] == after["Profile"]
        assert "0:" == after["FriendRequest"]


class TestTruncateAndDrop:
    def test_truncate_comes_back(self, conn: Conn, gameclub: dict[str, str]) -> None:
        """TRUNCATE … CASCADE saved every table's rows; restore puts them all back."""
        conn.execute('TRUNCATE "User" CASCADE')
        result = restore(conn, statement_id=last_statement(conn, "TRUNCATE", "User"))
        assert gameclub == checksums(conn)
        assert 6 == len(result.tables)

    def test_truncate_and_drop_then_table_created_again(
        self, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """After TRUNCATE and DROP TABLE, a table created again by hand gets its rows back."""
        since = now(conn)
        conn.execute('TRUNCATE "ScheduledSession"')
        conn.execute('DROP TABLE "ScheduledSession"')
        conn.execute(create_table_text("ScheduledSession"))
        result = restore(conn, since=since)
        assert gameclub == checksums(conn)
        assert [None] == [t.recreated_from for t in result.tables]

    def test_dropped_table_is_created_again_from_the_trail(
        self, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """A dropped table is re-created from its captured CREATE TABLE, then refilled."""
        conn.execute('DROP TABLE "ScheduledSession"')
        selection = Selection(statement_id=last_statement(conn, "DROP TABLE", "ScheduledSession"))
        plan = plan_restore(conn, selection)
        created = last_statement(conn, "CREATE TABLE", "ScheduledSession")
        assert (created, 25) == (plan.tables[0].recreate_from, plan.tables[0].insert)
        assert conn.execute("SELECT to_regclass('\"ScheduledSession\"')").fetchone() == (None,)
        result = apply_restore(conn, plan)
        assert gameclub == checksums(conn)
        assert created == result.tables[0].recreated_from
        assert any("re-created from its CREATE TABLE" in note for note in result.notes)

    def test_table_created_by_dynamic_sql_cannot_be_created_again(self, conn: Conn) -> None:
        """Without a plain CREATE TABLE in the trail, restore says so and writes nothing."""
        conn.execute("DO $$ BEGIN EXECUTE 'CREATE TABLE dyn (id int PRIMARY KEY)'; END $$")
        conn.execute("INSERT INTO dyn SELECT generate_series(1, 3)")
        conn.execute("DROP TABLE dyn")
        plan = plan_restore(conn, Selection(statement_id=last_statement(conn, "DROP TABLE", "dyn")))
        assert [] == plan.tables
        [lost] = plan.cannot_restore
        assert ("no_table", 3) == (lost.kind, lost.rows)
        assert "holds no plain CREATE TABLE" in lost.reason
        assert "re-create it, then run restore again" in lost.reason
        assert 0 == apply_restore(conn, plan).inserted

    @pytest.mark.parametrize("wipe", ["TRUNCATE score", "DELETE FROM score"])
    def test_partitioned_table(self, conn: Conn, wipe: str) -> None:
        """A partitioned table comes back from its partitions' snapshots or its own DELETE."""
        conn.execute(
            "CREATE TABLE score (id int, season int, points int, PRIMARY KEY (id, season)) "
            "PARTITION BY LIST (season);"
            "CREATE TABLE score_1 PARTITION OF score FOR VALUES IN (1);"
            "CREATE TABLE score_2 PARTITION OF score FOR VALUES IN (2);"
            "INSERT INTO score SELECT g, 1 + g % 2, g * 10 FROM generate_series(1, 20) g"
        )
        before = checksums(conn, ("score", "score_1", "score_2"))
        since = now(conn)
        conn.execute(wipe)
        plan = plan_restore(conn, Selection(since=since))
        assert ([], 20) == (plan.cannot_restore, plan.rows_to_insert)
        apply_restore(conn, plan)
        assert before == checksums(conn, ("score", "score_1", "score_2"))

    def test_capped_snapshot_is_reported_and_the_rest_restored(
        self, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """A TRUNCATE that saved 10 of 40 rows: the plan says 30 are lost, the 10 come back."""
        conn.execute("SELECT whodunit.configure('snapshot_max_rows', '10')")
        conn.execute('TRUNCATE "Profile"')
        plan = plan_restore(
            conn, Selection(statement_id=last_statement(conn, "TRUNCATE", "Profile"))
        )
        [lost] = plan.cannot_restore
        assert ("not_saved", 30) == (lost.kind, lost.rows)
        assert "saved 10 of 40 rows" in lost.reason
        assert 10 == apply_restore(conn, plan).inserted


class TestUpdates:
    def test_mass_update_is_reverted(self, conn: Conn, gameclub: dict[str, str]) -> None:
        """Every row of a mass UPDATE goes back to its earlier values."""
        conn.execute("UPDATE \"Profile\" SET bio = 'hacked', avatar_url = NULL")
        result = restore(conn, statement_id=last_statement(conn, "UPDATE", "Profile"))
        assert (0, 40) == (result.inserted, result.reverted)
        assert gameclub == checksums(conn)

    def test_row_updated_twice_then_deleted(self, conn: Conn, gameclub: dict[str, str]) -> None:
        """A window restores a row to what it was before its first change, not its last."""
        since = now(conn)
        conn.execute("UPDATE \"User\" SET email = 'a@example.com' WHERE username = 'player7'")
        conn.execute("UPDATE \"User\" SET email = 'b@example.com', is_admin = true "
                     "WHERE username = 'player7'")  # fmt: skip
        conn.execute("DELETE FROM \"User\" WHERE username = 'player7'")
        plan = plan_restore(conn, Selection(since=since))
        assert (1, 0) == (by_table(plan)["User"].insert, by_table(plan)["User"].revert)
        apply_restore(conn, plan)
        assert gameclub == checksums(conn)

    def test_update_of_a_key_is_reported(self, conn: Conn) -> None:
        """An UPDATE that changed the key cannot be matched back: the plan says so."""
        conn.execute("CREATE TABLE seat (id int PRIMARY KEY, holder text)")
        conn.execute("INSERT INTO seat VALUES (1, 'ann'), (2, 'bob')")
        since = now(conn)
        conn.execute("UPDATE seat SET id = 10, holder = 'eve' WHERE id = 1")
        conn.execute("UPDATE seat SET holder = 'eve' WHERE id = 2")
        plan = plan_restore(conn, Selection(since=since))
        assert 1 == by_table(plan)["seat"].revert
        [lost] = plan.cannot_restore
        assert ("key_changed", 1) == (lost.kind, lost.rows)
        assert [{"id": 1}] == [c.key for c in by_table(plan)["seat"].samples]


class TestConflicts:
    def test_row_created_again_is_skipped(self, conn: Conn, gameclub: dict[str, str]) -> None:
        """A key the app used again after the delete is a conflict, left as the app wrote it."""
        conn.execute("DELETE FROM \"Profile\" WHERE bio LIKE '%chess'")
        deleted = last_statement(conn, "DELETE", "Profile")
        conn.execute(
            'INSERT INTO "Profile" (user_id, bio) SELECT id, \'new me\' FROM "User" '
            "WHERE username = 'player10'"
        )
        plan = plan_restore(conn, Selection(statement_id=deleted))
        profile = by_table(plan)["Profile"]
        assert {"exists": 1, "changed": 0, "gone": 0} == profile.conflicts
        assert ["exists"] == [c.kind for c in profile.samples]
        result = apply_restore(conn, plan)
        assert 1 == result.tables[0].skipped
        bio = conn.execute(
            'SELECT bio FROM "Profile" JOIN "User" ON id = user_id WHERE username = \'player10\''
        ).fetchone()
        assert ("new me",) == bio

    def test_row_created_again_is_overwritten_on_request(
        self, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """--on-conflict overwrite writes the earlier values over the app's new row."""
        conn.execute("DELETE FROM \"Profile\" WHERE bio LIKE '%chess'")
        deleted = last_statement(conn, "DELETE", "Profile")
        conn.execute(
            'INSERT INTO "Profile" (user_id, bio) SELECT id, \'new me\' FROM "User" '
            "WHERE username = 'player10'"
        )
        result = restore(conn, "overwrite", statement_id=deleted)
        assert 1 == result.tables[0].overwritten
        assert gameclub == checksums(conn)

    @pytest.mark.parametrize("on_conflict", ON_CONFLICT)
    def test_value_changed_since(
        self, conn: Conn, gameclub: dict[str, str], on_conflict: Any
    ) -> None:
        """A row changed again after the UPDATE is skipped, or overwritten on request."""
        conn.execute("UPDATE \"Profile\" SET bio = 'hacked'")
        updated = last_statement(conn, "UPDATE", "Profile")
        conn.execute(
            "UPDATE \"Profile\" SET bio = 'fixed by hand' WHERE user_id = "
            "(SELECT id FROM \"User\" WHERE username = 'player9')"
        )
        plan = plan_restore(conn, Selection(statement_id=updated))
        assert (39, 1) == (plan.rows_to_revert, by_table(plan)["Profile"].conflicts["changed"])
        apply_restore(conn, plan, on_conflict)
        kept = conn.execute("SELECT count(*) FROM \"Profile\" WHERE bio = 'fixed by hand'")
        assert (1 if on_conflict == "skip" else 0,) == kept.fetchone()
        if on_conflict == "overwrite":
            assert gameclub == checksums(conn)

    def test_second_restore_changes_nothing(self, conn: Conn, gameclub: dict[str, str]) -> None:
        """Restoring again finds every row already as it was."""
        conn.execute('DELETE FROM "Game"')
        deleted = last_statement(conn, "DELETE", "Game")
        restore(conn, statement_id=deleted)
        plan = plan_restore(conn, Selection(statement_id=deleted))
        assert (0, 25) == (plan.rows_to_insert, by_table(plan)["Game"].unchanged)
        assert gameclub == checksums(conn)


class TestRefusals:
    def test_constraint_violation_rolls_everything_back(
        self, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """A row the table no longer accepts stops the restore; nothing is half-done."""
        conn.execute('DELETE FROM "User"')
        conn.execute(
            'ALTER TABLE "Game" ADD CONSTRAINT small_games CHECK (max_players < 4) NOT VALID'
        )
        wiped = checksums(conn)
        with pytest.raises(WhodunitError) as info:
            restore(conn, statement_id=last_statement(conn, "DELETE", "User"))
        message = str(info.value)
        assert message.startswith("restore rolled back, nothing was changed")
        assert 'public."Game"' in message
        assert "small_games" in message
        assert wiped == checksums(conn)
        assert (0,) == conn.execute(
            "SELECT count(*) FROM whodunit.statement WHERE actor_id = 'whodunit-restore'"
        ).fetchone()

    def test_missing_parent_says_what_to_include(
        self, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """Children restored without their parents fail on the foreign key, with the next step."""
        since = now(conn)
        conn.execute('DELETE FROM "User"')
        with pytest.raises(WhodunitError, match="a row it references is missing") as info:
            restore(conn, since=since, table="Profile")
        assert "Profile_user_id_fkey" in str(info.value)

    def test_rows_that_no_longer_fit_are_named(self, conn: Conn, gameclub: dict[str, str]) -> None:
        """A column narrowed since the delete is found by the dry run, with the table named."""
        conn.execute('DELETE FROM "Game" WHERE max_players > 4')
        deleted = last_statement(conn, "DELETE", "Game")
        conn.execute('ALTER TABLE "Game" ALTER COLUMN title TYPE varchar(4) USING left(title, 4)')
        with pytest.raises(
            WhodunitError, match=re.escape('rows saved for public."Game" no longer fit')
        ):
            plan_restore(conn, Selection(statement_id=deleted))

    def test_needs_a_role_that_reads_the_trail(self, app_dsn: str) -> None:
        """The application's role cannot read the trail, and is told whom to connect as."""
        with (
            psycopg.connect(app_dsn, autocommit=True) as app,
            pytest.raises(PrivilegeError, match="connect as a superuser"),
        ):
            plan_restore(app, Selection(statement_id=1))

    def test_unknown_statement(self, conn: Conn) -> None:
        """An id the trail does not have is named, with where to find one."""
        with pytest.raises(ConfigError, match="no statement 987654 in the trail"):
            plan_restore(conn, Selection(statement_id=987654))

    def test_statement_that_removed_nothing(self, conn: Conn, gameclub: dict[str, str]) -> None:
        """An INSERT has nothing to put back, and the message says what it is."""
        inserted = last_statement(conn, "INSERT", "Game")
        with pytest.raises(
            WhodunitError, match=re.escape(f'statement {inserted} is INSERT on public."Game"')
        ):
            plan_restore(conn, Selection(statement_id=inserted))

    def test_empty_window(self, conn: Conn, gameclub: dict[str, str]) -> None:
        """A window with nothing destructive in it is a clear "nothing to restore"."""
        with pytest.raises(WhodunitError, match="nothing to restore: no UPDATE, DELETE"):
            plan_restore(conn, Selection(since=now(conn)))

    @pytest.mark.parametrize(
        "selection",
        [{}, {"statement_id": 1, "txid": 2}, {"txid": 2, "until": datetime.now().astimezone()}],
    )
    def test_selection_names_one_thing(self, selection: dict[str, Any]) -> None:
        """Exactly one of statement, transaction or window; --until only with --since."""
        with pytest.raises(ConfigError):
            Selection(**selection)


class TestAuditAndGuards:
    def test_restore_is_audited_as_whodunit_restore(
        self, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """The restore's own INSERTs are in the trail under its actor and correlation id."""
        conn.execute('DELETE FROM "Game"')
        result = restore(conn, statement_id=last_statement(conn, "DELETE", "Game"))
        rows = conn.execute(
            "SELECT op, table_name, rows, actor_id, application_name, context ->> 'restore_of' "
            "FROM whodunit.statement WHERE correlation_id = %s ORDER BY table_name",
            (result.correlation_id,),
        ).fetchall()
        of = f"statement {last_statement(conn, 'DELETE', 'Game')}"
        assert [
            ("INSERT", "Game", 25, "whodunit-restore", "whodunit restore", of),
            ("INSERT", "GameRequest", 50, "whodunit-restore", "whodunit restore", of),
            ("INSERT", "ScheduledSession", 25, "whodunit-restore", "whodunit restore", of),
        ] == rows

    def test_guard_is_lifted_for_the_restore_only(
        self, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """A row-limit guard set after the incident does not block reverting it."""
        conn.execute("UPDATE \"Profile\" SET bio = 'hacked'")
        installer.set_guard(conn, '"Profile"', max_rows=5)
        result = restore(conn, statement_id=last_statement(conn, "UPDATE", "Profile"))
        assert gameclub == checksums(conn)
        assert any("guards lifted" in note and "public.Profile" in note for note in result.notes)
        with pytest.raises(psycopg.DatabaseError, match='guard "max_rows"'):
            conn.execute("UPDATE \"Profile\" SET bio = 'again'")


KITCHEN_SINK = """
CREATE TYPE mood AS ENUM ('calm', 'upset');
CREATE TABLE sink (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent   bigint REFERENCES sink (id),
    amount   numeric(20, 6),
    ratio    double precision,
    tags     text[],
    grid     int[],
    doc      jsonb,
    raw      json,
    at       timestamptz,
    day      date,
    span     interval,
    blob     bytea,
    uid      uuid,
    feeling  mood,
    doubled  numeric GENERATED ALWAYS AS (amount * 2) STORED
);
INSERT INTO sink (parent, amount, ratio, tags, grid, doc, raw, at, day, span, blob, uid, feeling)
VALUES (NULL, 12345678901234.123456, 0.1, ARRAY['a', 'b "c"', NULL], '{{1,2},{3,4}}',
        '{"z": 1, "a": [1, 2.50, null], "s": "é\\n"}', '{"b": 1,  "a": 2}',
        '2026-06-01 14:00:00.123456+05:30', '2026-02-28', '1 day 02:03:04.5', '\\x00ff',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'upset'),
       (1, -0.000001, 'NaN', '{}', NULL, '"text"', '[]', 'infinity', '-infinity', '-1 mon',
        '', NULL, NULL),
       (2, NULL, '-Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'calm');
-- rows that point at each other both ways
UPDATE sink SET parent = 3 WHERE id = 1;
CREATE TABLE pair (club int, member text, role text, PRIMARY KEY (club, member));
INSERT INTO pair VALUES (7, 'admin', 'owner'), (7, 'x', 'guest'), (8, 'admin', NULL);
CREATE TABLE loose (a int, b text);
INSERT INTO loose VALUES (1, 'x'), (1, 'x'), (2, NULL);
"""


class TestValues:
    def test_every_type_comes_back_exactly(self, conn: Conn) -> None:
        """Identity, generated, numeric, float, arrays, json, times, bytea, enum, composite keys."""
        conn.execute(KITCHEN_SINK)
        tables = ("sink", "pair", "loose")
        before = checksums(conn, tables)
        since = now(conn)
        conn.execute("SET TimeZone = 'America/St_Johns'")  # images carry a -02:30/-03:30 offset
        conn.execute("DELETE FROM sink")
        conn.execute("DELETE FROM pair")
        conn.execute("DELETE FROM loose")
        conn.execute("RESET TimeZone")
        restore(conn, since=since)
        assert before == checksums(conn, tables)

    def test_updates_without_a_key_are_reported(self, conn: Conn) -> None:
        """Rows of a table without a primary key go back; its updates cannot be matched."""
        conn.execute(KITCHEN_SINK)
        conn.execute("UPDATE loose SET b = 'y' WHERE a = 1")
        plan = plan_restore(conn, Selection(statement_id=last_statement(conn, "UPDATE", "loose")))
        [lost] = plan.cannot_restore
        assert ("no_key", 2) == (lost.kind, lost.rows)

    def test_tables_that_reference_each_other(self, conn: Conn) -> None:
        """A foreign-key cycle restores when its constraints are DEFERRABLE, with a note."""
        conn.execute(
            "CREATE TABLE team (id int PRIMARY KEY, captain int);"
            "CREATE TABLE player (id int PRIMARY KEY, team int REFERENCES team DEFERRABLE);"
            "ALTER TABLE team ADD CONSTRAINT team_captain FOREIGN KEY (captain) "
            "REFERENCES player DEFERRABLE"
        )
        with conn.transaction():
            conn.execute("SET CONSTRAINTS ALL DEFERRED")
            conn.execute("INSERT INTO team VALUES (1, 10); INSERT INTO player VALUES (10, 1)")
        before = checksums(conn, ("team", "player"))
        with conn.transaction():
            conn.execute("SET CONSTRAINTS ALL DEFERRED")
            conn.execute("DELETE FROM team; DELETE FROM player")
            txid = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert txid is not None
        result = restore(conn, txid=txid[0])
        assert before == checksums(conn, ("team", "player"))
        assert any("reference each other" in note for note in result.notes)


@pytest.fixture
def runner() -> CliRunner:
    """A click runner with a clean environment (no WHODUNIT_DSN of the developer's)."""
    return CliRunner(env={"WHODUNIT_DSN": None, "WHODUNIT_DATA_DIR": None})


class TestCommand:
    def test_help_has_examples(self, runner: CliRunner) -> None:
        """--help explains the command and shows examples."""
        result = runner.invoke(restore_command.restore, ["--help"])
        assert (0, True) == (result.exit_code, "Examples:" in result.output)

    def test_choices_match_the_library(self) -> None:
        """The CLI spells out --on-conflict's choices; they must be the library's."""
        assert ON_CONFLICT == restore_command.ON_CONFLICT

    def test_dry_run_then_apply(
        self, runner: CliRunner, dsn: str, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """The dry run prints the plan and changes nothing; --apply puts the rows back."""
        conn.execute("DELETE FROM \"User\" WHERE username = 'player3'")
        args = ["--statement", str(last_statement(conn, "DELETE", "User")), "--dsn", dsn]
        dry = runner.invoke(restore_command.restore, args)
        assert 0 == dry.exit_code, dry.output
        assert "Dry run" in dry.output
        assert 'public."User"' in dry.output
        assert gameclub != checksums(conn)
        done = runner.invoke(restore_command.restore, [*args, "--apply", "--json"])
        assert 0 == done.exit_code, done.output
        assert json.loads(done.output)["inserted"] > 1
        assert gameclub == checksums(conn)

    def test_json_plan(
        self, runner: CliRunner, dsn: str, conn: Conn, gameclub: dict[str, str]
    ) -> None:
        """--json prints the plan as data, per table."""
        since = now(conn).isoformat()
        conn.execute('UPDATE "Profile" SET bio = NULL')
        result = runner.invoke(
            restore_command.restore,
            ["--since", since, "--table", "Profile", "--json", "--dsn", dsn],
        )
        assert 0 == result.exit_code, result.output
        plan = json.loads(result.output)
        assert (40, ["UPDATE"]) == (plan["rows_to_revert"], [s["op"] for s in plan["statements"]])

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ([], "exactly one of --statement ID, --tx TXID or --since TIME"),
            (["--since", "yesterday"], "is not a time"),
            (["--statement", "987654"], "no statement 987654 in the trail"),
        ],
    )
    def test_bad_input_is_one_line(
        self, runner: CliRunner, dsn: str, args: list[str], message: str
    ) -> None:
        """Bad input exits 2 with what was wrong and what to do."""
        result = runner.invoke(restore_command.restore, [*args, "--dsn", dsn])
        assert 2 == result.exit_code
        assert message in result.output
