"""The watcher: reading the trail by snapshot, checkpoints, the loop, settings, metrics, CLI."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from tests.fixtures.receivers import FakeDiscord
from whodunit.db.embedded import LocalCluster
from whodunit.db.install import install
from whodunit.errors import ConfigError, PrivilegeError, SchemaVersionError, WhodunitError
from whodunit.watch import reader as reader_module
from whodunit.watch.alert import Alert
from whodunit.watch.commands import watch
from whodunit.watch.daemon import SinkError, Watcher
from whodunit.watch.detectors import MassChangeOptions, MassDelete
from whodunit.watch.metrics import OTHER, WatchMetrics
from whodunit.watch.reader import NEVER, Checkpoint, Reader
from whodunit.watch.settings import Settings, WatchSettings, load

Conn = psycopg.Connection[Any]


class ListSink:
    """An `AlertSink` that keeps what it is given; *fail_on* makes that submit raise."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.alerts: list[Alert] = []
        self.calls = 0
        self.fail_on = fail_on
        self.arrived = threading.Event()

    def submit(self, alerts: Sequence[Alert]) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("the outbox is down")
        self.alerts.extend(alerts)
        self.arrived.set()

    @property
    def keys(self) -> list[str]:
        return [a.key for a in self.alerts]


def settings_for(dsn: str, *, statement_rows: int = 10, **watch: Any) -> Settings:
    """Settings with the metrics endpoint off and mass deletes of *statement_rows* alerting."""
    mass = MassChangeOptions(statement_rows=statement_rows)
    detectors = {**Settings().detectors, MassDelete.rule: mass}
    return Settings(dsn=dsn, watch=WatchSettings(metrics_port=0, **watch), detectors=detectors)


def run_once(settings: Settings, sink: ListSink | None = None) -> ListSink:
    sink = sink or ListSink()
    with Watcher(settings, sink) as watcher:
        watcher.run(once=True)
    return sink


def read(reader: Reader, checkpoint: Checkpoint) -> tuple[list[int], Checkpoint]:
    """Read once, as the daemon does: the statement ids finished since *checkpoint*."""
    until = reader.position(checkpoint)
    ids = [s.id for page in reader.statements(checkpoint, until) for s in page]
    after = checkpoint.advance(until, history_from=NEVER, statement_id=0, app_event_id=0)
    return ids, after


def inserted_id(conn: Conn, value: int) -> int:
    """Insert into t and return the id of the statement row the capture wrote."""
    conn.execute("INSERT INTO t VALUES (%s)", (value,))
    row = conn.execute("SELECT currval('whodunit.statement_id_seq')").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def table(conn: Conn) -> Conn:
    """Table t, audited, in the test's database."""
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    return conn


@pytest.fixture
def no_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Positions without the safety margin: a row stamped before a read is then older
    than the read's floor at once, so the tests need no sleep to reach the hard case."""
    monkeypatch.setattr(reader_module, "MARGIN", timedelta(0))


class TestReader:
    def test_late_commit_of_a_lower_id_is_read_exactly_once(self, dsn: str, table: Conn) -> None:
        """T1 writes id 10 and stays open, T2 writes id 11 and commits: 11, then 10, once."""
        reader = Reader(table, "t")
        checkpoint = reader.load()
        with psycopg.connect(dsn) as t1, psycopg.connect(dsn, autocommit=True) as t2:
            low = inserted_id(t1, 1)  # T1 stays open
            high = inserted_id(t2, 2)
            assert low < high
            first, checkpoint = read(reader, checkpoint)
            t1.commit()
        second, checkpoint = read(reader, checkpoint)
        third, _ = read(reader, checkpoint)
        assert ([high], [low], []) == (first, second, third)

    def test_a_later_transaction_may_draw_a_lower_id(self, dsn: str, table: Conn) -> None:
        """Sessions cache 32 ids: a new transaction commits id 2 after 33 was read."""
        reader = Reader(table, "t")
        checkpoint = reader.load()
        with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
            a1, b1 = inserted_id(a, 1), inserted_id(b, 2)
            first, checkpoint = read(reader, checkpoint)
            a2 = inserted_id(a, 3)
        second, _ = read(reader, checkpoint)
        assert a1 < a2 < b1
        assert ([a1, b1], [a2]) == (sorted(first), second)

    def test_a_transaction_open_across_many_reads_is_read_when_it_commits(
        self, dsn: str, table: Conn, no_margin: None
    ) -> None:
        """A row stamped long before the floor is found through its session's start."""
        reader = Reader(table, "t")
        checkpoint = reader.load()
        with psycopg.connect(dsn) as slow, psycopg.connect(dsn, autocommit=True) as other:
            late = inserted_id(slow, 1)
            seen = []
            for value in range(2, 5):
                inserted_id(other, value)
                ids, checkpoint = read(reader, checkpoint)
                seen += ids
            assert late not in seen
            assert checkpoint.floor > checkpoint.sessions[0].start
            slow.commit()
        ids, _ = read(reader, checkpoint)
        assert [late] == ids

    def test_a_procedure_that_commits_is_read_by_its_statement_start(
        self, dsn: str, table: Conn, no_margin: None
    ) -> None:
        """Rows after a COMMIT inside CALL carry the CALL's start, before their transaction's."""
        table.execute(
            "CREATE PROCEDURE two_steps() LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO t VALUES (1); COMMIT; INSERT INTO t VALUES (2); "
            "PERFORM pg_advisory_xact_lock(4711); END $$"
        )
        reader = Reader(table, "t")
        checkpoint = reader.load()
        with psycopg.connect(dsn, autocommit=True) as blocker:
            blocker.execute("SELECT pg_advisory_lock(4711)")
            call = threading.Thread(target=_call, args=(dsn, "CALL two_steps()"))
            call.start()
            _wait_for(lambda: _waiting_on_lock(table))
            first, checkpoint = read(reader, checkpoint)
            blocker.execute("SELECT pg_advisory_unlock(4711)")
            call.join(10)
        second, _ = read(reader, checkpoint)
        rows = table.execute(
            "SELECT id FROM whodunit.statement WHERE op = 'INSERT' ORDER BY id"
        ).fetchall()
        assert ([rows[0][0]], [rows[1][0]]) == (first, second)

    def test_checkpoint_survives_a_new_reader(self, table: Conn) -> None:
        """A saved checkpoint is loaded back as it was saved."""
        reader = Reader(table, "t")
        checkpoint = reader.load()
        table.execute("INSERT INTO t VALUES (1)")
        until = reader.position(checkpoint)
        after = checkpoint.advance(until, history_from=NEVER, statement_id=7, app_event_id=3)
        reader.save(after)
        assert after == Reader(table, "t").load()

    def test_beginning_reads_the_whole_trail(self, table: Conn) -> None:
        """start = beginning reads what was there before the first run."""
        table.execute("INSERT INTO t VALUES (1)")
        reader = Reader(table, "t")
        ids, _ = read(reader, reader.load("beginning"))
        assert 2 == len(ids)  # CREATE TABLE t, then the INSERT

    def test_pages_cover_a_read_in_order(self, table: Conn) -> None:
        """A read larger than a page comes in pages, in (at, id) order, nothing twice."""
        reader = Reader(table, "t", batch_size=2)
        checkpoint = reader.load()
        for value in range(5):
            table.execute("INSERT INTO t VALUES (%s)", (value,))
        until = reader.position(checkpoint)
        pages = list(reader.statements(checkpoint, until))
        ids = [s.id for page in pages for s in page]
        assert ([2, 2, 1], 5) == ([len(p) for p in pages], len(set(ids)))


class TestPrivileges:
    def test_the_watcher_role_reads_but_cannot_change_the_trail(
        self, dsn: str, table: Conn, app_dsn: str
    ) -> None:
        """A role granted whodunit_watcher runs the watcher; UPDATE of the trail is refused."""
        role = psycopg.conninfo.conninfo_to_dict(app_dsn)["user"]
        table.execute(sql.SQL("GRANT whodunit_watcher TO {}").format(sql.Identifier(str(role))))
        table.execute("INSERT INTO t SELECT generate_series(1, 20)")
        table.execute("DELETE FROM t")
        sink = run_once(settings_for(app_dsn, start="beginning"))
        with psycopg.connect(app_dsn) as app, pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("UPDATE whodunit.statement SET rows = 0")
        # The fixture's GRANT on schema public is in the trail too.
        assert ["privilege_change", "mass_delete"] == [a.rule for a in sink.alerts]

    def test_a_role_without_the_grant_is_told_what_to_grant(self, app_dsn: str) -> None:
        """The error names the GRANT that fixes it."""
        with pytest.raises(PrivilegeError, match="GRANT whodunit_watcher TO"):
            run_once(settings_for(app_dsn))

    def test_an_old_schema_is_refused_with_the_fix(self, dsn: str, conn: Conn) -> None:
        """A v3 schema asks for 'whodunit install'."""
        conn.execute("UPDATE whodunit.meta SET value = '3' WHERE key = 'schema_version'")
        with pytest.raises(SchemaVersionError, match="whodunit install"):
            run_once(settings_for(dsn))

    def test_one_watcher_per_name(self, dsn: str, conn: Conn) -> None:
        """A second watcher of the same name stops at start-up; another name runs."""
        conn.execute("SELECT pg_advisory_lock(hashtextextended('whodunit.watch:default', 0))")
        with pytest.raises(WhodunitError, match="already running"):
            run_once(settings_for(dsn))
        run_once(settings_for(dsn, name="second"))


class TestWatcher:
    def test_restart_resumes_without_duplicates_or_loss(self, dsn: str, table: Conn) -> None:
        """Each run reads what committed since the last one, once."""
        settings = settings_for(dsn)
        assert [] == run_once(settings).alerts  # the first run only sets the checkpoint
        table.execute("INSERT INTO t SELECT generate_series(1, 50)")
        table.execute("DELETE FROM t WHERE id <= 20")
        first = run_once(settings).keys
        second = run_once(settings).keys
        table.execute("DELETE FROM t")
        third = run_once(settings).keys
        assert (1, [], 1) == (len(first), second, len(third))
        assert first != third

    def test_a_sink_failure_mid_read_gives_the_same_keys_again(self, dsn: str, table: Conn) -> None:
        """Killed after a partial submit, the next run submits the same keys again, and more."""
        settings = settings_for(dsn, batch_size=1)
        run_once(settings)
        table.execute("INSERT INTO t SELECT generate_series(1, 40)")
        for low in (1, 11, 21):
            table.execute("DELETE FROM t WHERE id BETWEEN %s AND %s", (low, low + 9))
        failing = ListSink(fail_on=3)
        with pytest.raises(SinkError, match="the outbox is down"):
            run_once(settings, failing)
        again = run_once(settings)
        assert 2 == len(failing.keys)
        assert set(failing.keys) < set(again.keys)
        assert 3 == len(again.keys)

    def test_windows_count_across_a_restart(self, dsn: str, conn: Conn) -> None:
        """Failed logins before and after a restart add up to one brute-force alert."""
        settings = settings_for(dsn)
        run_once(settings)
        for _ in range(6):
            _login_failed(conn, "alice")
        assert [] == run_once(settings).alerts
        for _ in range(4):
            _login_failed(conn, "alice")
        alerts = run_once(settings).alerts
        assert ["brute_force:user:alice"] == [a.key.rsplit(":", 1)[0] for a in alerts]

    def test_notify_wakes_the_watcher_long_before_its_poll(self, dsn: str, table: Conn) -> None:
        """A 200-row DELETE is alerted on within a second though the poll is every 60 s."""
        sink = ListSink()
        watcher = Watcher(settings_for(dsn, poll_interval=60), sink)
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        try:
            _wait_for(lambda: _started(table, "default"))
            table.execute("INSERT INTO t SELECT generate_series(1, 200)")
            table.execute("DELETE FROM t")
            assert sink.arrived.wait(5)
        finally:
            watcher.stop()
            thread.join(5)
            watcher.close()
        assert not thread.is_alive()
        assert ["mass_delete"] == [a.rule for a in sink.alerts]

    def test_metrics_count_what_was_read(self, dsn: str, table: Conn) -> None:
        """Rows, destructive statements, firings and the checkpoint show in the metrics."""
        settings = settings_for(dsn, start="beginning")
        table.execute("INSERT INTO t SELECT generate_series(1, 30)")
        table.execute("DELETE FROM t WHERE id <= 12")
        metrics = WatchMetrics(rules={"mass_delete": MassChangeOptions().severity})
        with Watcher(settings, ListSink(), metrics=metrics) as watcher:
            watcher.run(once=True)
        value = metrics.registry.get_sample_value
        assert 30 == value("whodunit_rows_changed_total", {"table": "public.t", "op": "INSERT"})
        assert 12 == value("whodunit_rows_changed_total", {"table": "public.t", "op": "DELETE"})
        assert 1 == value(
            "whodunit_destructive_statements_total", {"table": "public.t", "actor": "db:postgres"}
        )
        assert 1 == value(
            "whodunit_detector_firings_total", {"rule": "mass_delete", "severity": "critical"}
        )
        assert 0 < (value("whodunit_watch_checkpoint_id", {"table": "statement"}) or 0)
        assert (value("whodunit_watch_last_poll_age_seconds") or 99) < 5


class TestMetrics:
    def test_actor_labels_are_capped(self) -> None:
        """Past the cap, actors are counted as 'other'."""
        from tests.test_detectors import statement

        metrics = WatchMetrics(max_label_values=2)
        metrics.read([statement(op="DELETE", rows=1, actor_id=name) for name in "abc"])
        value = metrics.registry.get_sample_value
        actors = ("a", "b", OTHER)
        assert [1, 1, 1] == [
            value("whodunit_destructive_statements_total", {"table": "public.t", "actor": a})
            for a in actors
        ]

    def test_firing_counters_start_at_zero(self) -> None:
        """Every enabled rule has its counter before it ever fires."""
        metrics = WatchMetrics(rules={"truncate": MassChangeOptions().severity})
        assert 0 == metrics.registry.get_sample_value(
            "whodunit_detector_firings_total", {"rule": "truncate", "severity": "critical"}
        )

    def test_endpoint_serves_on_loopback(self) -> None:
        """/metrics answers on 127.0.0.1 with the documented names."""
        metrics = WatchMetrics()
        metrics.set_outbox_depth({"discord": 3})
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = metrics.serve("127.0.0.1", port)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
                body = page.read().decode()
        finally:
            server.shutdown()
            server.server_close()
        assert 'whodunit_outbox_depth{channel="discord"} 3.0' in body
        assert "whodunit_watch_reconnects_total 0.0" in body


class TestSettings:
    def test_defaults(self) -> None:
        """Without a file or variables, the documented defaults."""
        settings = load(environ={})
        assert ("default", 1.0, 9849, "127.0.0.1") == (
            settings.watch.name,
            settings.watch.poll_interval,
            settings.watch.metrics_port,
            settings.watch.metrics_address,
        )
        assert 1000 == settings.detectors["mass_delete"].statement_rows  # type: ignore[attr-defined]

    def test_environment_wins_over_the_file(self, tmp_path: Path) -> None:
        """WHODUNIT_WATCH_* and WHODUNIT_DETECTORS_* override whodunit.toml."""
        path = tmp_path / "whodunit.toml"
        path.write_text(
            '[watch]\nname = "file"\npoll_interval = 2\n'
            '[detectors.human_access]\nallow_cidrs = ["10.0.0.0/8"]\n'
            '[detectors.brute_force]\nwindow = "10m"\nper_user = 3\n'
        )
        env = {
            "WHODUNIT_WATCH_NAME": "env",
            "WHODUNIT_DETECTORS_BRUTE_FORCE_PER_USER": "7",
            "WHODUNIT_DETECTORS_HUMAN_ACCESS_WORKING_DAYS": "mon, sat",
            "WHODUNIT_DETECTORS_FAILURE_BURST_ENABLED": "false",
        }
        settings = load(path, env)
        brute: Any = settings.detectors["brute_force"]
        human: Any = settings.detectors["human_access"]
        assert ("env", 2.0) == (settings.watch.name, settings.watch.poll_interval)
        assert (7, timedelta(minutes=10)) == (brute.per_user, brute.window)
        assert ("10.0.0.0/8", ("mon", "sat")) == (str(human.allow_cidrs[0]), human.working_days)
        assert not settings.detectors["failure_burst"].enabled

    @pytest.mark.parametrize(
        ("toml", "env", "message"),
        [
            ("[detectors.mass_delet]\n", {}, "unknown detector 'mass_delet'"),
            ("[watch]\npoll_intervall = 1\n", {}, "unknown setting watch.poll_intervall"),
            (
                "[detectors.mass_delete]\nstatement_rows = -5\n",
                {},
                "detectors.mass_delete.statement_rows in .* must be from 0, got -5",
            ),
            (
                '[detectors.human_access]\nallow_cidrs = ["10.0.0.0/33"]\n',
                {},
                "detectors.human_access.allow_cidrs .* '10.0.0.0/33' is not a network",
            ),
            ('[detectors.brute_force]\nwindow = "soon"\n', {}, "must be a duration"),
            ('[detectors.human_access]\ntimezone = "Mars/Olympus"\n', {}, "not a known time zone"),
            ("", {"WHODUNIT_DETECTORS_NOPE_X": "1"}, "WHODUNIT_DETECTORS_NOPE_X .* no known"),
            ("", {"WHODUNIT_WATCH_BATCH_SIZE": "many"}, "WHODUNIT_WATCH_BATCH_SIZE must be a"),
            ("", {"WHODUNIT_WATCH_START": "yesterday"}, "must be one of now, beginning"),
        ],
    )
    def test_bad_settings_name_the_setting(
        self, tmp_path: Path, toml: str, env: dict[str, str], message: str
    ) -> None:
        """Each mistake is a ConfigError naming the setting and the value."""
        path = tmp_path / "whodunit.toml"
        path.write_text(toml)
        with pytest.raises(ConfigError, match=message):
            load(path, env)


class TestCommand:
    def test_once_prints_alerts_as_json_lines(self, dsn: str, table: Conn) -> None:
        """--once --json reads the trail and prints one JSON object per alert."""
        table.execute("INSERT INTO t SELECT generate_series(1, 10)")
        table.execute("TRUNCATE t")
        result = CliRunner().invoke(
            watch,
            ["--dsn", dsn, "--once", "--json", "--metrics-port", "0"],
            env={"WHODUNIT_WATCH_START": "beginning"},
        )
        lines = [orjson.loads(line) for line in result.stdout.splitlines()]
        assert (0, ["truncate"]) == (result.exit_code, [line["rule"] for line in lines])
        assert lines[0]["investigate"].startswith("whodunit investigate --from ")

    def test_once_delivers_through_the_outbox(
        self, dsn: str, table: Conn, fake_discord: FakeDiscord
    ) -> None:
        """With Discord configured, the alert goes through the outbox to the webhook."""
        table.execute("INSERT INTO t SELECT generate_series(1, 10)")
        table.execute("TRUNCATE t")
        result = CliRunner().invoke(
            watch,
            ["--dsn", dsn, "--once", "--metrics-port", "0"],
            env={
                "WHODUNIT_WATCH_START": "beginning",
                "WHODUNIT_DISCORD_WEBHOOK_URL": fake_discord.url,
            },
        )
        assert 0 == result.exit_code, result.output
        assert 1 == len(fake_discord.messages)
        assert "TRUNCATE" in orjson.dumps(fake_discord.messages[0]).decode()

    def test_bad_config_exits_2_naming_the_setting(self, tmp_path: Path) -> None:
        """An unknown detector stops the command before it connects."""
        path = tmp_path / "whodunit.toml"
        path.write_text("[detectors.mass_delet]\n")
        result = CliRunner().invoke(watch, ["--config", str(path), "--once"])
        assert 2 == result.exit_code
        assert "unknown detector 'mass_delet' (section detectors.mass_delet)" in result.stderr

    def test_help_has_examples(self) -> None:
        """--help ends with examples."""
        result = CliRunner().invoke(watch, ["--help"])
        assert (0, True) == (result.exit_code, "Examples:" in result.stdout)


# -- a server of the test's own, to restart -----------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[tuple[LocalCluster, str]]:
    """An embedded PostgreSQL this module may stop and start (and that allows 2PC)."""
    base = Path(tempfile.mkdtemp(prefix="whodunit-test-watch-"))
    cluster = LocalCluster(
        base / "data", settings={"fsync": "off", "max_prepared_transactions": "4"}
    )
    admin = cluster.start()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE watched")
    dsn = cluster.dsn("watched")
    with psycopg.connect(dsn, autocommit=True) as conn:
        install(conn, ["public"])
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    yield cluster, dsn
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
class TestServerRestart:
    def test_reconnects_and_loses_nothing(self, own_server: tuple[LocalCluster, str]) -> None:
        """Alerts from before, around and after a server restart all arrive."""
        cluster, dsn = own_server
        sink = ListSink()
        metrics = WatchMetrics()
        settings = settings_for(dsn, poll_interval=0.2, backoff_max=0.5, name="restart")
        watcher = Watcher(settings, sink, metrics=metrics)
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                _wait_for(lambda: _started(conn, "restart"))
                conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
                conn.execute("DELETE FROM t WHERE id <= 20")
                _wait_for(lambda: len(sink.alerts) == 1)
                conn.execute("DELETE FROM t WHERE id <= 40")  # maybe read before the stop
            cluster.stop()
            cluster.start()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM t WHERE id <= 60")
            _wait_for(lambda: len(set(sink.keys)) == 3, timeout=20)
        finally:
            watcher.stop()
            thread.join(10)
            watcher.close()
        assert 3 == len(set(sink.keys))
        assert 1 <= (metrics.registry.get_sample_value("whodunit_watch_reconnects_total") or 0)

    def test_a_prepared_transaction_is_read_when_committed(
        self, own_server: tuple[LocalCluster, str], no_margin: None
    ) -> None:
        """Two-phase commits are followed from their session into PREPARE and back."""
        _, dsn = own_server
        with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn) as two_phase:
            reader = Reader(conn, "2pc")
            checkpoint = reader.load()
            row = inserted_id(two_phase, 1000)
            _, checkpoint = read(reader, checkpoint)
            two_phase.execute("PREPARE TRANSACTION 'whodunit-test'")
            two_phase.commit()
            before, checkpoint = read(reader, checkpoint)
            prepared = [s for s in checkpoint.sessions if s.pid is None]
            conn.execute("COMMIT PREPARED 'whodunit-test'")
            after, _ = read(reader, checkpoint)
        assert ([], [row]) == (before, after)
        assert 1 == len(prepared)
        assert NEVER < prepared[0].start


# -- helpers --------------------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def _started(conn: Conn, name: str) -> bool:
    """Whether the watcher *name* has saved its first checkpoint (what it reads starts there)."""
    row = conn.execute("SELECT count(*) FROM whodunit.watch_checkpoint WHERE name = %s", (name,))
    return bool(row.fetchone()[0])  # type: ignore[index]


def _waiting_on_lock(conn: Conn) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ).fetchone()
    return bool(row and row[0])


def _call(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def _login_failed(conn: Conn, user: str) -> None:
    conn.execute(
        "SELECT whodunit.record_app_event('auth.login_failed', 'user', %s, 'failure', "
        "'invalid_credentials', p_context => '{\"client_ip\": \"198.51.100.7\"}')",
        (user,),
    )
