"""
JSON log throughput: whodunit against structlog, python-json-logger and a plain stdlib setup.

Every variant writes N records (one fixed message plus 8 fields bound as request context)
to a file, the way an application would set it up.  The N records are split into rounds;
each round runs every variant once, in a rotated order, so that machine noise hits every
variant alike.  The table shows the median over rounds of records per CPU-second of this
process (CPU time, not wall time: the machines this runs on are shared and noisy), and the
ratios in the JSON line are medians of the ratios within each round.

    python benchmarks/log_throughput.py                    # 200,000 records, 20 rounds
    python benchmarks/log_throughput.py -n 50000 --rounds 10

Needs structlog and python-json-logger (the ``bench`` extra).  The last line printed is a
JSON summary; ``*_vs_*`` keys are speed ratios (higher means whodunit is faster).
"""

from __future__ import annotations

import argparse
import contextvars
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import structlog
from _environment import environment  # the script's own folder is on sys.path
from pythonjsonlogger.json import JsonFormatter
from pythonjsonlogger.orjson import OrjsonFormatter
from rich.console import Console
from rich.table import Table

from whodunit.log import Logger, _use_fast_path, bind, clear_context, configure_logging, get_logger

MESSAGE = "request handled"
CONTEXT: dict[str, Any] = {
    "correlation_id": "01JDQ6X7W3M9ZK2V8RTYB4C5NE",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "span_id": "00f067aa0ba902b7",
    "user.id": "1042",
    "user.name": "jdoe",
    "http.request.method": "POST",
    "http.route": "/api/orders/<int:order_id>",
    "client.address": "203.0.113.9",
}
STDLIB_SRCFILE = logging._srcfile

# A variant gets a path and the record count, sets itself up, and returns the CPU seconds
# the N logging calls took (set-up and tear-down excluded).
Variant = Callable[[Path, int], float]
VARIANTS: dict[str, Variant] = {}
BASELINE = "structlog, merge_contextvars"
OURS = "whodunit, stdlib logging calls"
NATIVE = "whodunit, native Logger"
FASTEST = "structlog, orjson + BytesLogger"
PJL_DEFAULT = "python-json-logger, default"


def variant(name: str) -> Callable[[Variant], Variant]:
    def register(func: Variant) -> Variant:
        VARIANTS[name] = func
        return func

    return register


def timed(emit: Callable[[int], None], n: int) -> float:
    start = time.process_time()
    emit(n)
    return time.process_time() - start


@contextmanager
def root_handler(handler: logging.Handler) -> Iterator[logging.Logger]:
    """Install one handler on a clean root logger, as an app's logging set-up would."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging._srcfile
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging._srcfile = STDLIB_SRCFILE
    try:
        yield logging.getLogger("bench.app")
    finally:
        root.handlers[:], logging._srcfile = saved[0], saved[2]
        root.setLevel(saved[1])
        handler.close()


def stdlib_loop(logger: logging.Logger) -> Callable[[int], None]:
    def emit(n: int) -> None:
        info = logger.info
        for _ in range(n):
            info(MESSAGE)

    return emit


def native_loop(logger: Logger) -> Callable[[int], None]:
    def emit(n: int) -> None:
        info = logger.info
        for _ in range(n):
            info(MESSAGE)

    return emit


def whodunit_run(
    path: Path, n: int, *, native: bool = False, record: bool = False, **options: Any
) -> float:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging._srcfile
    handler = configure_logging(path=path, service_name="shop", **options)
    if record:  # any filter (or any other handler) needs a LogRecord: measure that path
        handler.addFilter(lambda _: True)
    bind(**CONTEXT)
    try:
        if native:
            return timed(native_loop(get_logger("bench.app")), n)
        return timed(stdlib_loop(logging.getLogger("bench.app")), n)
    finally:
        clear_context()
        handler.close()
        _use_fast_path(False)  # the other variants get the stdlib's own logger class
        root.handlers[:], logging._srcfile = saved[0], saved[2]
        root.setLevel(saved[1])


@variant(OURS)
def whodunit_default(path: Path, n: int) -> float:
    return whodunit_run(path, n)


@variant(NATIVE)
def whodunit_native(path: Path, n: int) -> float:
    return whodunit_run(path, n, native=True)


@variant("whodunit, stdlib calls, with a LogRecord")
def whodunit_record(path: Path, n: int) -> float:
    return whodunit_run(path, n, record=True)


@variant("whodunit, redaction off")
def whodunit_no_redaction(path: Path, n: int) -> float:
    return whodunit_run(path, n, redact=False)


def structlog_run(path: Path, n: int, contextvars_: bool) -> float:
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer(serializer=orjson.dumps),
    ]
    if contextvars_:
        processors.insert(0, structlog.contextvars.merge_contextvars)
    with path.open("wb") as out:
        structlog.configure(
            processors=processors,
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.BytesLoggerFactory(out),
            cache_logger_on_first_use=True,
        )
        if contextvars_:
            structlog.contextvars.bind_contextvars(**CONTEXT)
            logger = structlog.get_logger("bench.app")
        else:
            logger = structlog.get_logger("bench.app").bind(**CONTEXT)

        def emit(count: int) -> None:
            info = logger.info
            for _ in range(count):
                info(MESSAGE)

        try:
            return timed(emit, n)
        finally:
            structlog.contextvars.clear_contextvars()
            structlog.reset_defaults()


@variant(FASTEST)
def structlog_fastest(path: Path, n: int) -> float:
    return structlog_run(path, n, contextvars_=False)


@variant(BASELINE)
def structlog_contextvars(path: Path, n: int) -> float:
    return structlog_run(path, n, contextvars_=True)


# The usual recipe for request context with formatter-only libraries: a filter that copies
# a contextvar onto the record.
REQUEST_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "bench_context", default=MappingProxyType({})
)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.update(REQUEST_CONTEXT.get())
        return True


class JsonDumpsFormatter(logging.Formatter):
    """A hand-written stdlib formatter, the do-it-yourself baseline."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **REQUEST_CONTEXT.get(),
        }
        return json.dumps(fields, default=str)


def formatter_run(path: Path, n: int, formatter: logging.Formatter, *, filtered: bool) -> float:
    with path.open("w", encoding="utf-8") as out:
        handler = logging.StreamHandler(out)
        handler.setFormatter(formatter)
        if filtered:
            handler.addFilter(ContextFilter())
        token = REQUEST_CONTEXT.set(dict(CONTEXT))
        try:
            with root_handler(handler) as logger:
                return timed(stdlib_loop(logger), n)
        finally:
            REQUEST_CONTEXT.reset(token)


@variant("python-json-logger, orjson")
def pjl_orjson(path: Path, n: int) -> float:
    formatter = OrjsonFormatter("%(levelname)s %(name)s %(message)s", timestamp=True)
    return formatter_run(path, n, formatter, filtered=True)


@variant(PJL_DEFAULT)
def pjl_default(path: Path, n: int) -> float:
    formatter = JsonFormatter("%(levelname)s %(name)s %(message)s", timestamp=True)
    return formatter_run(path, n, formatter, filtered=True)


@variant("stdlib + json.dumps formatter")
def stdlib_json(path: Path, n: int) -> float:
    return formatter_run(path, n, JsonDumpsFormatter(), filtered=False)


def measure(n: int, rounds: int, console: Console) -> dict[str, list[float]]:
    """Run every variant once per round, in a rotated order; return the rate of each round."""
    names = list(VARIANTS)
    per_round = n // rounds
    rates: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="whodunit-bench-") as tmp:
        for rnd in range(rounds):
            if rnd % 5 == 0:
                console.log(f"round {rnd + 1}/{rounds}")
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:
                path = Path(tmp) / "out.log"
                rates[name].append(per_round / VARIANTS[name](path, per_round))
                check_output(path, per_round, name)
                path.unlink()
    return rates


def paired(rates: dict[str, list[float]], ours: str, theirs: str) -> float:
    """The median over rounds of the ratio within each round: steadier than a ratio of medians."""
    return round(
        statistics.median(a / b for a, b in zip(rates[ours], rates[theirs], strict=True)), 2
    )


def check_output(path: Path, n: int, name: str) -> None:
    """Make sure a variant really wrote N JSON lines, so no speed comes from dropping work."""
    with path.open("rb") as lines:
        count = sum(1 for _ in lines)
        lines.seek(0)
        first = orjson.loads(lines.readline())
    if count != n or "trace_id" not in first:
        raise SystemExit(f"{name} wrote {count} lines (expected {n}), first: {first}")


def report(per_round: dict[str, list[float]], args: argparse.Namespace) -> dict[str, object]:
    rates = {name: statistics.median(values) for name, values in per_round.items()}
    baseline = rates[BASELINE]
    table = Table(
        title=f"JSON log throughput: {args.n:,} records, 8 context fields, "
        f"median of {args.rounds} rounds"
    )
    table.add_column("variant")
    table.add_column("records / CPU-s", justify="right")
    table.add_column("µs / record", justify="right")
    table.add_column(f"vs {BASELINE}", justify="right")
    for name, rate in sorted(rates.items(), key=lambda item: -item[1]):
        table.add_row(name, f"{rate:,.0f}", f"{1e6 / rate:.1f}", f"{rate / baseline:.2f}")
    Console(width=100).print(table)
    return {
        "bench": "log_throughput",
        "stdlib_path_vs_structlog_contextvars": paired(per_round, OURS, BASELINE),
        "stdlib_path_vs_python_json_logger_default": paired(per_round, OURS, PJL_DEFAULT),
        "stdlib_path_vs_structlog_fastest": paired(per_round, OURS, FASTEST),
        "native_path_vs_structlog_fastest": paired(per_round, NATIVE, FASTEST),
        "native_path_vs_structlog_contextvars": paired(per_round, NATIVE, BASELINE),
        "records_per_cpu_second": {name: round(rate) for name, rate in rates.items()},
        "n": args.n,
        "rounds": args.rounds,
        "structlog": structlog.__version__,
        **environment(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=200_000, help="records per variant, in all")
    parser.add_argument("--rounds", type=int, default=20, help="rounds to split them into")
    args = parser.parse_args()
    rates = measure(args.n, args.rounds, Console(stderr=True))
    print(orjson.dumps(report(rates, args)).decode())


if __name__ == "__main__":
    main()
