"""
The investigation commands through click: answers first, JSON for scripts, HTML and
Markdown files, and clear messages for bad input.

They read the scenarios of `tests.test_investigate`, played once for this module.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import orjson
import psycopg
import pytest
from click.testing import CliRunner, Result

from tests.fixtures.gameclub import TABLES
from tests.fixtures.postgres import Server
from tests.test_investigate import EVIL, Scenes, log, play_scenes, write_logs
from whodunit._clikit import CLIState
from whodunit.investigate.commands import COMMANDS, Duration

Conn = psycopg.Connection[Any]
Run = Callable[..., Result]


@click.group()
@click.pass_context
def whodunit(ctx: click.Context) -> None:
    """The commands under test, grouped as whodunit.cli groups them."""
    ctx.obj = CLIState(debug=False, config=None)


for command in COMMANDS:
    whodunit.add_command(command)


def invoker(dsn: str) -> Run:
    """Return a function running a whodunit command line against *dsn* (wide output)."""
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        env = {"WHODUNIT_DSN": dsn, "COLUMNS": "240"}
        return runner.invoke(whodunit, [*args], env=env, catch_exceptions=False)

    return invoke


#: For usage errors, found before any connection is made.
no_db = invoker("postgresql:///no-such-database?host=/nonexistent")


@pytest.fixture(scope="module")
def scenes(pg_server: Server) -> Iterator[Scenes]:
    """Every scenario, played once for this module's tests (which only read)."""
    yield from play_scenes(pg_server)


@pytest.fixture
def run(scenes: Scenes) -> Run:
    """Run a whodunit command line against the scenarios' database."""
    return invoker(scenes.club.dsn)


def flat(text: str) -> str:
    """The output with line breaks and repeated spaces folded, for phrase matching."""
    return re.sub(r"\s+", " ", text)


class TestInvestigateCommand:
    def test_answer_first_in_the_terminal(self, scenes: Scenes, run: Run) -> None:
        """The first line names player1, the table and the request; then the evidence."""
        result = run("investigate", "--since", "1h")
        assert 0 == result.exit_code, result.output
        users = scenes.lost["app"]["User"]
        assert result.output.startswith(
            f'player1 (actor id u-1) deleted {users} rows from public."User"'
        )
        text = flat(result.output)
        for expected in ("Who ", "When ", "What ", "How ", "Why ", "Prevent ", "req-wipe-1"):
            assert expected in text
        assert "window " in text
        assert "7 destructive transaction(s)" in text

    def test_json_has_stable_keys(self, scenes: Scenes, run: Run) -> None:
        """--json prints the report's fields, in order, for scripts."""
        dev = scenes.club.dev_role
        result = run("investigate", "--json", "--actor", dev, "--table", "FriendRequest")
        assert 0 == result.exit_code, result.output
        data = orjson.loads(result.output)
        assert [
            "window",
            "answer",
            "incidents",
            "total",
            "filters",
            "generated_at",
            "log_source",
            "log_lines_skipped",
        ] == list(data)
        incident = data["incidents"][0]
        assert [
            "rank",
            "txid",
            "summary",
            "first_at",
            "last_at",
            "duration_s",
            "rows_lost",
            "rows_overwritten",
            "tables",
            "who",
            "how",
            "statements",
            "why",
            "prevention",
        ] == list(incident)
        assert (dev, True) == (incident["who"]["db_current_user"], incident["who"]["inferred"])
        assert {"table": 'public."FriendRequest"', "actor": dev} == data["filters"]

    def test_html_is_self_contained_and_escaped(self, run: Run, tmp_path: Path) -> None:
        """Markup in a deleted row and in an actor's name is escaped; nothing external."""
        html, markdown = tmp_path / "report.html", tmp_path / "report.md"
        result = run("investigate", "--html", str(html), "--markdown", str(markdown))
        assert 0 == result.exit_code, result.output
        page = html.read_text()
        assert EVIL not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt; (actor id u-6)" in page
        assert "&#34;username&#34;: &#34;&lt;script&gt;" in page
        assert not re.search(r"""(src|href)=["']?https?:""", page)
        assert "<style>" in page
        assert "<code>whodunit guard " in page
        text = markdown.read_text()
        assert text.startswith("# Incident report\n\n**player1 (actor id u-1) deleted")
        prose = re.sub(r"^(`{3,})\w*\n.*?^\1$", "", text, flags=re.S | re.M)
        assert "<script>" not in prose
        assert "\\<script\\>alert(1)\\</script\\> (actor id u-6)" in prose
        assert "add `whodunit guard 'public.\"User\"' --max-rows 100`" in prose
        assert f"report written to {html}" in flat(result.output)

    def test_nothing_destructive_exits_0(self, run: Run) -> None:
        """An empty window is an answer, not an error."""
        result = run("investigate", "--from", "2020-01-01T00:00Z", "--to", "2020-01-02T00:00Z")
        assert 0 == result.exit_code
        assert result.output.startswith(
            "nothing destructive found between 2020-01-01 00:00:00 UTC and 2020-01-02 00:00:00 UTC"
        )

    def test_logs_feed_the_why(self, scenes: Scenes, run: Run, tmp_path: Path) -> None:
        """--logs adds the request's log lines; malformed lines are counted on stderr."""
        write_logs(
            tmp_path / "app.jsonl",
            [log(scenes.wiped_at, "purging users", correlation_id="req-wipe-1"), "oops"],
        )
        result = run("investigate", "--logs", str(tmp_path / "*.jsonl"), "--json")
        why = orjson.loads(result.stdout)["incidents"][0]["why"]
        assert ["purging users"] == [line["message"] for line in why["log_lines"]]
        assert "skipped 1 log line(s)" in result.stderr

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--since", "1x"], "'1x' is not a duration"),
            (["--since", "0h"], "'0h' is not a duration"),
            (["--from", "yesterday"], "'yesterday' is not a time"),
            (["--since", "1h", "--from", "2026-01-01"], "not both"),
            (["--logs", "x", "--loki-url", "http://loki"], "--logs or --loki-url, not both"),
        ],
    )
    def test_bad_options(self, args: list[str], message: str) -> None:
        """Bad durations, times and combinations exit 2 with what to type instead."""
        result = no_db("investigate", *args)
        assert 2 == result.exit_code
        assert message in result.output

    def test_an_old_trail_asks_for_install(self, conn: Conn, dsn: str) -> None:
        """A schema below v3 is refused with the command that upgrades it."""
        conn.execute("UPDATE whodunit.meta SET value = '1' WHERE key = 'schema_version'")
        run = invoker(dsn)
        for args in (["investigate"], ["who-deleted", "User", "1"], ["trace", "x"]):
            result = run(*args)
            assert 1 == result.exit_code
            assert "run 'whodunit install' to upgrade" in flat(result.stderr)


class TestWhoDeletedCommand:
    def test_answers_in_one_line(self, scenes: Scenes, run: Run) -> None:
        """The first line says who removed the row, when and through which request."""
        uid = scenes.keys["player33"]
        result = run("who-deleted", "User", uid)
        assert 0 == result.exit_code, result.output
        assert flat(result.output).startswith(
            f'public."User" {uid} was removed by player1 (actor id u-1) at '
        )
        assert "via DELETE /admin/users (correlation id req-wipe-1)." in flat(result.output)
        assert '"username": "player33"' in result.output

    def test_json(self, scenes: Scenes, run: Run) -> None:
        """--json has the answer and the change with its images."""
        uid = scenes.keys["player33"]
        data = orjson.loads(run("who-deleted", "Profile", uid, "--json").output)
        assert (True, 'public."Profile"') == (data["found"], data["table"])
        assert uid == data["change"]["old_row"]["user_id"]
        assert "u-1" == data["change"]["who"]["actor_id"]
        assert data["answer"].startswith(f'public."Profile" {uid} was removed by player1')

    def test_unknown_pk_exits_1(self, run: Run) -> None:
        """A key never recorded is a clear 'no change recorded' answer, exit 1."""
        result = run("who-deleted", "User", "00000000-0000-0000-0000-000000000000")
        assert 1 == result.exit_code
        assert flat(result.output).startswith(
            'no change recorded for public."User" 00000000-0000-0000-0000-000000000000'
        )

    def test_a_row_that_was_never_deleted(self, scenes: Scenes, run: Run) -> None:
        """A row with changes but no deletion points at its history."""
        uid = scenes.keys["player2"]
        result = run("who-deleted", "User", uid)
        assert 1 == result.exit_code
        text = flat(result.output)
        assert f'no deletion recorded for public."User" {uid}: 1 change(s) recorded' in text
        assert f'whodunit history public."User" {uid}' in text

    def test_unknown_table_and_bad_key(self, run: Run) -> None:
        """The table is named with 'whodunit status'; a bad key says which key it is."""
        for args in (["who-deleted", "Users", "1"], ["investigate", "--table", "Users"]):
            result = run(*args)
            assert 2 == result.exit_code
            assert "no audited table 'Users'" in flat(result.stderr)
            assert "whodunit status" in flat(result.stderr)
        result = run("who-deleted", "User", "42")
        assert 2 == result.exit_code
        assert "'42' is not a key of public.\"User\" (id)" in flat(result.stderr)


class TestHistoryCommand:
    def test_lists_the_changes(self, scenes: Scenes, run: Run) -> None:
        """INSERT, UPDATE with what changed, DELETE."""
        uid = scenes.keys["player99"]
        result = run("history", '"User"', uid)
        assert 0 == result.exit_code, result.output
        text = flat(result.output)
        assert f'public."User" {uid}: 3 change(s)' in text
        assert 'email: "a@example.com" → "b@example.com"' in text
        data = orjson.loads(run("history", "User", uid, "--json").output)
        assert ["INSERT", "UPDATE", "DELETE"] == [c["op"] for c in data["changes"]]

    def test_unknown_pk_exits_1(self, run: Run) -> None:
        """Nothing recorded for the key: exit 1 with the answer."""
        result = run("history", "Game", "00000000-0000-0000-0000-000000000000", "--since", "1h")
        assert 1 == result.exit_code
        assert 'no change recorded for public."Game"' in flat(result.output)


class TestTimelineAndTrace:
    def test_timeline_by_actor_and_role(self, scenes: Scenes, run: Run) -> None:
        """--actor lists the app user's events and changes; --db-user the developer's."""
        result = run("timeline", "--actor", "player1")
        assert 0 == result.exit_code, result.output
        assert f"actor player1: {len(TABLES) + 3} entries" in result.output
        data = orjson.loads(run("timeline", "--db-user", scenes.club.dev_role, "--json").output)
        assert 'public."FriendRequest"' == data["events"][0]["target"]
        assert data["events"][0]["who"]["inferred"]

    def test_timeline_needs_a_filter(self) -> None:
        """Without a filter it says which to give."""
        result = no_db("timeline")
        assert 2 == result.exit_code
        assert "give --actor, --db-user, --client-addr or --correlation-id" in result.output

    def test_trace_merges_logs(self, scenes: Scenes, run: Run, tmp_path: Path) -> None:
        """Log lines, the app event and the DB changes of one correlation id, in order."""
        start = scenes.wiped_at - timedelta(seconds=5)
        write_logs(tmp_path / "app.jsonl", [log(start, "start", correlation_id="req-wipe-1")])
        result = run("trace", "req-wipe-1", "--logs", str(tmp_path / "*.jsonl"), "--json")
        assert 0 == result.exit_code, result.output
        sources = [e["source"] for e in orjson.loads(result.output)["events"]]
        assert ["log", "app_event"] + ["statement"] * len(TABLES) == sources
        text = run("trace", "req-wipe-1").output
        assert f"correlation id req-wipe-1: {len(TABLES) + 1} entries" in text

    def test_trace_of_nothing_exits_1(self, run: Run) -> None:
        """An unknown correlation id says so."""
        result = run("trace", "req-none")
        assert 1 == result.exit_code
        assert "nothing recorded for correlation id req-none" in result.output


class TestDuration:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("30m", timedelta(minutes=30)), ("1h", timedelta(hours=1)), ("7d", timedelta(days=7))],
    )
    def test_units(self, text: str, expected: timedelta) -> None:
        """m, h and d read as minutes, hours and days."""
        assert expected == Duration().convert(text, None, None)


def test_every_command_has_examples() -> None:
    """Each command's help ends with an Examples block, and each offers --json and --dsn."""
    for command in COMMANDS:
        assert "Examples:" in (command.help or ""), command.name
        names = {opt for param in command.params for opt in param.opts}
        assert {"--json", "--dsn"} <= names, command.name


def test_the_commands_import_little() -> None:
    """Loading the commands loads neither the report, the renderers, httpx, jinja2 nor psycopg."""
    code = (
        "import sys, whodunit.investigate.commands; "
        "print(sorted(m for m in ('httpx', 'jinja2', 'whodunit.investigate.report', "
        "'whodunit.investigate.render', 'psycopg') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "[]" == out.stdout.strip()
