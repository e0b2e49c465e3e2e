"""
Watcher latency and ingest: from the COMMIT of a destructive statement to its alert, and
whether the watcher keeps up with a steady stream of audited statements.

1. Latency: *n* DELETEs of 100 rows (enough to send ``NOTIFY whodunit``), one at a time;
   each is timed from just before its COMMIT to the moment its alert reaches the sink (an
   in-process sink that notes the arrival time).  The watcher polls every 60 s, so what
   is measured is the NOTIFY path.
2. Baseline: ``pg_notify`` alone, COMMIT to a listening connection, *n* times.
3. Ingest: pgbench writes single-row INSERTs (10 per transaction) at ``--rate``
   statements/s for ``--seconds`` while the watcher runs with its default 1 s poll; the
   table reports statements/s written and read, and the watcher's lag over the run.
   A small machine may not write that fast, so:
4. Capacity: ``--backlog`` audited statements committed at once, then read by
   ``watch --once``: the statements/s the watcher can read and check at most.

    python benchmarks/watch_latency.py                  # embedded PostgreSQL 18
    python benchmarks/watch_latency.py --dsn postgresql://... -n 200 --rate 5000

The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from _environment import database, environment  # the script's own folder is on sys.path
from rich.console import Console
from rich.table import Table

from whodunit.db.embedded import embedded_bin_dir
from whodunit.db.install import install
from whodunit.watch.alert import Alert
from whodunit.watch.daemon import Watcher
from whodunit.watch.detectors import MassChangeOptions
from whodunit.watch.metrics import WatchMetrics
from whodunit.watch.settings import Settings, WatchSettings

ROWS_PER_DELETE = 100  # notify_min_rows: the capture NOTIFYs for this many rows
STATEMENTS_PER_TRANSACTION = 10


class TimingSink:
    """An `AlertSink` that notes when each statement's alert arrived."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self._cond = threading.Condition()

    def submit(self, alerts: Sequence[Alert]) -> None:
        now = time.perf_counter()
        with self._cond:
            for alert in alerts:
                for statement_id in alert.statement_ids:
                    self.arrived.setdefault(statement_id, now)
            self._cond.notify_all()

    def wait(self, statement_id: int, timeout: float = 10) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: statement_id in self.arrived, timeout):
                raise SystemExit(f"no alert for statement {statement_id} within {timeout} s")
            return self.arrived[statement_id]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", help="a superuser DSN (default: a throwaway embedded cluster)")
    parser.add_argument("-n", type=int, default=200, help="destructive events to time")
    parser.add_argument("--rate", type=int, default=5000, help="statements/s for the ingest")
    parser.add_argument("--seconds", type=int, default=20, help="length of the ingest run")
    parser.add_argument("--clients", type=int, default=8, help="pgbench clients")
    parser.add_argument("--backlog", type=int, default=100_000, help="statements to drain")
    args = parser.parse_args()

    with database(args.dsn) as dsn:
        run(dsn, args)


def run(dsn: str, args: argparse.Namespace) -> None:
    console = Console(stderr=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        server = setup(conn, args.n)
    sink = TimingSink()
    metrics = WatchMetrics()
    mass = MassChangeOptions(statement_rows=ROWS_PER_DELETE)
    settings = Settings(
        dsn=dsn,
        watch=WatchSettings(name="bench", metrics_port=0, poll_interval=60),
        detectors={**Settings().detectors, "mass_delete": mass},
    )
    console.log(f"latency: {args.n} DELETEs of {ROWS_PER_DELETE} rows, COMMIT to alert")
    with Watcher(settings, sink, metrics=metrics) as watcher:
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        try:
            _wait_started(dsn, "bench")
            latencies = destructive_latencies(dsn, sink, args.n)
        finally:
            watcher.stop()
            thread.join(30)
    console.log(f"baseline: pg_notify alone, {args.n} times")
    baseline = notify_latencies(dsn, args.n)

    console.log(f"ingest: {args.rate:,} statements/s for {args.seconds} s (pgbench)")
    ingest_settings = Settings(dsn=dsn, watch=WatchSettings(name="ingest", metrics_port=0))
    ingest_metrics = WatchMetrics()
    with Watcher(ingest_settings, TimingSink(), metrics=ingest_metrics) as watcher:
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        try:
            _wait_started(dsn, "ingest")
            ingest = sustained_ingest(dsn, ingest_metrics, args)
        finally:
            watcher.stop()
            thread.join(30)

    console.log(f"capacity: {args.backlog:,} statements committed at once, then read")
    capacity = drain(dsn, args.backlog)

    p50, p95 = _percentiles(latencies)
    n50, n95 = _percentiles(baseline)
    table = Table(title=f"whodunit watch — PostgreSQL {server}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(f"COMMIT → alert in sink, p50 ({args.n} events)", f"{p50:.1f} ms")
    table.add_row("COMMIT → alert in sink, p95", f"{p95:.1f} ms")
    table.add_row("pg_notify alone, p50", f"{n50:.1f} ms")
    table.add_row("pg_notify alone, p95", f"{n95:.1f} ms")
    table.add_row("ingest: statements/s written", f"{ingest['written_per_s']:,.0f}")
    table.add_row("ingest: statements/s read by the watcher", f"{ingest['processed_per_s']:,.0f}")
    table.add_row("ingest: lag, first half of the run (max)", f"{ingest['lag_first_s']:.2f} s")
    table.add_row("ingest: lag, second half of the run (max)", f"{ingest['lag_second_s']:.2f} s")
    table.add_row("ingest: caught up after the load stopped in", f"{ingest['catch_up_s']:.2f} s")
    table.add_row(
        f"capacity: statements/s read from a {args.backlog:,} backlog", f"{capacity:,.0f}"
    )
    Console().print(table)
    summary: dict[str, Any] = {
        "bench": "watch_latency",
        "events": args.n,
        "p50_ms": round(p50, 2),
        "p95_ms": round(p95, 2),
        "notify_p50_ms": round(n50, 2),
        "notify_p95_ms": round(n95, 2),
        **{f"ingest_{k}": round(v, 2) if isinstance(v, float) else v for k, v in ingest.items()},
        "capacity_per_s": round(capacity),
        "postgres": server,
        **environment(),
    }
    print(orjson.dumps(summary).decode())


def setup(conn: psycopg.Connection[Any], n: int) -> str:
    conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
    conn.execute("CREATE SCHEMA bench")
    conn.execute("CREATE TABLE bench.account (id int PRIMARY KEY, v text NOT NULL)")
    conn.execute("CREATE TABLE bench.ingest (id bigserial PRIMARY KEY, v text NOT NULL)")
    conn.execute(
        "INSERT INTO bench.account SELECT g, 'row ' || g FROM generate_series(1, %s) g",
        (n * ROWS_PER_DELETE,),
    )
    install(conn, ["bench"])
    conn.execute("VACUUM ANALYZE")
    row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def destructive_latencies(dsn: str, sink: TimingSink, n: int) -> list[float]:
    """Milliseconds from COMMIT to the alert's arrival, for *n* DELETEs, one at a time."""
    latencies = []
    with psycopg.connect(dsn) as conn:
        for i in range(n):
            low = i * ROWS_PER_DELETE + 1
            conn.execute(
                "DELETE FROM bench.account WHERE id BETWEEN %s AND %s",
                (low, low + ROWS_PER_DELETE - 1),
            )
            row = conn.execute("SELECT currval('whodunit.statement_id_seq')").fetchone()
            assert row is not None
            start = time.perf_counter()
            conn.commit()
            latencies.append((sink.wait(int(row[0])) - start) * 1000)
    return latencies


def notify_latencies(dsn: str, n: int) -> list[float]:
    """Milliseconds from COMMIT to a listener, for pg_notify alone."""
    with (
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn) as sender,
    ):
        listener.execute("LISTEN bench")
        latencies = []
        for i in range(n):
            sender.execute("SELECT pg_notify('bench', %s)", (str(i),))
            start = time.perf_counter()
            sender.commit()
            next(listener.notifies(timeout=10, stop_after=1))
            latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def sustained_ingest(dsn: str, metrics: WatchMetrics, args: argparse.Namespace) -> dict[str, Any]:
    """Write at --rate statements/s with pgbench; watch the watcher's reads and lag."""
    value = metrics.registry.get_sample_value
    read_before = value("whodunit_watch_events_read_total", {"kind": "statement"}) or 0
    script = "\n".join(
        ["INSERT INTO bench.ingest (v) VALUES ('steady traffic');"] * STATEMENTS_PER_TRANSACTION
    )
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(script + "\n")
    os.chmod(handle.name, 0o644)
    tps = args.rate / STATEMENTS_PER_TRANSACTION
    command = [
        str(embedded_bin_dir() / "pgbench"), "-n", "-M", "prepared", "-c", str(args.clients),
        "-j", str(min(args.clients, 2)), "-T", str(args.seconds), "-R", str(tps),
        "-f", handle.name, dsn,
    ]  # fmt: skip
    lags: list[tuple[float, float]] = []
    started = time.monotonic()
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as bench:
            while bench.poll() is None:
                time.sleep(0.25)
                lags.append((time.monotonic() - started, value("whodunit_watch_lag_seconds") or 0))
            out = (bench.stdout.read() if bench.stdout else b"").decode()
    finally:
        os.unlink(handle.name)
    elapsed = time.monotonic() - started
    match = re.search(r"number of transactions actually processed: (\d+)", out)
    if not match:
        raise SystemExit(f"pgbench printed no transaction count:\n{out}")
    written = int(match[1]) * STATEMENTS_PER_TRANSACTION

    def read() -> float:
        return (value("whodunit_watch_events_read_total", {"kind": "statement"}) or 0) - read_before

    read_during = read()
    stop = time.monotonic()
    while read() < written:
        if time.monotonic() - stop > 120:
            raise SystemExit("the watcher did not catch up within 120 s")
        time.sleep(0.05)
    half = elapsed / 2
    return {
        "target_per_s": args.rate,
        "written_per_s": written / elapsed,
        "processed_per_s": read_during / elapsed,
        "lag_first_s": max((lag for t, lag in lags if t <= half), default=0.0),
        "lag_second_s": max((lag for t, lag in lags if t > half), default=0.0),
        "catch_up_s": time.monotonic() - stop,
    }


def drain(dsn: str, backlog: int) -> float:
    """Statements/s a ``--once`` watcher reads from a backlog of *backlog* statements."""
    settings = Settings(dsn=dsn, watch=WatchSettings(name="drain", metrics_port=0))
    metrics = WatchMetrics()
    with Watcher(settings, TimingSink(), metrics=metrics) as watcher:
        watcher.run(once=True)  # the checkpoint: the backlog comes after it
        with psycopg.connect(dsn, autocommit=True) as conn:
            # One statement row per INSERT: the loop runs each as its own statement.
            conn.execute("SELECT set_config('bench.backlog', %s, false)", (str(backlog),))
            conn.execute(
                "DO $$ BEGIN FOR i IN 1..current_setting('bench.backlog')::int LOOP "
                "INSERT INTO bench.ingest (v) VALUES ('backlog'); END LOOP; END $$"
            )
        start = time.perf_counter()
        watcher.run(once=True)
        elapsed = time.perf_counter() - start
    read = metrics.registry.get_sample_value(
        "whodunit_watch_events_read_total", {"kind": "statement"}
    )
    if read != backlog:
        raise SystemExit(f"the watcher read {read} statements of a backlog of {backlog}")
    return backlog / elapsed


def _wait_started(dsn: str, name: str) -> None:
    """Wait until the watcher *name* has its checkpoint: it reads what commits from then."""
    deadline = time.monotonic() + 30
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute(
            "SELECT 1 FROM whodunit.watch_checkpoint WHERE name = %s", (name,)
        ).fetchone():
            if time.monotonic() > deadline:
                raise SystemExit(f"the watcher {name} did not start within 30 s")
            time.sleep(0.05)


def _percentiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return statistics.median(values), cuts[94]


if __name__ == "__main__":
    main()
