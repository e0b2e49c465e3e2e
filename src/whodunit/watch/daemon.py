"""
The watcher's loop: read what committed, run the detectors, hand the alerts to the sink,
then move the checkpoint.

Delivery is at least once.  The checkpoint moves only after ``sink.submit`` has returned
for everything read up to it, so a crash anywhere before that re-reads the same events,
and the detectors, rebuilt from the trail, raise the same alert keys again; the outbox
(or any receiver that de-duplicates by key) drops the repeats.

When the database goes away (a restart, a failover, the network) the watcher waits,
doubling the wait up to ``[watch] backoff_max`` with jitter, and starts again from the
checkpoint; a failing sink is retried the same way.  SIGTERM and SIGINT stop it between
two reads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from types import FrameType
from typing import IO, Any

import orjson
import psycopg

from whodunit.db.connect import connect, resolve_dsn
from whodunit.errors import DatabaseUnavailableError, WhodunitError
from whodunit.watch.alert import Alert, AlertSink, Severity
from whodunit.watch.detectors import Detector, build
from whodunit.watch.metrics import WatchMetrics
from whodunit.watch.notifiers.base import alert_to_json, backoff_delay, redact_alert
from whodunit.watch.reader import Checkpoint, Event, Reader, Waker
from whodunit.watch.seal import Sealer
from whodunit.watch.settings import Settings

__all__ = ["JsonLinesSink", "LogSink", "SinkError", "Watcher", "metrics_for"]

_log = logging.getLogger("whodunit.watch")
_LEVELS = {Severity.CRITICAL: logging.CRITICAL, Severity.WARNING: logging.WARNING}
#: The first wait after losing the database; it doubles up to ``backoff_max``.
_FIRST_BACKOFF = 0.5


class LogSink:
    """
    The sink until an outbox is configured: each alert is one log record on the logger
    ``whodunit.watch.alerts`` (one JSON line with whodunit's logging), its fields under
    ``alert``.  Secrets found by shape in its texts are replaced first.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("whodunit.watch.alerts")

    def submit(self, alerts: Sequence[Alert]) -> None:
        """Log *alerts*; a log line is as durable as the log stream it goes to."""
        for alert in alerts:
            level = _LEVELS.get(alert.severity, logging.INFO)
            safe = redact_alert(alert)
            self.logger.log(level, safe.title, extra={"alert": alert_to_json(safe)})


class JsonLinesSink:
    """Each alert as one JSON object on its own line (``whodunit watch --json``)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def submit(self, alerts: Sequence[Alert]) -> None:
        """Write *alerts* and flush, so a pipe reader sees them at once."""
        for alert in alerts:
            self.stream.write(orjson.dumps(alert_to_json(redact_alert(alert))).decode() + "\n")
        self.stream.flush()


class SinkError(WhodunitError):
    """The sink raised: what it was given is given again (after a backoff)."""


_RETRY = (psycopg.OperationalError, DatabaseUnavailableError, SinkError)


class Watcher:
    """
    Reads the trail, detects, submits alerts, checkpoints; again and again.

    Args:
        settings: `whodunit.watch.settings.load`, with the flags applied.
        sink: Takes the alerts (`whodunit.watch.outbox.OutboxSink` in production).
        metrics: Where to count (default: metrics of its own, not served).
    """

    def __init__(
        self, settings: Settings, sink: AlertSink, *, metrics: WatchMetrics | None = None
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.metrics = metrics or metrics_for(settings)
        self.sealer = Sealer(settings.watch.name, metrics=self.metrics)
        self._stopping = threading.Event()
        self._attempt = 0  # failures in a row, for the backoff
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def run(self, *, once: bool = False) -> None:
        """
        Watch until `stop` (or SIGTERM / SIGINT when run in the main thread).

        Args:
            once: Read what has committed, submit, checkpoint, and return (cron, tests);
                errors are raised instead of retried.

        Raises:
            WhodunitError: The schema, the privileges or the settings do not fit, or
                another watcher has this name: retrying would not help.
        """
        with self._signals():
            while not self._stopping.is_set():
                try:
                    self._session(once)
                    return
                except _RETRY as exc:
                    if once:
                        raise
                    self.metrics.reconnects.inc()
                    delay = backoff_delay(
                        self._attempt, _FIRST_BACKOFF, self.settings.watch.backoff_max
                    )
                    self._attempt += 1
                    _log.warning(
                        "watcher %s stopped reading: %s; starting again from its checkpoint "
                        "in %.1f s",
                        self.settings.watch.name,
                        _first_line(exc.__cause__ or exc),
                        delay,
                    )
                    self._pause(delay)

    def stop(self) -> None:
        """Ask the loop to end after the read in progress (safe from any thread)."""
        self._stopping.set()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Release the wake-up pipe (after `run` has returned)."""
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one connected session --------------------------------------------------------

    def _session(self, once: bool) -> None:
        w = self.settings.watch
        dsn = resolve_dsn(self.settings.dsn)
        with (
            connect(dsn, autocommit=True, application_name="whodunit watch") as conn,
            connect(dsn, autocommit=True, application_name="whodunit watch") as listen,
        ):
            # Listening before the first read: a NOTIFY sent during it is not missed.
            waker = Waker(listen)
            reader = Reader(conn, w.name, batch_size=w.batch_size, snippet_chars=w.snippet_chars)
            reader.check()
            reader.lock()
            checkpoint = reader.load("beginning" if w.start == "beginning" else "now")
            detectors = build(self.settings.detectors)
            self._restore(reader, checkpoint, detectors)
            self._attempt = 0
            _log.info("watcher %s reading the trail", w.name)
            while True:
                checkpoint = self._read(reader, checkpoint, detectors)
                if once or self._stopping.is_set():
                    return
                waker.wait(w.poll_interval, self._wake_r)
                if self._stopping.is_set():
                    return

    def _restore(
        self, reader: Reader, checkpoint: Checkpoint, detectors: Sequence[Detector[Any]]
    ) -> None:
        """Give the windowed detectors back what they had seen when *checkpoint* was saved."""
        for page in reader.history(checkpoint):
            for event in page:
                for detector in detectors:
                    detector.observe(event)  # alerts raised then were submitted then
        for detector in detectors:
            detector.end_batch(checkpoint.history_from)

    def _read(
        self, reader: Reader, checkpoint: Checkpoint, detectors: Sequence[Detector[Any]]
    ) -> Checkpoint:
        """Read everything finished since *checkpoint*; return the checkpoint after it."""
        until = reader.position(checkpoint)
        latest: datetime | None = None
        top = {"statement": checkpoint.statement_id, "app_event": checkpoint.app_event_id}
        read: dict[str, list[int]] = {"statement": [], "app_event": []}
        pages: Iterator[tuple[str, Sequence[Event]]] = _chain(
            ("statement", reader.statements(checkpoint, until)),
            ("app_event", reader.app_events(checkpoint, until)),
        )
        for kind, page in pages:
            self.metrics.read(page)
            alerts = [a for event in page for d in detectors for a in d.observe(event)]
            if alerts:
                try:
                    self.sink.submit(alerts)
                except Exception as exc:
                    raise SinkError(f"the alert sink failed: {_first_line(exc)}") from exc
                self.metrics.fired(alerts)
            last = max(event.at for event in page)
            latest = last if latest is None or last > latest else latest
            top[kind] = max(top[kind], *(event.id for event in page))
            read[kind] += [event.id for event in page]
        look_back = max((d.window for d in detectors), default=timedelta(0))
        after = checkpoint.advance(
            until,
            history_from=latest - look_back if latest else checkpoint.history_from,
            statement_id=top["statement"],
            app_event_id=top["app_event"],
        )
        for detector in detectors:
            detector.end_batch(after.history_from)
        # Sealed before the checkpoint moves: a crash in between re-reads the batch, and
        # the sealer skips what is sealed already (see whodunit.watch.seal).
        self.sealer.seal(
            reader.conn,
            since=checkpoint.snapshot,
            until=until.snapshot,
            statement_ids=read["statement"],
            app_event_ids=read["app_event"],
        )
        reader.save(after)
        self.metrics.polled(after)
        return after

    # -- waiting and signals ----------------------------------------------------------

    def _pause(self, seconds: float) -> None:
        """Sleep, unless `stop` is called meanwhile."""
        ready, _, _ = select.select([self._wake_r], [], [], seconds)
        if ready:
            os.read(self._wake_r, 512)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT call `stop` while `run` runs (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            _log.info("watcher %s stopping (signal %s)", self.settings.watch.name, signum)
            self.stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def metrics_for(settings: Settings) -> WatchMetrics:
    """Metrics for a watcher with *settings*: its label cap, its rules' counters at 0."""
    return WatchMetrics(
        max_label_values=settings.watch.metrics_max_label_values,
        rules={d.rule: d.options.severity for d in build(settings.detectors)},
    )


def _chain(*sources: tuple[str, Iterator[Any]]) -> Iterator[tuple[str, Any]]:
    for kind, pages in sources:
        for page in pages:
            yield kind, page


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
