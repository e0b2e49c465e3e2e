"""whodunit deploy: settings, SCRAM verifiers, atomic rendering, checks and the commands."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from whodunit.deploy import COMPONENTS, registry
from whodunit.deploy.check import Check, CheckFailed, run_checks
from whodunit.deploy.commands import deploy
from whodunit.deploy.pgbouncer import (
    PgBouncerSettings,
    check_userlist,
    parse_ini,
    parse_userlist,
)
from whodunit.deploy.render import Component, RenderedFile, render
from whodunit.deploy.scram import make_verifier, parse_verifier, saslprep
from whodunit.deploy.settings import DeploySettings, Secret, load, setting
from whodunit.errors import ConfigError

DOCS = Path(__file__).parent.parent / "docs" / "deploy.md"
PASSWORDS = {
    "WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD": "app-Plaintext-7f3a",
    "WHODUNIT_DEPLOY_PGBOUNCER_ADMIN_PASSWORD": "admin-Plaintext-91c2",
    "WHODUNIT_DEPLOY_PGBOUNCER_STATS_PASSWORD": "stats-Plaintext-44be",
}


def settings(environ: dict[str, str] | None = None, path: Path | None = None) -> DeploySettings:
    """Deploy settings from *path* and *environ* only (never the developer's environment)."""
    return load(registry(), path, environ=PASSWORDS if environ is None else environ)


def toml(tmp_path: Path, text: str) -> Path:
    """Write a whodunit.toml and return its path."""
    path = tmp_path / "whodunit.toml"
    path.write_text(text)
    return path


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under *directory*, by relative path."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


class TestScram:
    def test_rfc_7677_example(self) -> None:
        """The verifier of the RFC's password checks the RFC's client proof and signs as it does."""
        salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
        verifier = make_verifier("pencil", salt=salt, iterations=4096)
        nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        auth = (
            f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
            f"c=biws,r={nonce}"
        ).encode()
        proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        signature = hmac.digest(verifier.stored_key, auth, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        assert verifier.stored_key == hashlib.sha256(client_key).digest()
        assert (
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
            == base64.b64encode(hmac.digest(verifier.server_key, auth, "sha256")).decode()
        )

    @pytest.mark.parametrize(
        "password",
        ["correct horse battery", "pässwörd", "I\u00adX", "\u2168", "a\u00a0b", "tab\there"],
    )
    def test_same_verifier_as_postgresql(
        self, conn: psycopg.Connection[Any], password: str
    ) -> None:
        """With PostgreSQL's salt, our verifier is the one PostgreSQL stored (SASLprep included)."""
        conn.execute("SET password_encryption = 'scram-sha-256'")
        role = "whodunit_scram_probe"
        conn.execute(
            sql.SQL("CREATE ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        try:
            row = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
            ).fetchone()
        finally:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        assert row is not None
        stored = parse_verifier(row[0])
        assert stored is not None
        ours = make_verifier(password, salt=stored.salt, iterations=stored.iterations)
        assert row[0] == str(ours)

    def test_saslprep_maps_and_keeps(self) -> None:
        """SASLprep maps what RFC 4013 maps, and leaves a password it would reject alone."""
        assert ("IX", "a b", "tab\there") == (
            saslprep("I\u00adX"),
            saslprep("a\u00a0b"),
            saslprep("tab\there"),
        )

    def test_verifier_round_trip(self) -> None:
        """A verifier reads back from its text and knows its own password only."""
        verifier = make_verifier("s3cret")
        again = parse_verifier(str(verifier))
        assert (verifier, True, False) == (again, verifier.matches("s3cret"), verifier.matches("x"))

    @pytest.mark.parametrize(
        "text", ["s3cret", "md5" + "0" * 32, "SCRAM-SHA-256$0:c2FsdA==$YQ==:Yg==", ""]
    )
    def test_anything_else_is_not_a_verifier(self, text: str) -> None:
        """Plaintext, md5 hashes and malformed verifiers are refused."""
        assert parse_verifier(text) is None


class TestSettings:
    def test_defaults(self) -> None:
        """Without a file, the defaults: 1200 clients on a pool of 25 plus 5, on loopback."""
        pgb = settings().sections["pgbouncer"]
        assert ("127.0.0.1", "transaction", 1200, 25, 5, 30) == (
            pgb.listen_addr,
            pgb.pool_mode,
            pgb.max_client_conn,
            pgb.default_pool_size,
            pgb.reserve_pool_size,
            pgb.server_connections,
        )

    def test_environment_overrides_the_file_key_by_key(self, tmp_path: Path) -> None:
        """WHODUNIT_DEPLOY_PGBOUNCER_<KEY> wins over [deploy.pgbouncer]; other keys stay."""
        path = toml(
            tmp_path,
            'dsn = "ignored here"\n[deploy]\nout = "rendered"\n'
            "[deploy.pgbouncer]\ndefault_pool_size = 20\nlisten_port = 7000\n",
        )
        loaded = settings({**PASSWORDS, "WHODUNIT_DEPLOY_PGBOUNCER_DEFAULT_POOL_SIZE": "22"}, path)
        pgb = loaded.sections["pgbouncer"]
        assert (Path("rendered"), 22, 7000) == (
            loaded.out,
            pgb.default_pool_size,
            pgb.listen_port,
        )

    @pytest.mark.parametrize(
        ("text", "environ", "message"),
        [
            ("[deploy.pgbouncer]\nbogus = 1\n", {}, "unknown setting deploy.pgbouncer.bogus"),
            ("[deploy]\nbogus = 1\n", {}, "unknown setting deploy.bogus"),
            ("", {"WHODUNIT_DEPLOY_PGBOUNCER_BOGUS": "1"}, "WHODUNIT_DEPLOY_PGBOUNCER_BOGUS"),
            ("", {"WHODUNIT_DEPLOY_NOPE": "1"}, "unknown setting WHODUNIT_DEPLOY_NOPE"),
            (
                "[deploy.pgbouncer]\ndefault_pool_size = 0\n",
                {},
                "deploy.pgbouncer.default_pool_size in ",
            ),
            (
                "",
                {"WHODUNIT_DEPLOY_PGBOUNCER_DEFAULT_POOL_SIZE": "0"},
                "WHODUNIT_DEPLOY_PGBOUNCER_DEFAULT_POOL_SIZE must be a whole number from 1",
            ),
            (
                "[deploy.pgbouncer]\nmax_client_conn = 20\n",
                {},
                "default_pool_size (25) + reserve_pool_size (5) must not exceed "
                "deploy.pgbouncer.max_client_conn (20)",
            ),
            (
                "[deploy.pgbouncer]\ndefault_pool_size = '25'\n",
                {},
                "deploy.pgbouncer.default_pool_size in ",
            ),
            (
                "",
                {"WHODUNIT_DEPLOY_PGBOUNCER_LISTEN_PORT": "six"},
                "WHODUNIT_DEPLOY_PGBOUNCER_LISTEN_PORT must be a whole number",
            ),
            (
                "[deploy.pgbouncer]\npool_mode = 'statement'\n",
                {},
                "deploy.pgbouncer.pool_mode in ",
            ),
            (
                "[deploy.pgbouncer]\npassword = 'x'\n",
                {},
                "deploy.pgbouncer.password in ",
            ),
            ("[deploy.pgbouncer]\nuser = 'a b'\n", {}, "deploy.pgbouncer.user must be a plain"),
            ("[deploy.pgbouncer]\nadmin_user = 'app'\n", {}, "must differ"),
            ("[deploy]\ncomponents = ['pgbouncer', 'nginx']\n", {}, "deploy.components"),
            ("[deploy]\npgbouncer = 3\n", {}, "[deploy.pgbouncer]"),
        ],
    )
    def test_bad_settings_name_the_setting(
        self, tmp_path: Path, text: str, environ: dict[str, str], message: str
    ) -> None:
        """A bad key, type, range or combination is a ConfigError naming the setting."""
        with pytest.raises(ConfigError) as caught:
            settings({**PASSWORDS, **environ}, toml(tmp_path, text))
        assert message in str(caught.value)

    def test_secrets_from_files(self, tmp_path: Path) -> None:
        """A secret comes from its _FILE variable or from <key>_file beside the settings file."""
        (tmp_path / "app.pw").write_text("from-setting-file\n")
        (tmp_path / "admin.pw").write_text("from-env-file\r\n")
        path = toml(tmp_path, '[deploy.pgbouncer]\npassword_file = "app.pw"\n')
        pgb = settings(
            {
                "WHODUNIT_DEPLOY_PGBOUNCER_ADMIN_PASSWORD_FILE": str(tmp_path / "admin.pw"),
                "WHODUNIT_DEPLOY_PGBOUNCER_STATS_PASSWORD": "from-env",
            },
            path,
        ).sections["pgbouncer"]
        assert ("from-setting-file", "from-env-file", "from-env") == (
            pgb.password.value,
            pgb.admin_password.value,
            pgb.stats_password.value,
        )
        assert "from-setting-file" not in repr(pgb) + str(pgb.password)

    @pytest.mark.parametrize(
        ("environ", "message"),
        [
            (
                {
                    "WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD": "a",
                    "WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD_FILE": "/nonexistent",
                },
                "keep one",
            ),
            ({"WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD_FILE": "/nonexistent"}, "/nonexistent"),
            ({"WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD": ""}, "is empty"),
        ],
    )
    def test_bad_secrets(self, environ: dict[str, str], message: str) -> None:
        """Two sources, a missing file or an empty value: an error naming the variable."""
        with pytest.raises(ConfigError, match="WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD") as caught:
            settings(environ)
        assert message in str(caught.value)

    def test_lists_and_switches(self, tmp_path: Path) -> None:
        """A component's list and boolean settings read from the file and the environment."""

        @dataclass(frozen=True)
        class Extra:
            names: tuple[str, ...] = setting(("a",), "A list.")
            enabled: bool = setting(False, "A switch.")

        path = toml(tmp_path, '[deploy.extra]\nnames = ["x", "y"]\n')
        extra = load(
            {**registry(), "extra": Extra},
            path,
            environ={**PASSWORDS, "WHODUNIT_DEPLOY_EXTRA_ENABLED": "yes"},
        ).sections["extra"]
        assert (("x", "y"), True) == (extra.names, extra.enabled)
        environ = {
            **PASSWORDS,
            "WHODUNIT_DEPLOY_EXTRA_NAMES": "p, q",
            "WHODUNIT_DEPLOY_EXTRA_ENABLED": "0",
        }
        extra = load({**registry(), "extra": Extra}, None, environ=environ).sections["extra"]
        assert (("p", "q"), False) == (extra.names, extra.enabled)
        with pytest.raises(
            ConfigError, match="WHODUNIT_DEPLOY_EXTRA_ENABLED must be true or false"
        ):
            load({"extra": Extra}, None, environ={"WHODUNIT_DEPLOY_EXTRA_ENABLED": "maybe"})
        with pytest.raises(ConfigError, match=r"deploy\.extra\.names in .* list of strings"):
            load({"extra": Extra}, toml(tmp_path, "[deploy.extra]\nnames = 3\n"), environ={})

    def test_every_setting_is_documented(self) -> None:
        """docs/deploy.md lists every [deploy.pgbouncer] key."""
        text = DOCS.read_text()
        missing = [f.name for f in fields(PgBouncerSettings) if f"`{f.name}" not in text]
        assert [] == missing


class TestRender:
    def test_renders_verifiers_not_passwords(self, tmp_path: Path) -> None:
        """No rendered file holds a plaintext password; each verifier matches its password."""
        out = tmp_path / "out"
        render(COMPONENTS, settings(), out)
        files = tree(out)
        for password in PASSWORDS.values():
            assert [] == [name for name, data in files.items() if password.encode() in data]
        users = parse_userlist((out / "pgbouncer/userlist.txt").read_text())
        verifier = parse_verifier(users["app"])
        assert verifier is not None
        assert verifier.matches(PASSWORDS["WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD"])
        assert str(verifier) in (out / "pgbouncer/server_role.sql").read_text()

    def test_modes_and_manifest(self, tmp_path: Path) -> None:
        """Secrets are 0600 in a 0700 directory, the rest 0644; the manifest lists every file."""
        out = tmp_path / "out"
        render(COMPONENTS, settings({}), out, example=True)
        modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in sorted(out.rglob("*"))}
        assert {
            "pgbouncer": 0o755,
            "pgbouncer/pgbouncer.ini": 0o644,
            "pgbouncer/server_role.sql": 0o600,
            "pgbouncer/systemd-limits.conf": 0o644,
            "pgbouncer/userlist.txt": 0o600,
            "secrets": 0o700,
            "secrets/pgbouncer_admin_password": 0o600,
            "secrets/pgbouncer_password": 0o600,
            "secrets/pgbouncer_stats_password": 0o600,
            "whodunit-deploy.json": 0o644,
        } == modes
        manifest = json.loads((out / "whodunit-deploy.json").read_text())
        files = sorted(set(modes) - {"pgbouncer", "secrets", "whodunit-deploy.json"})
        assert (["pgbouncer"], files) == (manifest["components"], manifest["files"])

    def test_example_secrets_stay_out_of_the_configs(self, tmp_path: Path) -> None:
        """Generated passwords live only under secrets/, and a re-render keeps them."""
        out = tmp_path / "out"
        render(COMPONENTS, settings({}), out, example=True)
        first = tree(out)
        generated = [data.strip() for name, data in first.items() if name.startswith("secrets/")]
        assert 3 == len(set(generated))
        for name, data in first.items():
            if not name.startswith("secrets/"):
                assert not any(password in data for password in generated), name
        render(COMPONENTS, settings({}), out, example=True)
        assert first == tree(out)

    def test_rerender_is_stable_until_the_password_changes(self, tmp_path: Path) -> None:
        """The same settings give the same files; a new password gives a new verifier."""
        out = tmp_path / "out"
        render(COMPONENTS, settings(), out)
        first = tree(out)
        render(COMPONENTS, settings(), out)
        assert first == tree(out)
        render(
            COMPONENTS, settings({**PASSWORDS, "WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD": "new"}), out
        )
        users = parse_userlist((out / "pgbouncer/userlist.txt").read_text())
        old = parse_userlist(first["pgbouncer/userlist.txt"].decode())
        assert (True, False) == (
            users["pgbouncer_admin"] == old["pgbouncer_admin"],
            users["app"] == old["app"],
        )

    def test_missing_secret_writes_nothing(self, tmp_path: Path) -> None:
        """Without the app password, the error names the setting and --out is not created."""
        out = tmp_path / "out"
        environ = {k: v for k, v in PASSWORDS.items() if not k.endswith("_PGBOUNCER_PASSWORD")}
        with pytest.raises(ConfigError, match=r"deploy\.pgbouncer\.password is not set"):
            render(COMPONENTS, settings(environ), out)
        assert [] == list(tmp_path.iterdir())

    def test_failure_keeps_the_previous_render(self, tmp_path: Path) -> None:
        """A render that fails halfway leaves the previous one whole, and no temporary files."""
        out = tmp_path / "out"
        render(COMPONENTS, settings(), out)
        before = tree(out)

        def broken(_settings: Any, _previous: Any) -> list[RenderedFile]:
            return [RenderedFile("ok.txt", "fine\n"), RenderedFile("../escape.txt", "no\n")]

        component = Component("broken", "fails while writing", PgBouncerSettings, broken)
        loaded = settings()
        loaded = DeploySettings(
            out,
            ("pgbouncer", "broken"),
            {**loaded.sections, "broken": loaded.sections["pgbouncer"]},
        )
        with pytest.raises(ValueError, match="inside --out"):
            render([*COMPONENTS, component], loaded, out)
        assert (before, ["out"]) == (tree(out), sorted(p.name for p in tmp_path.iterdir()))

    def test_refuses_a_directory_it_did_not_write(self, tmp_path: Path) -> None:
        """A non-empty --out without the manifest is left alone."""
        out = tmp_path / "out"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        with pytest.raises(ConfigError, match="not empty"):
            render(COMPONENTS, settings(), out)
        assert {"notes.txt": b"mine"} == tree(out)

    def test_ini_has_comments_on_their_own_lines(self, tmp_path: Path) -> None:
        """pgbouncer.ini parses as pgbouncer reads it: no value carries a comment."""
        out = tmp_path / "out"
        render(COMPONENTS, settings(), out)
        ini = parse_ini((out / "pgbouncer/pgbouncer.ini").read_text())
        assert ("transaction", "1", "30", "127.0.0.1") == (
            ini["pgbouncer"]["pool_mode"],
            ini["pgbouncer"]["application_name_add_host"],
            ini["pgbouncer"]["max_db_connections"],
            ini["pgbouncer"]["listen_addr"],
        )
        with pytest.raises(CheckFailed, match="no inline comments"):
            parse_ini("[pgbouncer]\nlisten_port = 6432 ; the port\n")


class TestCheck:
    def test_static_checks_catch_plaintext_and_open_modes(self, tmp_path: Path) -> None:
        """A plaintext userlist entry or a world-readable userlist fails the check."""
        out = tmp_path / "out"
        render(COMPONENTS, settings(), out)
        userlist = out / "pgbouncer/userlist.txt"
        assert "3 SCRAM-SHA-256 verifiers" in check_userlist(out / "pgbouncer")
        userlist.chmod(0o644)
        with pytest.raises(CheckFailed, match="chmod 600"):
            check_userlist(out / "pgbouncer")
        userlist.write_text('"app" "plaintext"\n')
        with pytest.raises(CheckFailed, match="not a SCRAM-SHA-256 verifier"):
            check_userlist(out / "pgbouncer")

    def test_missing_tool_is_skipped_with_a_hint(self, tmp_path: Path) -> None:
        """A check whose tool is missing is skipped, saying how to install it."""
        out = tmp_path / "out"
        render(COMPONENTS, settings(), out)

        def never(_directory: Path) -> str:
            raise AssertionError("a check without its tool must not run")

        tool = Check("needs a tool", never, tool="whodunit-no-such-tool", install="apt-get it")
        component = Component("pgbouncer", "", PgBouncerSettings, COMPONENTS[0].render, (tool,))
        [result] = run_checks(out, [component])
        assert ("skipped", "whodunit-no-such-tool not installed (apt-get it)") == (
            result.status,
            result.detail,
        )

    def test_not_a_render(self, tmp_path: Path) -> None:
        """Checking a directory render did not write is an error, not an empty report."""
        with pytest.raises(ConfigError, match=r"whodunit-deploy\.json"):
            run_checks(tmp_path, COMPONENTS)


@pytest.fixture
def runner() -> CliRunner:
    """A click runner without the developer's WHODUNIT_* settings."""
    return CliRunner(env={"WHODUNIT_CONFIG": None, **dict.fromkeys(PASSWORDS)})


class TestCommands:
    @pytest.mark.parametrize("command", [[], ["render"], ["check"]])
    def test_help_has_examples(self, runner: CliRunner, command: list[str]) -> None:
        """Every deploy command explains itself with an example."""
        result = runner.invoke(deploy, [*command, "--help"])
        assert (0, True) == (result.exit_code, "Example" in result.output)

    @pytest.mark.slow
    def test_render_then_check_with_the_real_pgbouncer(
        self, runner: CliRunner, tmp_path: Path
    ) -> None:
        """An example render passes every check, pgbouncer started on it included."""
        out = tmp_path / "out"
        result = runner.invoke(deploy, ["render", "--example", "--out", str(out), "--json"])
        assert 0 == result.exit_code, result.output
        assert 3 == len(json.loads(result.output)["generated_secrets"])
        result = runner.invoke(deploy, ["check", str(out), "--json", "--strict"])
        assert 0 == result.exit_code, result.output
        report = json.loads(result.output)
        assert (3, 3, 0) == (report["ran"], report["passed"], report["skipped"]), report
        assert "served a transaction" in report["results"][-1]["detail"]

    def test_check_without_pgbouncer(
        self, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without pgbouncer the live check is skipped: fine, unless --strict."""
        monkeypatch.setattr("whodunit.deploy.check.find_tool", lambda _name: None)
        out = tmp_path / "out"
        assert 0 == runner.invoke(deploy, ["render", "--example", "--out", str(out)]).exit_code
        result = runner.invoke(deploy, ["check", str(out), "--json"])
        assert 0 == result.exit_code, result.output
        report = json.loads(result.output)
        assert (2, 1, "pgbouncer not installed (apt-get install pgbouncer)") == (
            report["passed"],
            report["skipped"],
            report["results"][-1]["detail"],
        )
        assert 1 == runner.invoke(deploy, ["check", str(out), "--strict"]).exit_code

    def test_render_errors_are_one_line(self, runner: CliRunner, tmp_path: Path) -> None:
        """A missing secret exits 2 with the setting's name, and writes nothing."""
        out = tmp_path / "out"
        result = runner.invoke(deploy, ["render", "--out", str(out)])
        assert (2, False) == (result.exit_code, out.exists())
        assert "deploy.pgbouncer.password is not set" in result.output
        assert "Traceback" not in result.output

    def test_config_file_and_out_setting(self, runner: CliRunner, tmp_path: Path) -> None:
        """--config is read, and deploy.out stands in for --out."""
        path = toml(
            tmp_path,
            f'[deploy]\nout = "{tmp_path / "from-file"}"\n[deploy.pgbouncer]\nlisten_port = 7001\n',
        )
        result = runner.invoke(deploy, ["render", "--config", str(path)], env=PASSWORDS)
        assert 0 == result.exit_code, result.output
        ini = (tmp_path / "from-file/pgbouncer/pgbouncer.ini").read_text()
        assert re.search(r"^listen_port = 7001$", ini, re.MULTILINE)

    def test_out_is_required(self, runner: CliRunner) -> None:
        """Without --out or deploy.out, a usage error."""
        result = runner.invoke(deploy, ["render"], env=PASSWORDS)
        assert (2, True) == (result.exit_code, "--out" in result.output)


def test_secret_repr_hides_the_value() -> None:
    """A Secret shows where it came from, never what it is."""
    hidden = Secret("hunter2", "WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD")
    assert "hunter2" not in repr(hidden) + str(hidden)
