"""
The durable outbox: every alert is stored before it is sent, then delivered at least once.

`OutboxSink` is the watcher's `AlertSink`: ``submit`` writes one row per alert and
channel (``whodunit.alert_outbox``) in one transaction and returns after the commit, so an
accepted alert survives a crash, a restart and a receiver outage.  `enqueue` does the same
inside a transaction of the caller's (the watcher can store its checkpoint in the same one).

`Deliverer` sends the rows.  Per channel, one deliverer at a time (an advisory lock) takes
the oldest pending row (``FOR UPDATE SKIP LOCKED``), sends it while holding the row, and
marks it delivered in the same transaction.  A crash between the send and the commit
leaves the row pending, so it is sent again: delivery is at least once, and each message
carries the alert key (Discord's embed footer, the webhook's ``X-Whodunit-Alert-Key``, the
mail's ``Message-ID``) for receivers that de-duplicate.

Order: a row waiting for its retry holds back the rows behind it on its channel, so a
channel receives its alerts in the order they were submitted.  A retryable failure (5xx,
timeout, 429) is retried after the receiver's ``retry_after`` or an exponential backoff,
for as long as it takes; a permanent one (Discord's 400) marks the row failed, and it is
never sent again.

Grouping: alerts of the same rule on the same table and/or by the same actor (their
``table`` / ``actor`` evidence) form a group.  Once a group had a message, its next alerts
wait until *group_window* seconds have passed and then go out as one message,
"x12 in 5 min"; alerts of a group that are pending together go out together at once.
The first alert of a burst is never delayed.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from whodunit.db import sql_text
from whodunit.db.connect import connect, mask_dsn
from whodunit.errors import DatabaseUnavailableError
from whodunit.watch.alert import Alert, Severity
from whodunit.watch.notifiers.base import (
    Notice,
    Notifier,
    NotifierError,
    alert_from_json,
    alert_to_json,
    backoff_delay,
    reaches,
    redact_alert,
)

__all__ = [
    "GROUP_EVIDENCE",
    "ChannelStats",
    "Deliverer",
    "OutboxSink",
    "depth",
    "enqueue",
    "group_key",
    "pending_count",
]

#: The evidence names that, with the rule, make alerts one group.
GROUP_EVIDENCE = ("table", "actor")
_PRUNE_EVERY = 3600.0
_log = logging.getLogger("whodunit.watch.outbox")

Routes = Mapping[str, Severity]


def group_key(alert: Alert) -> str | None:
    """
    The group of *alert*: its rule with its table and/or actor, or None (never grouped).

    Evidence names match case-insensitively (``Table`` or ``table``).
    """
    evidence = {name.lower(): value for name, value in alert.evidence.items()}
    parts = [f"{name}={evidence[name]}" for name in GROUP_EVIDENCE if evidence.get(name)]
    return "|".join([alert.rule, *parts]) if parts else None


def enqueue(conn: psycopg.Connection[Any], alerts: Sequence[Alert], routes: Routes) -> int:
    """
    Queue *alerts* in the caller's transaction: one row per alert per channel it goes to.

    An alert goes to each channel whose least severity it reaches.  A key already queued
    for a channel is skipped, so submitting an alert again is a no-op.  Secrets found by
    shape in the alert's texts are replaced before they are stored.

    Args:
        conn: A connection in a transaction; nothing is stored until it commits.
        alerts: The alerts.
        routes: Channel name to least severity (`NotifySettings.routes`).

    Returns:
        The rows offered (alerts times channels), queued or already there.
    """
    rows = [
        {
            "key": alert.key,
            "channel": channel,
            "group_key": group_key(alert),
            "payload": Jsonb(alert_to_json(redact_alert(alert))),
        }
        for alert in alerts
        for channel, least in routes.items()
        if reaches(alert.severity, least)
    ]
    if rows:
        with conn.cursor() as cursor:
            cursor.executemany(sql_text("outbox_insert.sql"), rows)
        conn.execute(sql_text("outbox_notify.sql"))
    return len(rows)


def depth(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Pending rows per channel (channels with none are absent): the outbox depth metric."""
    return {channel: int(count) for channel, count in conn.execute(sql_text("outbox_depth.sql"))}


def pending_count(conn: psycopg.Connection[Any]) -> int:
    """Pending rows on every channel."""
    return sum(depth(conn).values())


class OutboxSink:
    """
    The watcher's `AlertSink`: store alerts in the outbox, durably, before returning.

    Args:
        dsn: The audited database (whodunit installed, schema version 5 or later); the
            role needs the rights of the ``whodunit`` role on the outbox.
        routes: Channel name to least severity (`NotifySettings.routes`).

    .. versionadded:: 0.1
    """

    def __init__(self, dsn: str, routes: Routes) -> None:
        self._dsn = dsn
        self._routes = dict(routes)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OutboxSink(dsn={mask_dsn(self._dsn)!r}, routes={self._routes!r})"

    def submit(self, alerts: Sequence[Alert]) -> None:
        """
        Store *alerts*; return once the transaction committed.

        A connection lost since the last call is opened again, once.

        Raises:
            DatabaseUnavailableError: The database could not store them.
        """
        with self._lock:
            for retry in (False, True):
                try:
                    conn = self._connection()
                    with conn.transaction():
                        enqueue(conn, alerts, self._routes)
                    return
                except psycopg.OperationalError as exc:
                    self.close()
                    if retry:
                        raise DatabaseUnavailableError(
                            f"cannot store {len(alerts)} alert(s) in the outbox of "
                            f"{mask_dsn(self._dsn)}: {exc}"
                        ) from exc

    def close(self) -> None:
        """Close the connection (the next `submit` opens another)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._dsn, autocommit=True)
        return self._conn


@dataclass(frozen=True)
class ChannelStats:
    """
    What a `Deliverer` did on one channel since it started.

    Attributes:
        delivered: Messages the receiver took.
        failed: Messages refused for good (their rows are marked failed).
        retried: Attempts that failed and were scheduled again.
    """

    delivered: int = 0
    failed: int = 0
    retried: int = 0


@dataclass(frozen=True)
class _Head:
    id: int
    key: str
    group_key: str | None
    payload: dict[str, Any]
    attempts: int
    wait: float


class Deliverer:
    """
    Deliver the outbox's rows through the notifiers, at least once, in order per channel.

    Several deliverers may run against one database (each channel is served by one at a
    time); `run` is the loop, `run_once` one pass for callers with a loop of their own.

    Args:
        dsn: The audited database.
        notifiers: Channel name to notifier; rows of other channels are left alone.
        group_window: Seconds a group's alerts wait after a message about it (0: never
            fold alerts together).
        backoff: Seconds before the first retry of a failed row, doubled each time.
        max_backoff: The longest backoff (a receiver's ``retry_after`` may be longer).
        keep_days: Delivered and failed rows are deleted after this many days.
        poll_interval: The longest `run` sleeps without looking at the outbox and at its
            *stop* event; new rows wake it at once (LISTEN/NOTIFY).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        dsn: str,
        notifiers: Mapping[str, Notifier],
        *,
        group_window: float = 300.0,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        keep_days: int = 30,
        poll_interval: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._notifiers = dict(notifiers)
        self._window = group_window
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._keep_days = keep_days
        self._poll_interval = poll_interval
        self._conn: psycopg.Connection[Any] | None = None
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._counts_lock = threading.Lock()
        self._failing: set[str] = set()
        self._next_prune = 0.0

    def __repr__(self) -> str:
        return f"Deliverer(dsn={mask_dsn(self._dsn)!r}, channels={list(self._notifiers)!r})"

    def stats(self) -> dict[str, ChannelStats]:
        """Counts per channel, for metrics."""
        with self._counts_lock:
            return {
                channel: ChannelStats(
                    self._counts[channel, "delivered"],
                    self._counts[channel, "failed"],
                    self._counts[channel, "retried"],
                )
                for channel in self._notifiers
            }

    def run(self, stop: threading.Event) -> None:
        """
        Deliver until *stop* is set, surviving database restarts (reconnecting with backoff).

        A send in progress when *stop* is set finishes first (at most a notifier timeout).
        """
        failures = 0
        while not stop.is_set():
            try:
                wait = self.run_once(stop)
                if time.monotonic() >= self._next_prune:
                    self.prune()
                failures = 0
                self._wait(min(wait, self._poll_interval))
            except (psycopg.OperationalError, DatabaseUnavailableError) as exc:
                self.close()
                delay = backoff_delay(failures, 0.5, 30.0)
                failures += 1
                _log.warning(
                    "outbox: database unavailable (%s); retrying in %.1f s",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    delay,
                )
                stop.wait(delay)
        self.close()

    def run_once(self, stop: threading.Event | None = None) -> float:
        """
        Deliver every row that is due now, one message per channel in turn.

        Returns:
            Seconds until the next row is due (``math.inf``: nothing pending).
        """
        conn = self._connection()
        waits: dict[str, float] = {}
        active = list(self._notifiers)
        while active and not (stop and stop.is_set()):
            for channel in list(active):
                wait = self._step(conn, channel)
                if wait is not None:
                    waits[channel] = wait
                    active.remove(channel)
        return min(waits.values(), default=math.inf)

    def prune(self) -> int:
        """Delete delivered and failed rows older than *keep_days*; return how many."""
        self._next_prune = time.monotonic() + _PRUNE_EVERY
        cursor = self._connection().execute(sql_text("outbox_prune.sql"), {"days": self._keep_days})
        return cursor.rowcount

    def close(self) -> None:
        """Close the connection (`run_once` opens another)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._dsn, autocommit=True)
            self._conn.execute(sql_text("outbox_listen.sql"))
        return self._conn

    def _wait(self, seconds: float) -> None:
        """Sleep up to *seconds*, waking when a submit commits new rows."""
        if seconds > 0:
            for _ in self._connection().notifies(timeout=seconds, stop_after=1):
                pass

    def _step(self, conn: psycopg.Connection[Any], channel: str) -> float | None:
        """Send the channel's next message; None when one went out, else seconds to wait."""
        params = {"channel": channel, "window": self._window}
        with conn.transaction():
            row = conn.execute(sql_text("outbox_lock_channel.sql"), params).fetchone()
            if not (row and row[0]):
                return self._poll_interval  # another deliverer serves this channel
            found = conn.execute(sql_text("outbox_head.sql"), params).fetchone()
            head = _Head(*found) if found else None
            if head is None or head.wait > 0:
                held = conn.execute(sql_text("outbox_hold_end.sql"), params).fetchone()
                hold = held[0] if held and held[0] is not None else math.inf
                return min(hold, head.wait if head else math.inf)
            return self._send(conn, channel, head)

    def _send(self, conn: psycopg.Connection[Any], channel: str, head: _Head) -> float | None:
        group = [(head.id, head.payload["at"])]
        if head.group_key is not None and self._window > 0:
            group = conn.execute(
                sql_text("outbox_group.sql"), {"channel": channel, "group_key": head.group_key}
            ).fetchall()
        ids = [row_id for row_id, _ in group]
        notice = Notice(
            alert_from_json(head.payload),
            count=len(group),
            last_at=max(datetime.fromisoformat(at) for _, at in group),
        )
        try:
            self._notifiers[channel].send([notice])
        except NotifierError as exc:
            if not exc.retryable:
                conn.execute(sql_text("outbox_failed.sql"), {"ids": ids, "error": str(exc)})
                self._count(channel, "failed")
                _log.error("outbox: %s refused alert %s for good: %s", channel, head.key, exc)
                return None
            return self._retry(conn, channel, head, str(exc), exc.retry_after)
        except Exception as exc:  # noqa: BLE001 - a notifier's bug must not stop the deliverer
            _log.exception("outbox: %s failed on alert %s", channel, head.key)
            return self._retry(conn, channel, head, f"{type(exc).__name__}: {exc}", None)
        conn.execute(sql_text("outbox_delivered.sql"), {"ids": ids})
        self._count(channel, "delivered")
        if channel in self._failing:
            self._failing.discard(channel)
            _log.info("outbox: %s delivers again", channel)
        return None

    def _retry(
        self,
        conn: psycopg.Connection[Any],
        channel: str,
        head: _Head,
        error: str,
        retry_after: float | None,
    ) -> float:
        delay = retry_after
        if delay is None:
            delay = backoff_delay(head.attempts, self._backoff, self._max_backoff)
        conn.execute(sql_text("outbox_retry.sql"), {"id": head.id, "delay": delay, "error": error})
        self._count(channel, "retried")
        if channel not in self._failing:
            self._failing.add(channel)
            _log.warning("outbox: %s failed (%s); retrying in %.1f s", channel, error, delay)
        return delay

    def _count(self, channel: str, outcome: str) -> None:
        with self._counts_lock:
            self._counts[channel, outcome] += 1
