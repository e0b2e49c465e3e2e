"""The durable outbox: storing alerts, delivering them at least once, in order, grouped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.fixtures.receivers import (
    Answer,
    FakeDiscord,
)
from whodunit.watch.alert import Alert, Category, Severity
from whodunit.watch.notifiers import DiscordNotifier
from whodunit.watch.outbox import Deliverer, OutboxSink, depth, group_key, pending_count

AT = datetime(2026, 11, 28, 3, 14, tzinfo=UTC)
DISCORD_ONLY = {"discord": Severity.INFO}


def alert(n: int, *, table: str | None = None, severity: Severity = Severity.WARNING) -> Alert:
    evidence = {"actor": "player7"} | ({"table": table} if table else {})
    return Alert(
        key=f"test:{n}",
        rule="mass_delete" if table else f"rule_{n}",
        severity=severity,
        category=Category.DATABASE,
        title=f"alert {n}",
        summary="rows deleted",
        at=AT + timedelta(seconds=n),
        evidence=evidence if table else {},
    )


def rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT alert_key, channel, status, attempts FROM whodunit.alert_outbox ORDER BY id"
    ).fetchall()


MakeDeliverer = Callable[..., Deliverer]


@pytest.fixture
def make_deliverer(dsn: str, fake_discord: FakeDiscord) -> Iterator[MakeDeliverer]:
    """Deliverers to the fake Discord with test-sized timings; closed afterwards."""
    made: list[Deliverer] = []

    def make(**options: Any) -> Deliverer:
        notifier = DiscordNotifier(fake_discord.url, timeout=options.pop("timeout", 2.0))
        defaults: dict[str, Any] = {
            "backoff": 0.02, "max_backoff": 0.1, "poll_interval": 0.05, "group_window": 0,
        }  # fmt: skip
        deliverer = Deliverer(dsn, {"discord": notifier}, **(defaults | options))
        made.append(deliverer)
        return deliverer

    yield make
    for deliverer in made:
        deliverer.close()


@pytest.fixture
def sink(dsn: str) -> Iterator[OutboxSink]:
    outbox = OutboxSink(dsn, DISCORD_ONLY)
    yield outbox
    outbox.close()


class Running:
    """A deliverer's `run` loop on a thread."""

    def __init__(self, deliverer: Deliverer) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=deliverer.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class TestSubmit:
    def test_one_row_per_alert_and_channel(self, dsn: str, conn: psycopg.Connection[Any]) -> None:
        """Each alert gets a row per channel whose least severity it reaches; again: no-op."""
        routes = {"discord": Severity.INFO, "email": Severity.CRITICAL}
        outbox = OutboxSink(dsn, routes)
        batch = [alert(1), alert(2, severity=Severity.CRITICAL)]
        outbox.submit(batch)
        outbox.submit(batch)
        outbox.close()
        assert [
            ("test:1", "discord", "pending", 0),
            ("test:2", "discord", "pending", 0),
            ("test:2", "email", "pending", 0),
        ] == rows(conn)
        assert ({"discord": 2, "email": 1}, 3) == (depth(conn), pending_count(conn))

    def test_secrets_redacted_before_storing(
        self, sink: OutboxSink, conn: psycopg.Connection[Any]
    ) -> None:
        """A password in the evidence is replaced before it reaches the outbox."""
        leaky = Alert(
            key="leak", rule="r", severity=Severity.WARNING, category=Category.DATABASE,
            title="t", summary="psql postgresql://admin:hunter2@db/app", at=AT,
            evidence={"conninfo": "host=db user=admin password=hunter2"},
        )  # fmt: skip
        sink.submit([leaky])
        (payload,) = conn.execute("SELECT payload::text FROM whodunit.alert_outbox").fetchone()  # type: ignore[misc]
        assert "hunter2" not in payload

    def test_group_key(self) -> None:
        """Rule plus table and actor make the group; alerts without either are not grouped."""
        assert "mass_delete|table=public.User|actor=player7" == group_key(
            alert(1, table="public.User")
        )
        assert group_key(alert(1)) is None

    def test_repr_masks_password(self) -> None:
        """The sink's repr never shows the DSN's password."""
        outbox = OutboxSink("postgresql://watch:hunter2@db/app", DISCORD_ONLY)
        assert "hunter2" not in repr(outbox)


class TestDeliver:
    def test_delivers_in_order_and_marks_rows(
        self,
        sink: OutboxSink,
        make_deliverer: MakeDeliverer,
        fake_discord: FakeDiscord,
        conn: psycopg.Connection[Any],
    ) -> None:
        """Pending rows go out oldest first and are marked delivered."""
        sink.submit([alert(n) for n in range(5)])
        assert float("inf") == make_deliverer().run_once()
        assert [f"test:{n}" for n in range(5)] == fake_discord.keys
        assert {"delivered"} == {status for _, _, status, _ in rows(conn)}
        assert 0 == pending_count(conn)

    def test_400_marked_failed_never_retried(
        self,
        sink: OutboxSink,
        make_deliverer: MakeDeliverer,
        fake_discord: FakeDiscord,
        conn: psycopg.Connection[Any],
    ) -> None:
        """A permanent refusal fails that row only; the next rows still go out."""
        fake_discord.answer(Answer(400, {"message": "Invalid Form Body"}))
        sink.submit([alert(1), alert(2)])
        deliverer = make_deliverer()
        deliverer.run_once()
        deliverer.run_once()
        assert [("test:1", "discord", "failed", 1), ("test:2", "discord", "delivered", 1)] == rows(
            conn
        )
        assert 2 == len(fake_discord.requests)
        error = conn.execute("SELECT last_error FROM whodunit.alert_outbox WHERE id = 1").fetchone()
        assert error is not None
        assert "400" in error[0]
        assert (1, 1, 0) == tuple(vars(deliverer.stats()["discord"]).values())

    def test_5xx_and_429_retried_in_order(
        self,
        sink: OutboxSink,
        make_deliverer: MakeDeliverer,
        fake_discord: FakeDiscord,
        conn: psycopg.Connection[Any],
    ) -> None:
        """A 500 then a 429 hold the channel (waiting retry_after), then all go in order."""
        fake_discord.answer(Answer(500), fake_discord.rate_limit(0.3))
        sink.submit([alert(1), alert(2)])
        running = Running(make_deliverer())
        try:
            assert ["test:1", "test:2"] == fake_discord.wait_keys(2)
        finally:
            running.close()
        statuses = [request.status for request in fake_discord.requests]
        assert [500, 429, 200, 200] == statuses
        assert fake_discord.requests[2].at - fake_discord.requests[1].at >= 0.3
        assert [3, 1] == [attempts for *_, attempts in rows(conn)]

    def test_hanging_receiver_times_out_then_delivers(
        self, sink: OutboxSink, make_deliverer: MakeDeliverer, fake_discord: FakeDiscord
    ) -> None:
        """No answer within the timeout schedules a retry, which gets through."""
        fake_discord.answer(Answer(hang=True))
        sink.submit([alert(1)])
        running = Running(make_deliverer(timeout=0.2))
        try:
            assert ["test:1"] == fake_discord.wait_keys(1)
        finally:
            running.close()

    def test_receiver_down_then_back(
        self, sink: OutboxSink, make_deliverer: MakeDeliverer, fake_discord: FakeDiscord
    ) -> None:
        """Alerts submitted while Discord is down arrive, in order, once it is back."""
        fake_discord.stop()
        running = Running(make_deliverer())
        try:
            for n in range(6):
                sink.submit([alert(n)])
            time.sleep(0.5)
            fake_discord.start()
            assert [f"test:{n}" for n in range(6)] == fake_discord.wait_keys(6)
        finally:
            running.close()

    def test_new_alert_wakes_the_deliverer(
        self, sink: OutboxSink, make_deliverer: MakeDeliverer, fake_discord: FakeDiscord
    ) -> None:
        """A submit wakes a waiting deliverer at once (LISTEN/NOTIFY), not at its next poll."""
        running = Running(make_deliverer(poll_interval=30.0))
        try:
            time.sleep(0.2)  # the loop is waiting now
            submitted = time.monotonic()
            sink.submit([alert(1)])
            fake_discord.wait_keys(1)
            assert fake_discord.requests[0].at - submitted < 1.0
        finally:
            running.stop.set()
            sink.submit([alert(2)])  # wakes it to see the stop
            running.close()

    def test_killed_mid_batch_loses_nothing(
        self,
        dsn: str,
        sink: OutboxSink,
        make_deliverer: MakeDeliverer,
        fake_discord: FakeDiscord,
    ) -> None:
        """SIGKILL after a send but before its commit: resent once, de-duplicated, none lost."""
        sink.submit([alert(n) for n in range(5)])
        # The third message is taken, but its answer never comes: the process dies first.
        fake_discord.answer(Answer(), Answer(), Answer(hang=True, accept=True))
        script = textwrap.dedent(
            """
            import os, threading
            from whodunit.watch.notifiers import DiscordNotifier
            from whodunit.watch.outbox import Deliverer
            notifier = DiscordNotifier(os.environ["URL"], timeout=60)
            Deliverer(os.environ["DSN"], {"discord": notifier}).run(threading.Event())
            """
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script], env=os.environ | {"DSN": dsn, "URL": fake_discord.url}
        )
        try:
            fake_discord.wait_requests(3, timeout=20)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        make_deliverer().run_once()
        assert [f"test:{n}" for n in range(5)] == fake_discord.keys
        assert 1 == fake_discord.duplicates


class TestGrouping:
    def test_burst_goes_as_one_message(
        self, sink: OutboxSink, make_deliverer: MakeDeliverer, fake_discord: FakeDiscord
    ) -> None:
        """Twelve pending alerts of one group go out as one message, 'x12 in ...'."""
        sink.submit([alert(n, table="public.User") for n in range(12)])
        make_deliverer(group_window=300).run_once()
        (message,) = fake_discord.messages
        assert "(x12 in 11 s)" in message["embeds"][0]["title"]
        assert ["test:0"] == fake_discord.keys

    def test_repeats_within_window_wait_and_fold(
        self,
        sink: OutboxSink,
        make_deliverer: MakeDeliverer,
        fake_discord: FakeDiscord,
        conn: psycopg.Connection[Any],
    ) -> None:
        """After a group's message, its next alerts wait out the window, then go as one."""
        deliverer = make_deliverer(group_window=0.5)
        sink.submit([alert(0, table="t")])
        deliverer.run_once()
        sink.submit([alert(1, table="t"), alert(2, table="t"), alert(3)])
        wait = deliverer.run_once()
        assert ["test:0", "test:3"] == fake_discord.keys  # others go past the held group
        assert 0 < wait <= 0.5
        time.sleep(wait)
        deliverer.run_once()
        assert "(x2 in 1 s)" in fake_discord.messages[-1]["embeds"][0]["title"]
        assert 0 == pending_count(conn)
