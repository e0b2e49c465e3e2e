"""The whodunit command line, through click's runner and as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from whodunit.cli import cli

Conn = psycopg.Connection[Any]


@pytest.fixture
def runner() -> CliRunner:
    """A click runner with a clean environment (no WHODUNIT_DSN of the developer's)."""
    return CliRunner(env={"WHODUNIT_DSN": None, "WHODUNIT_DATA_DIR": None})


class TestHelp:
    @pytest.mark.parametrize(
        "command",
        [
            [],
            ["db"],
            ["db", "start"],
            ["install"],
            ["uninstall"],
            ["status"],
            ["guard"],
            ["configure"],
            ["demo"],
        ],
    )
    def test_every_command_has_help_with_an_example(
        self, runner: CliRunner, command: list[str]
    ) -> None:
        """--help works everywhere and shows an example."""
        result = runner.invoke(cli, [*command, "--help"])
        assert 0 == result.exit_code
        assert "Example" in result.output


class TestDatabaseCommands:
    def test_install_status_guard_round_trip(self, runner: CliRunner, dsn: str, conn: Conn) -> None:
        """install, guard and status work together and speak JSON."""
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY)")
        result = runner.invoke(cli, ["install", "--dsn", dsn, "--json"])
        assert (0, ["accounts"]) == (result.exit_code, json.loads(result.output)["tables"])
        result = runner.invoke(
            cli, ["guard", "accounts", "--max-rows", "5", "--dsn", dsn, "--json"]
        )
        assert 0 == result.exit_code, result.output
        result = runner.invoke(cli, ["status", "--dsn", dsn, "--json"])
        report = json.loads(result.output)
        assert (0, True) == (result.exit_code, report["current"])
        assert {"max_rows": 5, "no_truncate": False, "no_drop": False} == report["tables"][0][
            "guard"
        ]

    def test_status_of_a_database_without_whodunit_exits_1(
        self, runner: CliRunner, pg_server: Any
    ) -> None:
        """status exits non-zero when the schema is missing, so scripts can test it."""
        result = runner.invoke(cli, ["status", "--dsn", pg_server.dsn])
        assert 1 == result.exit_code
        assert "not installed" in result.output

    def test_unreachable_database_exits_2_with_one_line(self, runner: CliRunner) -> None:
        """A bad DSN is one line on stderr and exit code 2, with the password masked."""
        result = runner.invoke(cli, ["status", "--dsn", "postgresql://u:hunter2@127.0.0.1:1/x"])
        assert 2 == result.exit_code
        assert "hunter2" not in result.output
        assert "cannot connect to postgresql://u:***@127.0.0.1:1/x" in result.output

    def test_bad_usage_exits_2(self, runner: CliRunner, dsn: str) -> None:
        """Contradicting flags are a usage error."""
        result = runner.invoke(cli, ["guard", "t", "--off", "--no-drop", "--dsn", dsn])
        assert 2 == result.exit_code

    def test_uninstall_needs_yes(self, runner: CliRunner, dsn: str) -> None:
        """uninstall changes nothing without --yes."""
        result = runner.invoke(cli, ["uninstall", "--dsn", dsn])
        assert 2 == result.exit_code
        assert "--yes" in result.output


@pytest.mark.slow
class TestEmbedded:
    def test_db_start_url_stop(self, tmp_path: Path) -> None:
        """db start prints the DSN last; db url finds it; db stop stops it (a real process)."""
        data = tmp_path / "pg"

        def whodunit(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "whodunit.cli", *args, "--data-dir", str(data)],
                capture_output=True, text=True, check=False, timeout=120,
            )  # fmt: skip

        started = whodunit("db", "start")
        assert 0 == started.returncode, started.stderr
        dsn = started.stdout.strip().splitlines()[-1]
        assert dsn == whodunit("db", "url").stdout.strip()
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert "stopped" == whodunit("db", "stop").stdout.strip()
        stopped = whodunit("db", "url")
        assert 2 == stopped.returncode
        assert "whodunit db start" in stopped.stderr

    def test_restart_remembers_the_binaries(self, tmp_path: Path) -> None:
        """A data directory made by PostgreSQL 15 restarts without naming its binaries again."""
        from whodunit.db.embedded import LocalCluster

        bin_dir = Path("/usr/lib/postgresql/15/bin")
        if not (bin_dir / "postgres").exists():
            pytest.fail("PostgreSQL 15 is not installed: run 'make test'")
        LocalCluster(tmp_path / "pg15", bin_dir=bin_dir).start()
        again = LocalCluster(tmp_path / "pg15")
        assert again.running
        assert "15" == again.version()
        assert again.stop()
