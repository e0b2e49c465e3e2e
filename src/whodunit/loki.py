"""
Ship log records to Loki's HTTP push API from a background thread.

`LokiHandler` is a `logging.Handler` for a process that has no collector next to it.
Where a collector can run, writing JSON to stdout and letting Grafana Alloy ship it stays
the better path (``docs/loki.md``): nothing is lost when the process dies, and the app
spends no CPU on HTTP.

The record is rendered by a `whodunit.log.JSONFormatter` in the thread that logs it (the
bound context lives there), so Loki stores the same JSON line as stdout, redaction
included, without a second implementation of either.  Everything else happens in one
worker thread per process: batching, HTTP, retries, and a disk spool that keeps records
while Loki is away and replays them, oldest first, when it is back.

Labels stay few and fixed (``service``, ``level`` and static ones such as ``env``): each
distinct label set is a stream in Loki, and per-request values as labels would create
millions of them.  Request-scoped ids travel as structured metadata instead (Loki 3+),
queryable without being indexed.

Nothing on the logging path raises or waits for the network.  Problems are counted
(`LokiHandler.stats`) and reported once each through the ``whodunit.internal`` logger,
whose records, like those of httpx and httpcore, this handler never ships: shipping them
could feed a failure back into itself.

Delivery is at least once: a batch whose answer was lost is sent again (Loki ignores an
entry pushed twice with the same timestamp and line while the stream's chunk is still in
memory, so such repeats rarely show).  POSIX only: the spool uses ``flock``.
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import email.utils
import fcntl
import ipaddress
import itertools
import logging
import math
import os
import random
import re
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson

from whodunit import __version__
from whodunit.errors import ConfigError
from whodunit.log import JSONFormatter, _qualified_name, _valid_utf8

__all__ = ["LokiHandler", "LokiStats"]

PUSH_PATH = "/loki/api/v1/push"
#: Record fields sent as structured metadata by default, as Loki names them.
DEFAULT_METADATA = ("correlation_id", "trace_id", "user.id")
#: Loggers never shipped, with their children: our own reports, and the HTTP client's.
IGNORED_LOGGERS = frozenset({"whodunit.internal", "httpx", "httpcore", "h11"})

# One record in memory and in the spool: Unix time in ns, the level name, the JSON line.
_Entry = tuple[int, str, str]
# What the queue holds: records, and the markers `flush` waits on.
_Item = _Entry | threading.Event

_IGNORED_PREFIXES = tuple(f"{name}." for name in IGNORED_LOGGERS)
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ENTRY_OVERHEAD = 64  # bytes of JSON around a line in the push body, roughly
_SEGMENT_SUFFIX = ".jsonl"
_PARTIAL_SUFFIX = ".partial"  # a segment being created: not yet locked, so not yet listed
_MAX_REPORTED_BODY = 300
_MAX_RETRY_AFTER = 3600.0  # a Retry-After beyond an hour is taken as an hour

_internal = logging.getLogger("whodunit.internal")
_shipping = threading.local()  # `active` is set in worker threads
_handlers: weakref.WeakSet[LokiHandler] = weakref.WeakSet()
_sigterm_installed = False

_SignalHandler = Callable[[int, FrameType | None], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class LokiStats:
    """
    Record counts of one `LokiHandler` in this process, since it started (or forked).

    A record can be counted more than once: spooled, then retried, then sent.

    Attributes:
        sent: Records Loki accepted.
        dropped: Records lost: refused by Loki, or, without a spool, not taken after the
            retries, refused by a full queue or emitted after `LokiHandler.close`; cut from
            a spool over its size cap, unreadable in it, or not writable to it; or not
            renderable by the formatter.
        spooled: Records written to the spool.
        retried: Records sent again after a failed attempt.
    """

    sent: int = 0
    dropped: int = 0
    spooled: int = 0
    retried: int = 0


class _Counters:
    """The counters behind `LokiStats`, added to from the app's threads and the worker."""

    __slots__ = ("_lock", "_values")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = {field.name: 0 for field in dataclasses.fields(LokiStats)}

    def add(self, name: str, count: int) -> None:
        with self._lock:
            self._values[name] += count

    def snapshot(self) -> LokiStats:
        with self._lock:
            return LokiStats(**self._values)


class LokiHandler(logging.Handler):
    """
    Push records to Loki in batches from a worker thread, spooling to disk when it is away.

    `emit` renders the record and appends it to a bounded in-memory queue; the worker
    thread starts with the first record.  A batch leaves when it holds *batch_size*
    records or about *batch_bytes* bytes of lines, or *flush_interval* seconds after the
    last one.  A 429, a 5xx or a network error is retried with exponential backoff and
    jitter (or after ``Retry-After`` when Loki sends one); after *max_retries* retries the
    batch goes to the spool, or is dropped without one.  Any other answer means Loki
    refused the batch for good: it is dropped, and the first refusal per status code is
    reported.

    While the spool holds records, new ones join it behind them, so Loki receives them in
    order; they are replayed as soon as Loki answers again.

    Each stream is the static labels plus ``level`` (the level name in lower case).
    The line is the formatter's JSON line, unchanged; the *metadata* fields found in it are
    also sent as structured metadata, dots written as underscores (``user.id`` becomes
    ``user_id``).

    `close` (also run at exit, and on SIGTERM with *handle_sigterm*) sends what it can
    within *close_timeout* seconds and spools the rest.  In a forked child the handler
    starts afresh, with an empty queue and zero counts; the parent sends what it had queued.
    A fork waits for a push in progress (*timeout* at most): httpx imports modules on
    first use, and a child forked in the middle of an import could never ship.

    Args:
        url: Loki's base URL (``https://loki.example:3100``); the push path is added
            unless the URL already ends with it.  Plain http only to a loopback address.
        labels: Static stream labels (``{"env": "prod"}``); ``level`` is reserved.
            Keep them few and constant: every combination is a stream in Loki.
        service_name: The ``service`` label (a ``service`` in *labels* wins), and
            ``service.name`` in the line when the handler makes its own formatter.
        metadata: Record fields to send as structured metadata (Loki 3+); ``()`` for none,
            as an older Loki needs.
        spool_dir: A directory for records Loki could not take yet; created 0700, files
            0600.  Several processes may share it.  None: such records are dropped.
        spool_max_bytes: When the spool grows past this, its oldest segments are deleted.
        batch_size: The most records per push.
        batch_bytes: About the most bytes of lines per push (a bigger record goes alone).
        flush_interval: Seconds a record may wait for its batch to fill.
        queue_size: The most records waiting in memory; with a spool, a full queue moves
            its oldest record to disk to make room, without one the new record is dropped.
        timeout: Seconds for one HTTP request.
        max_retries: Retries of a batch in memory before it goes to the spool.
        backoff: Seconds before the first retry; doubled each time, with jitter.
        max_backoff: The longest wait between retries, ``Retry-After`` aside.
        close_timeout: Seconds `close` may take, and `flush`'s default.
        tenant: Sent as ``X-Scope-OrgID``, for a multi-tenant Loki.
        auth: ``(user, password)`` for basic auth, or a bearer token.  Never logged, and
            masked in ``repr``.
        formatter: A `JSONFormatter` with *service_name* by default; any formatter works,
            but metadata is only found in JSON lines.
        level: The handler's level.
        handle_sigterm: On the first handler created in the main thread, install a SIGTERM
            handler: with the default action (the process dies without running ``atexit``)
            it closes the handlers, then lets the signal kill the process as before; with a
            Python handler already there, it flushes, then calls that handler.  Left alone
            when SIGTERM is ignored or handled outside Python.

    Raises:
        ValueError: A bad URL (`whodunit.errors.ConfigError`), label or size.
        TypeError: *auth* is neither a pair nor a string.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        url: str,
        *,
        labels: Mapping[str, str] | None = None,
        service_name: str | None = None,
        metadata: Iterable[str] = DEFAULT_METADATA,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 100 * 2**20,
        batch_size: int = 1000,
        batch_bytes: int = 2**20,
        flush_interval: float = 1.0,
        queue_size: int = 10_000,
        timeout: float = 5.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        close_timeout: float = 5.0,
        tenant: str | None = None,
        auth: tuple[str, str] | str | None = None,
        formatter: logging.Formatter | None = None,
        level: int | str = logging.NOTSET,
        handle_sigterm: bool = True,
    ) -> None:
        for name, number in (
            ("spool_max_bytes", spool_max_bytes),
            ("batch_size", batch_size),
            ("batch_bytes", batch_bytes),
            ("flush_interval", flush_interval),
            ("queue_size", queue_size),
            ("timeout", timeout),
            ("backoff", backoff),
            ("max_backoff", max_backoff),
            ("close_timeout", close_timeout),
        ):
            if not number > 0:
                raise ValueError(f"LokiHandler got {name}={number!r}: it must be above 0")
        if max_retries < 0:
            raise ValueError(f"LokiHandler got max_retries={max_retries!r}: use 0 or more")
        super().__init__(level)
        self.setFormatter(formatter or JSONFormatter(service_name=service_name))
        self._url = _push_url(url)
        self._labels = _stream_labels(labels, service_name)
        names = (metadata,) if isinstance(metadata, str) else tuple(metadata)
        self._metadata = tuple((name, name.replace(".", "_")) for name in names)
        self._headers = _headers(tenant, auth)
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._flush_interval = flush_interval
        self._queue_size = queue_size
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._close_timeout = close_timeout
        self._spool = (
            None
            if spool_dir is None
            else _Spool(
                Path(spool_dir),
                max_bytes=spool_max_bytes,
                segment_records=batch_size,
                segment_bytes=batch_bytes,
                on_cut=self._spool_cut,
            )
        )
        self._level_labels: dict[str, dict[str, str]] = {}
        self._closed = False
        self._start_runtime()
        _handlers.add(self)
        if handle_sigterm:
            _install_sigterm_handler()

    def _start_runtime(self) -> None:
        """
        Set up the per-process state: at construction, and again in a forked child.

        The child must not send what the parent queued (the parent does), nor touch the
        parent's worker, HTTP connections or locks, which may be mid-use at the fork.
        """
        self._queue: deque[_Item] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline: float | None = None  # set by close(): the worker's last moment
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Held while the worker sets up httpx or talks HTTP, both of which may import
        # modules on first use; a fork waits for it, or the child could inherit a module
        # half imported (seen with httpcore) and never ship at all.
        self._busy = threading.Lock()
        # Who owns the batch being sent: the worker, or close() once it gave up waiting.
        self._handoff = threading.Lock()
        self._inflight: list[_Entry] = []
        self._abandoned = False
        self._failures = 0  # consecutive failed pushes
        self._retry_at = 0.0
        self._last_error = ""
        self._counters = _Counters()
        self._reported: set[str] = set()

    def __repr__(self) -> str:
        extras = "".join(
            f" {key}={value}"
            for key, value in (
                ("labels", self._labels),
                ("tenant", self._headers.get("X-Scope-OrgID")),
                ("auth", "***" if "Authorization" in self._headers else None),
                ("spool", self._spool and self._spool.directory),
            )
            if value
        )
        return f"<{type(self).__name__} {self._url}{extras} ({logging.getLevelName(self.level)})>"

    def stats(self) -> LokiStats:
        """
        Return the record counts of this handler in this process.

        Returns:
            A snapshot; counts only grow.
        """
        return self._counters.snapshot()

    def handle(self, record: logging.LogRecord) -> bool:
        """
        Filter and emit a record, without the handler lock: `emit` only appends to a queue.

        Records of `IGNORED_LOGGERS` are refused here.

        Args:
            record: The record to ship.

        Returns:
            Whether the record passed the filters.
        """
        name = record.name
        if name in IGNORED_LOGGERS or name.startswith(_IGNORED_PREFIXES):
            return False
        verdict: object = self.filter(record) if self.filters else True
        if not verdict:
            return False
        self.emit(verdict if isinstance(verdict, logging.LogRecord) else record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """
        Render the record and queue it; never blocks on the network, never raises.

        Args:
            record: The record to ship.
        """
        try:
            line = self.format(record)
            if not isinstance(self.formatter, JSONFormatter):
                line = _valid_utf8(line)  # a JSONFormatter's text is valid already
            entry = (int(record.created * 1e9), record.levelname, line)
        except RecursionError:  # as logging.Handler.handleError does: do not mask it
            raise
        except Exception as exc:  # noqa: BLE001 - a log call must never raise
            self._counters.add("dropped", 1)
            self._report(
                f"format:{_qualified_name(type(exc))}",
                "LokiHandler could not render a record from logger %s and dropped it; "
                "later failures of this kind are only counted",
                record.name,
                exc_info=exc,
            )
            return
        if self._closed:
            self._spill([entry], "the handler is closed")
            return
        queue = self._queue
        if len(queue) >= self._queue_size:
            self._overflow(entry)
            return
        queue.append(entry)
        if self._worker is None:
            self._start_worker()
        if len(queue) >= self._batch_size and not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout: float | None = None) -> None:
        """
        Wait until every record emitted so far has left memory: sent, spooled or dropped.

        The worker pushes at once rather than at the end of the interval; while Loki is
        failing a record may stay in memory until its retries run out, so the wait can end
        first.

        Args:
            timeout: The most seconds to wait; *close_timeout* by default.
        """
        if self._closed or self._worker is None:
            return
        marker = threading.Event()
        self._queue.append(marker)
        self._wake.set()
        marker.wait(self._close_timeout if timeout is None else timeout)

    def close(self) -> None:
        """
        Send what is left within *close_timeout* seconds, spool the rest, stop the worker.

        Records emitted afterwards go straight to the spool (or are dropped without one).
        A push still waiting for Loki at the deadline is spooled as well; if Loki takes it
        after all, it is sent twice, and Loki keeps one.
        """
        if self._closed:
            return
        self._closed = True
        try:
            deadline = time.monotonic() + self._close_timeout
            worker = self._worker
            if worker is not None:
                self._deadline = deadline
                self._stop.set()
                self._wake.set()
                worker.join(max(0.0, deadline - time.monotonic()))
            leftovers, markers = self._take_over(deadline)
            if leftovers:
                self._spill(leftovers, "they were left when the handler closed")
            for marker in markers:
                marker.set()
            if self._spool is not None:
                self._spool.close()
        finally:
            super().close()

    def _take_over(self, deadline: float) -> tuple[list[_Entry], list[threading.Event]]:
        """Take the batch the worker is still sending, and the queue, from the worker."""
        leftovers: list[_Entry] = []
        # Only a worker stuck on the spool lock holds it for long: then it keeps its batch.
        if self._handoff.acquire(timeout=max(0.1, deadline - time.monotonic())):
            try:
                self._abandoned = True
                leftovers, self._inflight = self._inflight, []
            finally:
                self._handoff.release()
        entries, markers = self._drain()
        return leftovers + entries, markers

    def _drain(self) -> tuple[list[_Entry], list[threading.Event]]:
        """Empty the queue: the records, and the flush markers to set once they are safe."""
        entries: list[_Entry] = []
        markers: list[threading.Event] = []
        queue = self._queue
        while queue:
            try:
                item = queue.popleft()
            except IndexError:  # the worker took the last one
                break
            if isinstance(item, threading.Event):
                markers.append(item)
            else:
                entries.append(item)
        return entries, markers

    def _spill_queue(self, why: str) -> None:
        entries, markers = self._drain()
        if entries:
            self._spill(entries, why)
        for marker in markers:
            marker.set()

    def _overflow(self, entry: _Entry) -> None:
        """
        Make room in a full queue.

        With a spool, the oldest queued record goes to disk and the new one joins the
        queue: the spool is replayed before the queue, so Loki still gets them in order.
        """
        if self._spool is None:
            self._spill([entry], "the queue is full")
            return
        try:
            oldest = self._queue.popleft()
        except IndexError:  # the worker emptied it meanwhile
            oldest = entry
        else:
            if isinstance(oldest, threading.Event):  # a flush marker stays where it was
                self._queue.appendleft(oldest)
                oldest = entry
            else:
                self._queue.append(entry)
        self._spill([oldest], "the queue is full")

    def _spill(self, entries: Sequence[_Entry], why: str, detail: str = "") -> None:
        """
        Put records that cannot be sent now in the spool, or count them as dropped.

        The first drop for each *why* is reported, with its *detail*.
        """
        spool = self._spool
        if spool is None:
            self._counters.add("dropped", len(entries))
            self._report(
                f"drop:{why}",
                "LokiHandler dropped records because %s%s, and it has no spool_dir; "
                "later drops are only counted (see stats())",
                why,
                detail,
            )
            return
        try:
            spool.append(entries)
        except OSError as exc:
            self._counters.add("dropped", len(entries))
            self._report(
                "spool-error",
                "LokiHandler could not write to its spool %s (%s: %s) and dropped records; "
                "later failures are only counted",
                spool.directory,
                type(exc).__name__,
                exc,
            )
            return
        self._counters.add("spooled", len(entries))

    def _spool_cut(self, count: int) -> None:
        """Count records the spool deleted to stay under its cap."""
        self._counters.add("dropped", count)
        self._report(
            "spool-full",
            "LokiHandler's spool went over spool_max_bytes and its oldest records were "
            "deleted (see stats()); later deletions are only counted",
        )

    def _report(self, kind: str, message: str, *args: object, exc_info: Any = None) -> None:
        """Tell ``whodunit.internal`` about a problem, once per kind and process."""
        if kind in self._reported:
            return
        self._reported.add(kind)
        _internal.warning(message, *args, exc_info=exc_info)

    def _start_worker(self) -> None:
        with self._start_lock:
            if self._worker is not None:
                return
            worker = threading.Thread(target=self._run, name="whodunit-loki", daemon=True)
            try:
                worker.start()
            except RuntimeError as exc:  # interpreter shutting down, or out of threads
                self._report("thread", "LokiHandler could not start its worker: %s", exc)
                return
            self._worker = worker

    # Everything below runs in the worker thread.

    def _run(self) -> None:
        _shipping.active = True
        try:
            with self._busy:
                client = httpx.Client(headers=self._headers, timeout=self._timeout)
        except Exception as exc:  # noqa: BLE001 - say why nothing will be sent
            self._report("client", "LokiHandler could not set up its HTTP client", exc_info=exc)
            return
        with client:
            while True:
                self._wake.wait(self._flush_interval)
                self._wake.clear()
                stopping = self._stop.is_set()
                try:
                    self._cycle(client)
                except Exception as exc:  # noqa: BLE001 - the worker must outlive any bug
                    self._report("worker", "LokiHandler's worker failed", exc_info=exc)
                if stopping or self._abandoned:
                    return

    def _cycle(self, client: httpx.Client) -> None:
        """Push everything queued, or, while the spool has a backlog, spool it and replay."""
        spool = self._spool
        backlog = spool is not None and spool.has_backlog()
        while not self._abandoned:
            if backlog or (spool is not None and self._failures):
                self._spill_queue("Loki is catching up")
                self._replay(client)
                return
            with self._handoff:
                if self._abandoned:
                    return
                batch, markers = self._take()
                self._inflight = batch
            try:
                if batch:
                    self._send(client, batch)
            finally:
                for marker in markers:
                    marker.set()
            if not batch and not markers:
                return

    def _take(self) -> tuple[list[_Entry], list[threading.Event]]:
        """The next batch from the queue; it ends at a flush marker."""
        queue = self._queue
        batch: list[_Entry] = []
        size = 0
        while queue:
            item = queue[0]
            if isinstance(item, threading.Event):
                queue.popleft()
                return batch, [item]
            cost = len(item[2]) + _ENTRY_OVERHEAD
            if not self._room_for(len(batch), size, cost):
                break
            queue.popleft()
            batch.append(item)
            size += cost
        return batch, []

    def _room_for(self, count: int, size: int, cost: int) -> bool:
        """Whether a batch of *count* records, *size* bytes, takes one of *cost* bytes more."""
        return not count or (count < self._batch_size and size + cost <= self._batch_bytes)

    def _send(self, client: httpx.Client, batch: list[_Entry]) -> None:
        """Push a batch from memory with retries; spool (or drop) it if Loki stays away."""
        attempts = 0
        while True:
            delay = self._push(client, batch, retrying=attempts > 0)
            if delay is None:
                break
            attempts += 1
            if attempts > self._max_retries or not self._pause(delay):
                with self._handoff:
                    if self._abandoned:  # close() has spooled it already
                        return
                    self._inflight = []
                self._retry_at = time.monotonic() + delay
                detail = f" after {attempts - 1} retries (last error: {self._last_error})"
                if self._spool is not None:
                    self._report(
                        "unreachable",
                        "Loki at %s did not take a batch%s; records wait in the spool until "
                        "it does, and later failures are not reported",
                        self._url,
                        detail,
                    )
                self._spill(batch, "Loki could not be reached", detail)
                return
        with self._handoff:
            self._inflight = []

    def _replay(self, client: httpx.Client) -> None:
        """Send spool segments, oldest first, until it is empty or a push fails."""
        spool = self._spool
        while spool is not None and not self._abandoned and time.monotonic() >= self._retry_at:
            claim = spool.claim()
            if claim is None:
                return
            if claim.unreadable:
                self._counters.add("dropped", claim.unreadable)
                self._report(
                    "spool-unreadable",
                    "LokiHandler dropped unreadable lines of spool segment %s",
                    claim.path,
                )
            done = True
            for batch in self._batches(claim.entries):
                # After a failure, the oldest segment is the one that failed.
                delay = self._push(client, batch, retrying=self._failures > 0)
                if delay is not None:
                    self._retry_at = time.monotonic() + delay
                    done = False
                    break
            spool.finish(claim, delete=done)
            if not done:
                return

    def _batches(self, entries: list[_Entry]) -> Iterable[list[_Entry]]:
        """Cut a spool segment written with other limits into batches of ours."""
        batch: list[_Entry] = []
        size = 0
        for entry in entries:
            cost = len(entry[2]) + _ENTRY_OVERHEAD
            if not self._room_for(len(batch), size, cost):
                yield batch
                batch, size = [], 0
            batch.append(entry)
            size += cost
        if batch:
            yield batch

    def _push(self, client: httpx.Client, batch: list[_Entry], *, retrying: bool) -> float | None:
        """
        Push a batch once.

        Returns:
            None when Loki has answered for good (taken, or refused: then it is dropped),
            else the seconds to wait before trying again.
        """
        timeout = self._timeout
        if self._deadline is not None:  # closing: no request may outlive the deadline
            timeout = min(timeout, self._deadline - time.monotonic())
        retry_after = None
        if timeout <= 0:
            self._last_error = "no time left before close()'s deadline"
        else:
            if retrying:
                self._counters.add("retried", len(batch))
            body = self._body(batch)
            try:
                with self._busy:
                    response = client.post(self._url, content=body, timeout=timeout)
            except httpx.HTTPError as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status < 300:
                    self._failures = 0
                    self._counters.add("sent", len(batch))
                    return None
                if status != 429 and status < 500:
                    self._failures = 0
                    self._counters.add("dropped", len(batch))
                    self._report(
                        f"rejected:{status}",
                        "Loki at %s refused %d records with HTTP %d (%s) and they were "
                        "dropped; later refusals with this status are only counted",
                        self._url,
                        len(batch),
                        status,
                        response.text[:_MAX_REPORTED_BODY].strip(),
                    )
                    return None
                self._last_error = f"HTTP {status}"
                retry_after = _retry_after(response)
        self._failures += 1
        if retry_after is not None:
            return retry_after
        delay = min(self._max_backoff, self._backoff * 2.0 ** min(self._failures - 1, 32))
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret

    def _pause(self, delay: float) -> bool:
        """Wait before a retry; False when that would pass close()'s deadline."""
        end = time.monotonic() + delay
        if not self._stop.wait(delay):
            return True
        deadline = self._deadline
        if deadline is None or end > deadline:
            return False
        time.sleep(max(0.0, end - time.monotonic()))
        return True

    def _body(self, batch: list[_Entry]) -> bytes:
        """The push request: one stream per level, each value ``[ns, line, metadata]``."""
        streams: dict[str, list[list[object]]] = {}
        for ns, level, line in batch:
            value: list[object] = [str(ns), line]
            metadata = self._find_metadata(line) if self._metadata else None
            if metadata:
                value.append(metadata)
            streams.setdefault(level, []).append(value)
        return orjson.dumps(
            {
                "streams": [
                    {"stream": self._labels_for(level), "values": values}
                    for level, values in streams.items()
                ]
            }
        )

    def _labels_for(self, level: str) -> dict[str, str]:
        labels = self._level_labels.get(level)
        if labels is None:
            labels = self._level_labels[level] = {**self._labels, "level": level.lower()}
        return labels

    def _find_metadata(self, line: str) -> dict[str, str] | None:
        """
        Read the metadata fields back from the rendered line.

        The line is the one place where the formatter has already merged the context
        with the extras and redacted them, so it is read rather than the record.
        """
        try:
            fields = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(fields, dict):
            return None
        found: dict[str, str] = {}
        for name, key in self._metadata:
            value = fields.get(name)
            if isinstance(value, str):
                found[key] = value
            elif isinstance(value, int | float) and not isinstance(value, bool):
                found[key] = str(value)
        return found

    def _hold_for_fork(self) -> bool:
        """Wait (a request at most) until the worker is out of httpx; True if it is."""
        return self._busy.acquire(timeout=self._timeout)

    def _release_after_fork(self) -> None:
        self._busy.release()

    def _after_fork_in_child(self) -> None:
        if self._spool is not None:
            self._spool.after_fork()
        if not self._closed:
            self._start_runtime()


@dataclasses.dataclass(slots=True)
class _Claim:
    """A spool segment this process is sending, locked so that no other process does."""

    path: Path
    fd: int
    entries: list[_Entry]
    unreadable: int


class _Spool:
    """
    Records Loki could not take yet, in segment files replayed oldest first.

    A segment is at most one push (*segment_records* records, *segment_bytes* bytes), one
    JSON array ``[ns, level, line]`` per line, named by its creation time and pid so that
    names sort oldest first and processes sharing the directory never collide.
    A process holds an ``flock`` on the segment it writes and on those it sends, and skips
    segments locked by others; a process that dies loses its locks, so its segments are
    replayed by whichever process comes next.  Each append is one ``write()`` with no
    buffer, so a crash loses nothing written, and a fork inherits no half-written buffer.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_records: int,
        segment_bytes: int,
        on_cut: Callable[[int], None],
    ) -> None:
        self.directory = directory
        self._max_bytes = max_bytes
        self._on_cut = on_cut
        self._segment_records = segment_records
        self._segment_bytes = segment_bytes
        self._private_directory()
        self._names = itertools.count()
        self._fd: int | None = None  # the segment being written
        self._records = 0
        self._bytes = 0
        # Segments listed and not yet tried, oldest first: one listing serves a whole
        # replay, rather than one per segment.
        self._listed: deque[Path] = deque()
        self._lock = threading.Lock()

    def _private_directory(self) -> None:
        """Create the directory 0700, or tighten it: the records may hold personal data."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.directory.stat().st_mode & 0o077:
                self.directory.chmod(0o700)
        except OSError as exc:
            raise ConfigError(
                f"the Loki spool directory {str(self.directory)!r} cannot be made private "
                f"to this user ({exc.strerror}): pass a spool_dir this user owns"
            ) from exc

    def after_fork(self) -> None:
        """Forget the parent's segment (the parent finishes it) and its lock."""
        if self._fd is not None:
            os.close(self._fd)  # the parent's descriptor, and its flock, stay open
        self._fd, self._records, self._bytes = None, 0, 0
        self._listed.clear()
        self._lock = threading.Lock()

    def append(self, entries: Sequence[_Entry]) -> None:
        """Write records at the end of the spool, one ``write()`` per segment touched."""
        lines = [orjson.dumps(entry) + b"\n" for entry in entries]
        with self._lock:
            start = 0
            while start < len(lines):
                if self._records and self._bytes + len(lines[start]) > self._segment_bytes:
                    self._seal()
                fd = self._open() if self._fd is None else self._fd
                end, size = start + 1, len(lines[start])  # one record always fits
                room = self._segment_records - self._records
                while end < len(lines) and end - start < room:
                    if self._bytes + size + len(lines[end]) > self._segment_bytes:
                        break
                    size += len(lines[end])
                    end += 1
                _write_all(fd, b"".join(lines[start:end]))
                self._records += end - start
                self._bytes += size
                start = end
                if self._records >= self._segment_records or self._bytes >= self._segment_bytes:
                    self._seal()

    def _open(self) -> int:
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._names):06d}"
        partial = self.directory / f"{name}{_PARTIAL_SUFFIX}"
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(partial, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Renamed once locked: another process never sees it unlocked and empty.
            partial.rename(self.directory / f"{name}{_SEGMENT_SUFFIX}")
        except OSError:
            os.close(fd)
            raise
        self._fd, self._records, self._bytes = fd, 0, 0
        return fd

    def _seal(self) -> None:
        """Close the segment being written, so it can be sent; enforce the size cap."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd, self._records, self._bytes = None, 0, 0
        cut = self._enforce_cap()
        if cut:
            self._on_cut(cut)

    def _enforce_cap(self) -> int:
        """Delete the oldest segments nobody holds until the spool fits; count their records."""
        segments = []
        for path in self._segments():
            try:
                segments.append((path, path.stat().st_size))
            except FileNotFoundError:  # sent by another process meanwhile
                continue
        total = sum(size for _, size in segments)
        cut = 0
        for path, size in segments:
            if total <= self._max_bytes:
                break
            claimed = self._lock_segment(path)
            if claimed is None:
                continue
            fd, data = claimed
            try:
                path.unlink()
                cut += data.count(b"\n")
                total -= size
            finally:
                os.close(fd)
        return cut

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{_SEGMENT_SUFFIX}"))

    def has_backlog(self) -> bool:
        """Whether any segment waits, this process's or another's."""
        try:
            with os.scandir(self.directory) as found:
                return any(entry.name.endswith(_SEGMENT_SUFFIX) for entry in found)
        except OSError:
            return False

    def claim(self) -> _Claim | None:
        """
        Lock and read the oldest segment no other process holds.

        The segment being written is sealed first, so that it can be sent too.
        """
        with self._lock:
            self._seal()
            if not self._listed:
                self._listed.extend(self._segments())
            while self._listed:
                path = self._listed.popleft()
                claimed = self._lock_segment(path)
                if claimed is not None:
                    fd, data = claimed
                    entries, unreadable = _parse_segment(data)
                    return _Claim(path, fd, entries, unreadable)
        return None

    def finish(self, claim: _Claim, *, delete: bool) -> None:
        """Let go of a segment: deleted once sent, else kept and tried first next time."""
        try:
            if delete:
                claim.path.unlink(missing_ok=True)
            else:
                with self._lock:
                    self._listed.appendleft(claim.path)
        finally:
            os.close(claim.fd)

    def close(self) -> None:
        with self._lock:
            self._seal()

    @staticmethod
    def _lock_segment(path: Path) -> tuple[int, bytes] | None:
        """Open, lock and read a segment, or None if another process holds it or took it."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink == 0:  # sent and deleted between listing and locking
                raise BlockingIOError
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        except OSError:
            os.close(fd)
            return None
        return fd, b"".join(chunks)


def _parse_segment(data: bytes) -> tuple[list[_Entry], int]:
    """The records of a segment, and how many lines were unreadable (a crash mid-write)."""
    entries: list[_Entry] = []
    unreadable = 0
    for raw in data.splitlines():
        try:
            ns, level, line = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            unreadable += 1
            continue
        if type(ns) is int and type(level) is str and type(line) is str:
            entries.append((ns, level, line))
        else:
            unreadable += 1
    return entries, unreadable


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _push_url(url: str) -> str:
    """Check the URL and point it at the push endpoint."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"the Loki URL {url!r} is not a valid URL ({exc})") from exc
    if parsed.userinfo:
        bare = parsed.copy_with(username=None, password=None)
        raise ConfigError(
            f"the Loki URL {str(bare)!r} carries a user name or password: pass them as "
            "auth=(user, password) instead, so that they never appear in logs"
        )
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            f"the Loki URL {url!r} must be an http(s) URL with a host, such as "
            "'https://loki.example:3100'"
        )
    if parsed.scheme == "http" and not _is_loopback(parsed.host):
        raise ConfigError(
            f"the Loki URL {url!r} must use https: plain http would carry the logs, and any "
            "credentials, in clear text; use https://, or plain http only to a loopback "
            "address (localhost, 127.0.0.1, ::1)"
        )
    path = parsed.path.rstrip("/")
    if not path.endswith(PUSH_PATH):
        path += PUSH_PATH
    return str(parsed.copy_with(path=path))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _stream_labels(labels: Mapping[str, str] | None, service_name: str | None) -> dict[str, str]:
    merged = {} if service_name is None else {"service": service_name}
    merged.update(labels or {})
    for name, value in merged.items():
        if name == "level" or not _LABEL_NAME.match(name):
            raise ValueError(
                f"LokiHandler cannot use the label name {name!r}: use letters, digits and "
                "underscores, not starting with a digit ('level' is set from each record)"
            )
        if not isinstance(value, str) or not value:
            raise ValueError(f"LokiHandler got {value!r} for label {name!r}: use a non-empty str")
    return merged


def _headers(tenant: str | None, auth: tuple[str, str] | str | None) -> httpx.Headers:
    """The request headers; httpx masks ``Authorization`` in its repr."""
    headers = httpx.Headers(
        {"Content-Type": "application/json", "User-Agent": f"whodunit/{__version__}"}
    )
    if tenant is not None:
        headers["X-Scope-OrgID"] = tenant
    if isinstance(auth, str):
        headers["Authorization"] = f"Bearer {auth}"
    elif isinstance(auth, tuple) and len(auth) == 2:
        pair = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {pair}"
    elif auth is not None:
        raise TypeError(
            f"LokiHandler got auth of type {type(auth).__name__}: pass (user, password) for "
            "basic auth or a str for a bearer token"
        )
    return headers


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), if any."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(0.0, seconds), _MAX_RETRY_AFTER) if math.isfinite(seconds) else None


class _NotFromWorker(logging.Filter):
    """
    Keep httpx's line about each of our own pushes out of the app's logs.

    httpx logs every request at INFO: one line per push, at every flush interval, in the
    app's own output.  The app's own requests are still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_shipping, "active", False)


def _close_all() -> None:
    """
    Close every handler at exit.

    Registered after `logging`'s own exit hook, so it runs first: `logging.shutdown`
    would flush and then close each handler, each step with its own wait.
    """
    for handler in list(_handlers):
        handler.close()


def _install_sigterm_handler() -> None:
    """Once per process, from the main thread only (`signal.signal` refuses other threads)."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    _sigterm_installed = True
    previous = signal.getsignal(signal.SIGTERM)
    if callable(previous):
        signal.signal(signal.SIGTERM, _on_sigterm(previous))
    elif previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm(None))


def _on_sigterm(previous: _SignalHandler | None) -> _SignalHandler:
    def handle(signum: int, frame: FrameType | None) -> None:
        if previous is not None:
            # The app's handler decides how to stop; at exit close() runs anyway.
            for handler in list(_handlers):
                handler.flush()
            previous(signum, frame)
            return
        _close_all()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    return handle


_held_for_fork: list[LokiHandler] = []


def _before_fork() -> None:
    _held_for_fork.extend(handler for handler in list(_handlers) if handler._hold_for_fork())


def _after_fork_in_parent() -> None:
    for handler in _held_for_fork:
        handler._release_after_fork()
    _held_for_fork.clear()


def _after_fork_in_child() -> None:
    _held_for_fork.clear()  # the child's handlers get new locks
    for handler in list(_handlers):
        handler._after_fork_in_child()


logging.getLogger("httpx").addFilter(_NotFromWorker())
atexit.register(_close_all)
os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
