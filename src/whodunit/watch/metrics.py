"""
The watcher's Prometheus metrics, served on ``/metrics`` (127.0.0.1 by default).

Names, types and labels are a contract: the alert rules rendered by ``whodunit deploy``
query them, and ``docs/metrics.md`` lists them.  Change one only with both.

Labels stay few: the actor label (and the table label, on databases with very many
tables) keeps its first *max_label_values* values and counts the rest as ``other``, so a
flood of distinct app users cannot blow up Prometheus.  Every rule's firing counter
starts at 0, so ``increase(...) > 0`` fires on the first alert too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from whodunit.watch.alert import Alert, Severity
from whodunit.watch.reader import AppEvent, Checkpoint, Event, StatementEvent

__all__ = ["OTHER", "WatchMetrics"]

#: The label value that stands for every value past the cap.
OTHER = "other"
_DESTRUCTIVE_DDL = ("DROP TABLE", "DROP SCHEMA")


class _Capped:
    """The first *limit* distinct values of a label pass; the others become ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return OTHER


class WatchMetrics:
    """
    The watcher's metrics, in a registry of their own (several watchers in one process,
    as in the tests, do not collide).

    Args:
        registry: Where to register (default: a new one).
        max_label_values: Distinct actors, and tables, kept per label.
        rules: The enabled rules, whose firing counters start at 0.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_label_values: int = 50,
        rules: Mapping[str, Severity] | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self._actor = _Capped(max_label_values)
        # Tables are few on most databases; the cap is a guard, set well above actors'.
        self._table = _Capped(max_label_values * 20)
        r = self.registry
        self.rows_changed = Counter(
            "whodunit_rows_changed",
            "Rows changed in audited tables, by table and operation "
            "(INSERT, UPDATE, DELETE, TRUNCATE, DROP).",
            ["table", "op"],
            registry=r,
        )
        self.destructive_statements = Counter(
            "whodunit_destructive_statements",
            "DELETE, TRUNCATE and DROP TABLE/SCHEMA statements, by table and actor.",
            ["table", "actor"],
            registry=r,
        )
        self.detector_firings = Counter(
            "whodunit_detector_firings",
            "Alerts raised by the detectors, by rule and severity.",
            ["rule", "severity"],
            registry=r,
        )
        self.events_read = Counter(
            "whodunit_watch_events_read",
            "Trail rows read by the watcher, by kind (statement, app_event).",
            ["kind"],
            registry=r,
        )
        self.reconnects = Counter(
            "whodunit_watch_reconnects",
            "Times the watcher lost the database (or its sink failed) and started again.",
            registry=r,
        )
        self.outbox_depth = Gauge(
            "whodunit_outbox_depth",
            "Alerts waiting in the outbox for delivery, by channel (set by the outbox).",
            ["channel"],
            registry=r,
        )
        self.lag = Gauge(
            "whodunit_watch_lag_seconds",
            "When the latest event was read: how long after it ran (read time - at).",
            registry=r,
        )
        self.last_poll = Gauge(
            "whodunit_watch_last_poll_timestamp_seconds",
            "Unix time of the last completed read of the trail.",
            registry=r,
        )
        self.poll_age = Gauge(
            "whodunit_watch_last_poll_age_seconds",
            "Seconds since the last completed read of the trail (computed when scraped).",
            registry=r,
        )
        self.checkpoint_id = Gauge(
            "whodunit_watch_checkpoint_id",
            "The highest id read and checkpointed, by table (statement, app_event).",
            ["table"],
            registry=r,
        )
        self.seal_last_timestamp = Gauge(
            "whodunit_seal_last_timestamp_seconds",
            "Unix time of the last seal appended to the hash chain (0 until the first).",
            registry=r,
        )
        self.seal_last_id = Gauge(
            "whodunit_seal_last_id",
            "The id of the last seal appended to the hash chain (its hash is in the log).",
            registry=r,
        )
        # Until the first read, the age counts from start-up: a watcher that never reads
        # looks stuck, not fresh.
        self._polled_at = time.time()
        self.poll_age.set_function(lambda: time.time() - self._polled_at)
        for kind in ("statement", "app_event"):
            self.events_read.labels(kind)
        for rule, severity in (rules or {}).items():
            self.detector_firings.labels(rule, severity.value)

    def read(self, events: Iterable[Event]) -> None:
        """Count a page of new events: rows changed, destructive statements, lag."""
        latest = None
        count = {"statement": 0, "app_event": 0}
        for event in events:
            latest = event.at if latest is None or event.at > latest else latest
            if isinstance(event, AppEvent):
                count["app_event"] += 1
                continue
            count["statement"] += 1
            self._statement(event)
        for kind, n in count.items():
            if n:
                self.events_read.labels(kind).inc(n)
        if latest is not None:
            self.lag.set(max(0.0, time.time() - latest.timestamp()))

    def fired(self, alerts: Iterable[Alert]) -> None:
        """Count alerts by rule and severity."""
        for alert in alerts:
            self.detector_firings.labels(alert.rule, alert.severity.value).inc()

    def polled(self, checkpoint: Checkpoint) -> None:
        """Note a completed read and the checkpoint it saved."""
        self._polled_at = time.time()
        self.last_poll.set(self._polled_at)
        self.checkpoint_id.labels("statement").set(checkpoint.statement_id)
        self.checkpoint_id.labels("app_event").set(checkpoint.app_event_id)

    def sealed(self, seal_id: int, at: float) -> None:
        """Note a new seal (``whodunit.watch.seal.Sealer`` calls this)."""
        self.seal_last_id.set(seal_id)
        self.seal_last_timestamp.set(at)

    def set_outbox_depth(self, depth: Mapping[str, int]) -> None:
        """Set the outbox depth per channel (``whodunit.watch.outbox.depth`` gives it)."""
        for channel, value in depth.items():
            self.outbox_depth.labels(channel).set(value)

    def serve(self, address: str, port: int) -> Any:
        """
        Serve ``/metrics`` on *address*:*port* from a daemon thread.

        Returns:
            The HTTP server; ``shutdown()`` stops it.
        """
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server

    def _statement(self, s: StatementEvent) -> None:
        if s.op == "DDL" and s.command_tag not in _DESTRUCTIVE_DDL:
            return
        table = self._table(
            ".".join(p for p in (s.schema_name, s.table_name) if p) or s.object_identity or "?"
        )
        op = "DROP" if s.op == "DDL" else s.op
        if s.rows:
            self.rows_changed.labels(table, op).inc(s.rows)
        if op in ("DELETE", "TRUNCATE", "DROP"):
            actor = s.actor_name or s.actor_id or f"db:{s.db_current_user}"
            self.destructive_statements.labels(table, self._actor(actor)).inc()
