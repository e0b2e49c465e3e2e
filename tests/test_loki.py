"""Tests for whodunit.loki: the Loki shipper, against a local fake Loki."""

from __future__ import annotations

import base64
import io
import logging
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fixtures.loki import FakeLoki
from whodunit.log import _use_fast_path, bound, configure_logging
from whodunit.loki import LokiHandler, LokiStats
from whodunit.redact import REDACTED

MakeHandler = Callable[..., LokiHandler]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def loki() -> Iterator[FakeLoki]:
    server = FakeLoki()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own, so that only the test's handlers see its records."""
    log = logging.getLogger("tests.loki")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    log.propagate = True
    for handler in log.handlers[:]:
        if isinstance(handler, LokiHandler):
            log.removeHandler(handler)


@pytest.fixture
def make(loki: FakeLoki, logger: logging.Logger) -> Iterator[MakeHandler]:
    """Build handlers on the fake Loki with test-sized timings, attached to `logger`."""
    handlers: list[LokiHandler] = []

    def make(**options: Any) -> LokiHandler:
        defaults: dict[str, Any] = {
            "service_name": "shop",
            "labels": {"env": "test"},
            "flush_interval": 0.02,
            "backoff": 0.01,
            "max_backoff": 0.05,
            "timeout": 2.0,
            "close_timeout": 2.0,
            "handle_sigterm": False,
        }
        handler = LokiHandler(loki.url, **{**defaults, **options})
        handlers.append(handler)
        logger.addHandler(handler)
        return handler

    yield make
    for handler in handlers:
        handler.close()


@pytest.fixture
def restore_root() -> Iterator[None]:
    """Put the root logger back as it was after configure_logging."""
    root = logging.getLogger()
    level, srcfile, before = root.level, logging._srcfile, set(root.handlers)
    yield
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging._srcfile = srcfile
    _use_fast_path(False)


def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"still not true after {timeout} s: {what}")
        time.sleep(0.005)


def reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "whodunit.internal"]


def test_records_arrive_with_labels_metadata_and_line(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger
) -> None:
    make()
    before = time.time_ns()
    with bound(correlation_id="req-1", trace_id=TRACE_ID, user_id=42):
        logger.info("paid %s", "order-7", extra={"password": "hunter2"})
    logger.error("no context")

    first, second = loki.wait_for(2)  # no flush(): the interval sends them

    assert first.labels == {"service": "shop", "env": "test", "level": "info"}
    assert first.metadata == {"correlation_id": "req-1", "trace_id": TRACE_ID, "user_id": "42"}
    assert first.line["message"] == "paid order-7"
    assert first.line["service.name"] == "shop"
    assert first.line["correlation_id"] == "req-1"
    assert first.line["password"] == REDACTED
    assert before <= first.ns <= time.time_ns()
    assert second.labels["level"] == "error"
    assert second.metadata is None
    assert loki.requests[0].headers["Content-Type"] == "application/json"


def test_metadata_can_be_left_out_for_an_older_loki(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger
) -> None:
    make(metadata=())
    with bound(correlation_id="req-1"):
        logger.info("hello")
    [entry] = loki.wait_for(1)
    assert entry.metadata is None
    assert entry.line["correlation_id"] == "req-1"


def test_batches_are_cut_by_records_and_bytes(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger
) -> None:
    by_count = make(batch_size=3, flush_interval=10)
    for i in range(7):
        logger.info("record %d", i)
    by_count.flush()
    logger.removeHandler(by_count)
    sizes = [len(orjson.loads(r.body)["streams"][0]["values"]) for r in loki.requests]
    assert sum(sizes) == 7
    assert max(sizes) <= 3

    by_bytes = make(batch_bytes=1, flush_interval=10)  # the first record always fits
    for i in range(3):
        logger.info("big %d", i)
    by_bytes.flush()
    assert len(loki.requests) == len(sizes) + 3
    assert loki.messages() == [f"record {i}" for i in range(7)] + [f"big {i}" for i in range(3)]


def test_retry_after_is_honoured_over_the_backoff(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger
) -> None:
    loki.answer(429, retry_after="0")
    handler = make(backoff=30, max_backoff=30)  # without Retry-After: 15 s or more
    logger.info("throttled")
    start = time.monotonic()
    handler.flush(5)
    assert time.monotonic() - start < 2
    assert loki.messages() == ["throttled"]
    assert [r.status for r in loki.requests] == [429, 204]
    assert handler.stats() == LokiStats(sent=1, retried=1)


def test_server_errors_are_retried_until_delivered(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger
) -> None:
    loki.answer(500, 503)
    handler = make()
    logger.info("persistent")
    handler.flush()
    assert loki.messages() == ["persistent"]
    assert [r.status for r in loki.requests] == [500, 503, 204]
    assert handler.stats() == LokiStats(sent=1, retried=2)


def test_a_refused_batch_is_dropped_and_reported_once(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    loki.answer(400, 400, body="entry too far behind")
    handler = make()
    logger.info("refused 1")
    handler.flush()
    logger.info("refused 2")
    handler.flush()
    logger.info("taken")
    handler.flush()
    assert [r.status for r in loki.requests] == [400, 400, 204]
    assert loki.messages() == ["taken"]
    assert handler.stats() == LokiStats(sent=1, dropped=2)
    [report] = reports(caplog)
    assert "HTTP 400" in report
    assert "entry too far behind" in report


def test_an_unreachable_loki_without_spool_drops_after_the_retries(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    loki.stop()
    handler = make(max_retries=1)
    logger.info("lost")
    handler.flush()
    assert handler.stats() == LokiStats(dropped=1, retried=1)
    [report] = reports(caplog)
    assert "Loki could not be reached after 1 retries" in report
    assert "ConnectError" in report


def test_nothing_is_lost_while_loki_is_away(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    handler = make(spool_dir=spool, max_retries=1)
    loki.stop()
    for i in range(5):
        logger.info("while away %d", i)
    eventually(lambda: handler.stats().spooled >= 5, "records spooled")

    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    segments = list(spool.iterdir())
    assert segments
    assert {stat.S_IMODE(path.stat().st_mode) for path in segments} == {0o600}

    loki.start()  # the same port
    for i in range(3):
        logger.info("back %d", i)
    loki.wait_for(8)
    expected = [f"while away {i}" for i in range(5)] + [f"back {i}" for i in range(3)]
    assert loki.messages() == expected
    eventually(lambda: not list(spool.iterdir()), "spool emptied")
    stats = handler.stats()
    assert (stats.sent, stats.dropped) == (8, 0)
    assert stats.retried > 0


def test_close_keeps_its_deadline_and_spools_what_a_hanging_loki_did_not_take(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    loki.hang()
    handler = make(spool_dir=spool, close_timeout=0.3, timeout=10)
    logger.info("one")
    logger.info("two")
    loki.wait_requests(1)  # the worker now waits for an answer that never comes
    logger.info("three")

    start = time.monotonic()
    handler.close()
    assert time.monotonic() - start < 1.5
    assert handler.stats() == LokiStats(spooled=3)
    assert loki.entries() == []

    loki.stop()
    loki.start()  # the next start of the app
    logger.removeHandler(handler)
    make(spool_dir=spool)
    logger.info("four")
    loki.wait_for(4)
    assert loki.messages() == ["one", "two", "three", "four"]


def test_a_full_queue_moves_records_to_the_spool(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger, tmp_path: Path
) -> None:
    handler = make(spool_dir=tmp_path / "spool", queue_size=2, flush_interval=10)
    for i in range(5):
        logger.info("burst %d", i)
    assert handler.stats() == LokiStats(spooled=3)
    handler.flush()
    loki.wait_for(5)
    assert loki.messages() == [f"burst {i}" for i in range(5)]


def test_a_full_queue_drops_records_without_a_spool(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    handler = make(queue_size=2, flush_interval=10)
    for i in range(5):
        logger.info("burst %d", i)
    assert handler.stats() == LokiStats(dropped=3)
    handler.flush()
    assert loki.messages() == ["burst 0", "burst 1"]
    [report] = reports(caplog)
    assert "the queue is full" in report


def test_the_spool_drops_its_oldest_records_over_its_cap(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    loki.stop()
    handler = make(spool_dir=spool, spool_max_bytes=2000, batch_size=2, max_retries=0)
    for i in range(30):
        logger.info("record %02d %s", i, "x" * 100)
    eventually(lambda: handler.stats().spooled >= 30, "records spooled")
    eventually(lambda: handler.stats().dropped > 0, "oldest segments cut")
    on_disk = sum(path.stat().st_size for path in spool.iterdir())
    assert on_disk <= 2000 + 1000  # the cap, plus the segment being written

    loki.start()

    def accounted() -> bool:
        stats = handler.stats()
        return stats.sent + stats.dropped == 30

    eventually(accounted, "every record sent or dropped")
    sent = loki.messages()
    expected = [f"record {i:02d} {'x' * 100}" for i in range(30)]
    assert sent == expected[-len(sent) :]  # what is left is the newest, in order


def test_a_forked_child_ships_with_a_fresh_handler(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger
) -> None:
    handler = make()
    logger.info("parent, before the fork")
    handler.flush()
    loki.wait_for(1)

    with warnings.catch_warnings():
        # Python 3.12+ warns when a process with threads forks: that is what we test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            logger.info("child")
            handler.flush(5)
            status = 0 if handler.stats() == LokiStats(sent=1) else 2
        finally:
            os._exit(status)

    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    logger.info("parent, after the fork")
    handler.flush()
    loki.wait_for(3)
    assert sorted(loki.messages()) == ["child", "parent, after the fork", "parent, before the fork"]
    assert handler.stats() == LokiStats(sent=2)


FORK_SCRIPT = """
import logging, os, sys
from whodunit.loki import LokiHandler

handler = LokiHandler(sys.argv[1], flush_interval=0.02, handle_sigterm=False)
logger = logging.getLogger("app")
logger.propagate = False
logger.addHandler(handler)
logger.warning("parent")  # the worker starts, and httpx imports what it needs, now
pid = os.fork()
if pid == 0:
    logger.warning("child")
    handler.flush(3)
    os._exit(0 if handler.stats().sent == 1 else 1)
_, status = os.waitpid(pid, 0)
handler.close()
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_fork_waits_for_the_worker_to_finish_its_imports(loki: FakeLoki) -> None:
    # In a fresh interpreter the first push imports httpcore; a child forked in the middle
    # of that import inherits a half-built module and could never ship.
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT, loki.url], timeout=20, check=False)
    assert done.returncode == 0
    assert sorted(loki.messages()) == ["child", "parent"]


class _BrokenFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        raise RuntimeError("formatter bug")


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    __repr__ = __str__


def test_emit_never_raises(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    broken = make(formatter=_BrokenFormatter())
    logger.info("first")
    logger.info("second")
    assert broken.stats() == LokiStats(dropped=2)
    [report] = reports(caplog)
    assert "could not render a record from logger tests.loki" in report

    handler = make()
    # Straight to the handler: pytest's own capture would choke on this record.
    unprintable = {"name": "tests.loki", "msg": "%s", "args": (_Unprintable(),)}
    assert handler.handle(logging.makeLogRecord(unprintable))
    handler.flush()
    [entry] = loki.entries()
    assert "whodunit_error" in entry.line  # the formatter's fallback line, still shipped


@pytest.mark.parametrize(
    ("auth", "header"),
    [
        ("tok-s3cret", "Bearer tok-s3cret"),
        (("svc-user", "pw-s3cret"), "Basic " + base64.b64encode(b"svc-user:pw-s3cret").decode()),
    ],
    ids=["bearer", "basic"],
)
def test_secrets_stay_out_of_repr_and_logs(
    loki: FakeLoki,
    make: MakeHandler,
    logger: logging.Logger,
    caplog: pytest.LogCaptureFixture,
    auth: str | tuple[str, str],
    header: str,
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    loki.answer(401, body="no")
    handler = make(auth=auth, tenant="team-a")
    logger.info("refused")
    handler.flush()
    logger.info("taken")
    handler.flush()

    assert [r.headers["Authorization"] for r in loki.requests] == [header, header]
    assert loki.requests[0].headers["X-Scope-OrgID"] == "team-a"
    assert "s3cret" not in repr(handler)
    assert "auth=***" in repr(handler)
    assert "s3cret" not in str(vars(handler))
    assert "HTTP 401" in caplog.text
    assert "s3cret" not in caplog.text


def test_its_own_loggers_and_the_http_client_are_never_shipped(
    loki: FakeLoki, make: MakeHandler
) -> None:
    handler = make()
    for name in ("whodunit.internal", "httpx", "httpcore.http11", "h11"):
        assert not handler.handle(logging.makeLogRecord({"name": name, "msg": "x"}))
    assert handler.handle(logging.makeLogRecord({"name": "httpxtra", "msg": "shipped"}))
    handler.flush()
    assert loki.messages() == ["shipped"]


def test_the_push_requests_do_not_show_up_in_the_app_logs(
    loki: FakeLoki, make: MakeHandler, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handler = make()
    logger.info("hello")
    handler.flush()
    assert loki.messages() == ["hello"]
    assert not [r for r in caplog.records if r.name == "httpx"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:3100",
        "http://localhost:3100/",
        "http://[::1]:3100",
        "https://loki.example",
        "https://loki.example/loki/api/v1/push",
    ],
)
def test_https_or_loopback_urls_are_accepted(url: str) -> None:
    handler = LokiHandler(url, handle_sigterm=False)
    assert repr(handler).split()[1].endswith("/loki/api/v1/push")
    assert repr(handler).count("/loki/api/v1/push") == 1


@pytest.mark.parametrize("url", ["http://loki.example:3100", "ftp://loki.example", "loki"])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="Loki URL") as refused:
        LokiHandler(url, handle_sigterm=False)
    assert repr(url) in str(refused.value)


def test_a_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="auth=") as refused:
        LokiHandler("https://svc:pw-s3cret@loki.example", handle_sigterm=False)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    "labels", [{"level": "x"}, {"bad-name": "x"}, {"env": ""}], ids=["level", "name", "empty"]
)
def test_bad_labels_are_refused(labels: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="label"):
        LokiHandler("https://loki.example", labels=labels, handle_sigterm=False)


@pytest.mark.usefixtures("restore_root")
def test_configure_logging_adds_and_replaces_the_loki_handler(loki: FakeLoki) -> None:
    out = io.BytesIO()
    options = {"flush_interval": 0.02, "handle_sigterm": False, "labels": {"env": "test"}}
    configure_logging(stream=out, service_name="shop", loki_url=loki.url, loki_options=options)
    root = logging.getLogger()
    [shipper] = [h for h in root.handlers if isinstance(h, LokiHandler)]

    logging.getLogger("shop.orders").warning("order %s shipped", 7)
    [entry] = loki.wait_for(1)
    assert entry.line == orjson.loads(out.getvalue())  # the same line as stdout's
    assert entry.labels == {"service": "shop", "env": "test", "level": "warning"}

    configure_logging(stream=io.BytesIO())
    assert shipper not in root.handlers
    assert not [h for h in root.handlers if isinstance(h, LokiHandler)]


def test_configure_logging_wants_a_url_with_loki_options() -> None:
    with pytest.raises(TypeError, match="loki_url"):
        configure_logging(loki_options={"spool_dir": "spool"})


SIGTERM_SCRIPT = """
import logging, os, signal, sys, time
from whodunit.loki import LokiHandler

if sys.argv[2] == "app-handler":
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(3))
logger = logging.getLogger("app")
logger.propagate = False
logger.addHandler(LokiHandler(sys.argv[1], flush_interval=60))
logger.warning("last words")
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
"""


@pytest.mark.parametrize(
    ("previous", "exit_code"),
    [("default", -signal.SIGTERM), ("app-handler", 3)],
)
def test_sigterm_sends_what_is_queued_then_goes_on_as_before(
    loki: FakeLoki, previous: str, exit_code: int
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_SCRIPT, loki.url, previous], timeout=20, check=False
    )
    assert done.returncode == exit_code
    assert loki.messages() == ["last words"]
