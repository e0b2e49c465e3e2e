"""Settings: file, environment and their validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from whodunit.cli import cli
from whodunit.config import Guard, load
from whodunit.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    """Write a whodunit.toml and return its path."""
    path = tmp_path / "whodunit.toml"
    path.write_text(text)
    return path


class TestLoad:
    def test_defaults_without_file(self) -> None:
        """No file and no environment give the documented defaults."""
        settings = load(None, environ={})
        assert (("public",), {}, {}) == (
            settings.install.schemas,
            settings.capture,
            settings.guards,
        )

    def test_file_and_environment(self, tmp_path: Path) -> None:
        """The environment overrides the file, key by key."""
        path = write(
            tmp_path,
            '[install]\nschemas = ["app"]\nexclude = ["sessions"]\n'
            "[capture]\nnotify_min_rows = 50\n"
            '[guards."public.users"]\nmax_rows = 100\nno_drop = true\n',
        )
        settings = load(path, environ={"WHODUNIT_CAPTURE_NOTIFY_MIN_ROWS": "10"})
        assert ("app",) == settings.install.schemas
        assert {"notify_min_rows": 10} == settings.capture
        assert {"public.users": Guard(max_rows=100, no_drop=True)} == settings.guards

    def test_dsn_is_never_printed(self) -> None:
        """The repr of the settings hides the DSN (it may hold a password)."""
        settings = load(None, environ={"WHODUNIT_DSN": "postgresql://u:topsecret@h/db"})
        assert "topsecret" not in repr(settings)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("[capture]\nnotify_min_rows = -1\n", "capture.notify_min_rows .* got -1"),
            ("[capture]\nnotify_rows = 1\n", "unknown setting capture.notify_rows"),
            ("[guards.t]\nmax_rows = 'many'\n", "guards.t.max_rows .* got 'many'"),
            ("[guards.t]\nno_drop = 'yes'\n", "guards.t.no_drop .* must be a bool"),
            ("[install]\nschemas = []\n", "install.schemas .* is empty"),
            ("[detector]\n", "unknown setting detector"),
            ("not toml = = =", "is not valid TOML"),
        ],
    )
    def test_bad_settings_are_clear_errors(self, tmp_path: Path, text: str, message: str) -> None:
        """Each mistake names the setting, the value and the file."""
        with pytest.raises(ConfigError, match=message):
            load(write(tmp_path, text), environ={})

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config path that does not exist is an error, not silently ignored."""
        with pytest.raises(ConfigError, match="does not exist"):
            load(tmp_path / "nope.toml", environ={})


class TestInstallWithConfig:
    def test_install_applies_guards_and_limits(
        self, tmp_path: Path, dsn: str, conn: psycopg.Connection[Any]
    ) -> None:
        """whodunit --config F install sets the file's guards and capture limits."""
        conn.execute("CREATE TABLE users (id int PRIMARY KEY)")
        path = write(
            tmp_path,
            '[capture]\nsnapshot_max_rows = 10\n[guards."public.users"]\nno_truncate = true\n',
        )
        result = CliRunner().invoke(cli, ["--config", str(path), "install", "--dsn", dsn])
        assert 0 == result.exit_code, result.output
        with pytest.raises(psycopg.DatabaseError, match="no_truncate"):
            conn.execute("TRUNCATE users")
        value = conn.execute("SELECT value FROM whodunit.setting WHERE key = 'snapshot_max_rows'")
        assert ("10",) == value.fetchone()

    def test_broken_config_exits_2(self, tmp_path: Path, dsn: str) -> None:
        """A bad settings file stops the command before it touches the database."""
        path = write(tmp_path, "[capture]\nquery_max_bytes = -5\n")
        result = CliRunner().invoke(cli, ["--config", str(path), "install", "--dsn", dsn])
        assert 2 == result.exit_code
        assert "capture.query_max_bytes" in result.output


class TestEnvironment:
    def test_errors_name_the_environment(self) -> None:
        """A bad WHODUNIT_* variable is reported as coming from the environment."""
        with pytest.raises(ConfigError, match=r"unknown setting capture\.nope in the environment"):
            load(None, environ={"WHODUNIT_CAPTURE_NOPE": "3"})

    def test_install_schemas_from_environment(self) -> None:
        """WHODUNIT_INSTALL_SCHEMAS is a comma-separated list."""
        settings = load(None, environ={"WHODUNIT_INSTALL_SCHEMAS": "app, billing"})
        assert ("app", "billing") == settings.install.schemas
