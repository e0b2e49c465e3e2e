"""Tests for whodunit.log: the JSON formatter and handler, the bound context, never raising."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import re
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from whodunit.log import (
    FIELDS,
    JSONFormatter,
    JSONHandler,
    Logger,
    _use_fast_path,
    bind,
    bound,
    clear_context,
    configure_logging,
    get_context,
    get_logger,
    unbind,
)
from whodunit.redact import REDACTED, Redactor

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Give each test a clean context and put the root logger back as it was."""
    root, own = logging.getLogger(), logging.getLogger("whodunit")
    level, own_level, srcfile, before = root.level, own.level, logging._srcfile, set(root.handlers)
    clear_context()
    yield
    clear_context()
    own.setLevel(own_level)
    # pytest adds and removes its own capture handlers around each phase: leave those be.
    for handler in root.handlers[:]:
        if handler not in before and isinstance(handler, JSONHandler | ListHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging._srcfile = srcfile
    _use_fast_path(False)


@pytest.fixture
def out() -> io.BytesIO:
    """A binary stream configured as the root logger's JSON output."""
    stream = io.BytesIO()
    configure_logging(stream=stream)
    return stream


class ListHandler(logging.Handler):
    """Keep the records it receives, for assertions on what other handlers see."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def lines(stream: io.BytesIO | io.StringIO) -> list[dict[str, Any]]:
    """Parse every line written so far, checking each is one complete JSON object."""
    text = stream.getvalue()
    raw = text.decode() if isinstance(text, bytes) else text
    assert raw.endswith("\n")
    return [orjson.loads(line) for line in raw.splitlines()]


def record(msg: str = "hello", *args: object, **attrs: object) -> logging.LogRecord:
    """Build a record by hand, with extra attributes as `extra=` would set them."""
    rec = logging.LogRecord("app.orders", logging.INFO, __file__, 7, msg, args, None)
    rec.__dict__.update(attrs)
    return rec


def render(rec: logging.LogRecord, **options: Any) -> dict[str, Any]:
    """Format one record with a fresh formatter and parse the result."""
    result: dict[str, Any] = orjson.loads(JSONFormatter(**options).format(rec))
    return result


class TestFields:
    """The field names and values of the shared contract."""

    def test_core_fields(self, out: io.BytesIO) -> None:
        """A plain stdlib call gives ts, level, logger and message, and nothing else."""
        logging.getLogger("app.orders").warning("order %s shipped", 42)

        (line,) = lines(out)

        assert ["ts", "level", "logger", "message"] == list(line)
        assert TS.match(line["ts"])
        assert ("WARNING", "app.orders", "order 42 shipped") == (
            line["level"],
            line["logger"],
            line["message"],
        )

    def test_timestamp_is_rfc3339_utc_with_microseconds(self) -> None:
        """The timestamp is the record's creation time in UTC, to the microsecond."""
        rec = record()
        rec.created = datetime(2026, 11, 28, 1, 2, 3, 123456, tzinfo=UTC).timestamp()

        assert "2026-11-28T01:02:03.123456Z" == render(rec)["ts"]

    def test_timestamp_changes_second(self) -> None:
        """The cached part of the timestamp follows the clock into the next second."""
        formatter = JSONFormatter()
        first, second = record(), record()
        first.created = datetime(2026, 11, 28, 1, 2, 3, 999999, tzinfo=UTC).timestamp()
        second.created = datetime(2026, 11, 28, 1, 2, 4, 5, tzinfo=UTC).timestamp()

        stamps = [orjson.loads(formatter.format(r))["ts"] for r in (first, second)]

        assert ["2026-11-28T01:02:03.999999Z", "2026-11-28T01:02:04.000005Z"] == stamps

    def test_service_name(self) -> None:
        """The configured service name is written as service.name."""
        assert "shop" == render(record(), service_name="shop")["service.name"]

    def test_contract_fields_from_context(self, out: io.BytesIO) -> None:
        """Fields bound with their underscore aliases come out under the dotted names."""
        bind(
            correlation_id="c-1",
            trace_id="t" * 32,
            span_id="s" * 16,
            user_id=7,
            user_name="jdoe",
            http_request_method="GET",
            http_route="/orders/<int:id>",
            url_path="/orders/3",
            http_response_status_code=200,
            duration_ms=1.5,
            client_address="203.0.113.9",
            user_agent_original="curl/8.0",
        )

        logging.getLogger("app").info("done")

        assert [*FIELDS[:4], *FIELDS[5:17]] == list(lines(out)[0])

    def test_no_nulls_for_absent_fields(self, out: io.BytesIO) -> None:
        """Fields with no value are left out rather than written as null."""
        logging.getLogger("app").info("done")

        assert None not in lines(out)[0].values()

    def test_extras_kept(self, out: io.BytesIO) -> None:
        """Fields passed with extra= are written as given, nested values included."""
        logging.getLogger("app").info("paid", extra={"order_id": 3, "items": [{"sku": "A1"}]})

        line = lines(out)[0]

        assert (3, [{"sku": "A1"}]) == (line["order_id"], line["items"])

    def test_core_fields_cannot_be_forged(self, out: io.BytesIO) -> None:
        """A context or extra field named like a core field is renamed, not obeyed."""
        bind(level="forged")

        logging.getLogger("app").info("done", extra={"ts": "yesterday"})

        line = lines(out)[0]
        assert ("INFO", "forged", "yesterday") == (line["level"], line["level_"], line["ts_"])
        assert TS.match(line["ts"])

    def test_callsite_fields(self) -> None:
        """With callsite=True the file, line and function of the call are written."""
        stream = io.BytesIO()
        configure_logging(stream=stream, callsite=True)

        logging.getLogger("app").info("here")

        line = lines(stream)[0]
        assert (__file__, "test_callsite_fields") == (
            line["code.file.path"],
            line["code.function.name"],
        )
        assert isinstance(line["code.line.number"], int)

    def test_stack_info(self) -> None:
        """stack_info=True is written as code.stacktrace (it needs the caller lookup)."""
        stream = io.BytesIO()
        configure_logging(stream=stream, callsite=True)

        logging.getLogger("app").info("where", stack_info=True)

        assert "Stack (most recent call last)" in lines(stream)[0]["code.stacktrace"]


class TestOneLine:
    """Every record is exactly one line, whatever it contains."""

    def test_newlines_stay_on_one_line(self, out: io.BytesIO) -> None:
        """Newlines in the message and in values are escaped by JSON."""
        logging.getLogger("app").info("line one\nline two", extra={"note": "a\r\nb"})

        assert 1 == out.getvalue().count(b"\n")
        assert ("line one\nline two", "a\r\nb") == (lines(out)[0]["message"], lines(out)[0]["note"])

    def test_one_line_per_call(self, out: io.BytesIO) -> None:
        """N calls give N lines."""
        log = logging.getLogger("app")
        for i in range(5):
            log.info("n=%d", i)

        assert [f"n={i}" for i in range(5)] == [line["message"] for line in lines(out)]


class TestSerialisation:
    """Values JSON cannot encode are written safely."""

    def test_unknown_type_uses_str(self) -> None:
        """An object orjson does not know is written as its str()."""

        class Money:
            def __str__(self) -> str:
                return "12.50 EUR"

        assert "12.50 EUR" == render(record(price=Money()))["price"]

    def test_broken_str_falls_back_to_repr(self) -> None:
        """An object whose __str__ raises is written as its repr()."""

        class Odd:
            def __str__(self) -> str:
                raise ValueError("no")

            def __repr__(self) -> str:
                return "<Odd>"

        assert "<Odd>" == render(record(value=Odd()))["value"]

    def test_broken_str_and_repr(self) -> None:
        """An object whose __str__ and __repr__ both raise still gives a line."""

        class Hostile:
            def __str__(self) -> str:
                raise RuntimeError("str")

            def __repr__(self) -> str:
                raise RuntimeError("repr")

        line = render(record(value=Hostile()))

        assert ("hello", "<unprintable Hostile>") == (line["message"], line["value"])

    def test_native_types(self) -> None:
        """Datetimes, UUIDs and dataclasses keep their JSON forms."""

        @dataclasses.dataclass
        class Item:
            sku: str

        when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        ident = uuid.UUID(int=1)

        line = render(record(when=when, ident=ident, item=Item("A1")))

        assert ("2026-01-02T03:04:05+00:00", str(ident), {"sku": "A1"}) == (
            line["when"],
            line["ident"],
            line["item"],
        )

    def test_integer_beyond_64_bits(self) -> None:
        """An integer orjson refuses is written as a string."""
        assert str(2**70) == render(record(big=2**70))["big"]

    def test_lone_surrogate(self) -> None:
        """A string with a lone surrogate is written with a replacement character."""
        assert "a?b" == render(record(text="a\ud800b"))["text"]

    def test_cycle(self) -> None:
        """A self-referencing list is cut off instead of recursing forever."""
        loop: list[object] = []
        loop.append(loop)

        line = render(record(loop=loop))

        assert "hello" == line["message"]
        assert "[TOO DEEP]" in orjson.dumps(line).decode()


class TestContext:
    """Fields bound with bind() and bound() in contextvars."""

    def test_bind_adds_to_every_record(self, out: io.BytesIO) -> None:
        """Bound fields appear on each later record."""
        bind(correlation_id="c-1")
        bind(user_id=7)
        log = logging.getLogger("app")
        log.info("one")
        log.info("two")

        assert [("c-1", 7)] * 2 == [(x["correlation_id"], x["user.id"]) for x in lines(out)]

    def test_bound_restores(self) -> None:
        """Leaving bound() restores the fields bound before it, undoing inner binds too."""
        bind(correlation_id="outer")

        with bound(correlation_id="inner", user_id=1):
            bind(extra="inside")
            inside = get_context()

        assert {"correlation_id": "inner", "user.id": 1, "extra": "inside"} == inside
        assert {"correlation_id": "outer"} == get_context()

    def test_bound_restores_after_exception(self) -> None:
        """The context is restored when the block raises."""
        with pytest.raises(KeyError), bound(user_id=1):
            raise KeyError("x")

        assert {} == get_context()

    def test_unbind(self) -> None:
        """unbind() drops the named fields, aliases included, and ignores unknown ones."""
        bind(user_id=1, user_name="jdoe", correlation_id="c")

        unbind("user_id", "user.name", "nope")

        assert {"correlation_id": "c"} == get_context()

    def test_clear_context(self) -> None:
        """clear_context() drops every field."""
        bind(user_id=1)

        clear_context()

        assert {} == get_context()

    def test_get_context_returns_a_copy(self) -> None:
        """Changing the returned dict does not change the bound fields."""
        bind(user_id=1)

        get_context()["user.id"] = 2

        assert {"user.id": 1} == get_context()

    def test_threads_are_isolated(self, out: io.BytesIO) -> None:
        """Two threads binding at the same time each log only their own fields."""
        barrier = threading.Barrier(2)

        def work(user: str) -> None:
            bind(user_name=user)
            barrier.wait()
            logging.getLogger("app").info(user)

        threads = [threading.Thread(target=work, args=(u,)) for u in ("ann", "bob")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert {("ann", "ann"), ("bob", "bob")} == {
            (x["message"], x["user.name"]) for x in lines(out)
        }
        assert {} == get_context()

    def test_asyncio_tasks_are_isolated(self, out: io.BytesIO) -> None:
        """Interleaved asyncio tasks each log only their own fields."""

        async def work(user: str) -> None:
            with bound(user_name=user):
                await asyncio.sleep(0)
                logging.getLogger("app").info(user)
                await asyncio.sleep(0)
                logging.getLogger("app").info(user)

        async def main() -> None:
            await asyncio.gather(work("ann"), work("bob"))

        asyncio.run(main())

        assert [True] * 4 == [x["message"] == x["user.name"] for x in lines(out)]

    def test_mutable_value_read_at_log_time(self, out: io.BytesIO) -> None:
        """A bound list changed in place is written as it is when each record is logged."""
        roles = ["reader"]
        bind(roles=roles)
        log = logging.getLogger("app")
        log.info("before")
        roles.append("admin")
        log.info("after")

        assert [["reader"], ["reader", "admin"]] == [x["roles"] for x in lines(out)]

    def test_context_is_redacted(self, out: io.BytesIO) -> None:
        """A bound secret is redacted like any other field."""
        bind(api_key="k-123456", user_id=1)

        logging.getLogger("app").info("x")

        assert (REDACTED, 1) == (lines(out)[0]["api_key"], lines(out)[0]["user.id"])

    def test_two_formatters_share_a_context(self) -> None:
        """Formatters with different settings each render the same context their own way."""
        bind(token="t-123456")
        rec = record()

        both = [render(rec, redact=False)["token"], render(rec)["token"]]

        assert ["t-123456", REDACTED] == both


class TestExceptions:
    """Exceptions as exception.type, exception.message and exception.stacktrace."""

    def test_exception_fields(self, out: io.BytesIO) -> None:
        """logger.exception() writes the type, the message and the whole traceback."""
        try:
            raise ValueError("bad value\nsecond line")
        except ValueError:
            logging.getLogger("app").exception("failed")

        line = lines(out)[0]
        assert ("ValueError", "bad value\nsecond line") == (
            line["exception.type"],
            line["exception.message"],
        )
        assert line["exception.stacktrace"].startswith("Traceback (most recent call last):")
        assert line["exception.stacktrace"].endswith("ValueError: bad value\nsecond line")
        assert 1 == out.getvalue().count(b"\n")

    def test_type_is_module_qualified(self) -> None:
        """A non-builtin exception type carries its module, as OpenTelemetry asks."""
        try:
            raise orjson.JSONDecodeError("x", "", 0)
        except orjson.JSONDecodeError:
            rec = record(exc_info=sys.exc_info())

        assert "orjson.JSONDecodeError" == render(rec)["exception.type"]

    def test_secret_in_exception_is_redacted(self, out: io.BytesIO) -> None:
        """A secret in the exception message is redacted in the message and the traceback."""
        try:
            raise PermissionError("login failed for password=hunter2")
        except PermissionError:
            logging.getLogger("app").exception("denied")

        assert b"hunter2" not in out.getvalue()
        assert "login failed for password=[REDACTED]" == lines(out)[0]["exception.message"]

    def test_exc_text_without_exc_info(self) -> None:
        """A record that only carries exc_text (from another process) keeps it."""
        rec = record(exc_text="Traceback ...\nKeyError: 'x'")

        assert "Traceback ...\nKeyError: 'x'" == render(rec)["exception.stacktrace"]

    def test_exception_call_outside_except(self, out: io.BytesIO) -> None:
        """logger.exception() outside an except block writes no exception fields."""
        logging.getLogger("app").exception("no exception here")  # noqa: LOG004 - on purpose

        assert "exception.type" not in lines(out)[0]


class TestNeverRaises:
    """format() never raises, reports its own failures once and leaves records alone."""

    @pytest.fixture
    def reports(self) -> Iterator[ListHandler]:
        """Collect what is reported to whodunit.internal."""
        handler = ListHandler()
        internal = logging.getLogger("whodunit.internal")
        internal.addHandler(handler)
        yield handler
        internal.removeHandler(handler)

    def test_failure_gives_minimal_line(self, reports: ListHandler) -> None:
        """A record that cannot be rendered still gives a line with whodunit_error."""
        stream = io.BytesIO()

        JSONHandler(stream).handle(record("count %d", "not a number"))

        line = lines(stream)[0]
        assert ("count %d", "INFO", "app.orders") == (
            line["message"],
            line["level"],
            line["logger"],
        )
        assert line["whodunit_error"].startswith("TypeError: %d format")
        assert TS.match(line["ts"])

    def test_failure_reported_once(self, reports: ListHandler) -> None:
        """Repeated failures of one kind are reported to whodunit.internal only once."""
        stream = io.BytesIO()
        handler = JSONHandler(stream)
        for _ in range(3):
            handler.handle(record("count %d", "not a number"))

        assert 1 == len(reports.records)
        assert logging.ERROR == reports.records[0].levelno
        assert 3 == sum(1 for x in lines(stream) if "whodunit_error" in x)

    def test_broken_redactor_hides_the_text(self, reports: ListHandler) -> None:
        """When redaction itself fails, the fallback line hides the message, never leaks it."""

        class Broken(Redactor):
            def redact_text(self, text: str) -> str:
                raise RuntimeError("broken")

        line = render(record("password=hunter2"), redact=Broken())

        assert (REDACTED, REDACTED) == (line["message"], line["whodunit_error"])

    def test_record_is_not_changed(self) -> None:
        """Formatting leaves the record exactly as other handlers should see it."""
        try:
            raise ValueError("x")
        except ValueError:
            rec = record("a %s", "b", exc_info=sys.exc_info(), note="n")
        before = dict(vars(rec))

        JSONFormatter().format(rec)

        assert before == vars(rec)

    def test_other_handlers_see_the_original(self, out: io.BytesIO) -> None:
        """A second handler gets the unredacted original record."""
        other = ListHandler()
        logging.getLogger().addHandler(other)

        logging.getLogger("app").info("token=%s", "t-123456")

        assert ("token=[REDACTED]", ("t-123456",)) == (
            lines(out)[0]["message"],
            other.records[0].args,
        )


class TestSecretsNeverLeak:
    """Planted secrets never appear anywhere in the output."""

    SECRETS = (
        "hunter2-planted",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXBsYW50ZWQ",
        "abcdefgh-bearer-planted",
        "4111 1111 1111 1111",
        "s3cret-dsn-planted",
    )

    def test_secrets_in_every_channel(self, out: io.BytesIO) -> None:
        """Secrets in context, message, args, extras and exceptions are all redacted."""
        hunter, jwt, bearer, card, dsn = self.SECRETS
        bind(session_id=hunter, correlation_id="c-1")
        log = logging.getLogger("app")
        log.info("login password=%s token %s", hunter, jwt)
        log.info("header", extra={"headers": {"Authorization": f"Bearer {bearer}"}})
        log.info("paid", extra={"payment": [{"card": card}, ("note", f"card {card}")]})
        log.info("db", extra={"dsn": f"postgresql://app:{dsn}@db/shop"})
        try:
            raise ConnectionError(f"refused: postgresql://app:{dsn}@db/shop, jwt {jwt}")
        except ConnectionError:
            log.exception("Authorization: Bearer %s", bearer)

        output = out.getvalue().decode()
        assert [] == [secret for secret in self.SECRETS if secret in output]
        assert 5 == len(lines(out))

    def test_redaction_off(self) -> None:
        """redact=False writes values as they are."""
        line = render(record("password=hunter2"), redact=False)

        assert "password=hunter2" == line["message"]

    def test_extra_keys_and_patterns(self) -> None:
        """Extra keys and patterns are redacted on top of the defaults."""
        line = render(
            record("ticket TK-1234 for ann", pin="1234", password="x"),
            extra_redact_keys=["pin"],
            extra_redact_patterns=[r"TK-\d+"],
        )

        assert (f"ticket {REDACTED} for ann", REDACTED, REDACTED) == (
            line["message"],
            line["pin"],
            line["password"],
        )

    def test_redactor_conflicts_with_extras(self) -> None:
        """A Redactor and extra keys at once is refused with a TypeError."""
        with pytest.raises(TypeError, match="not both"):
            JSONFormatter(redact=Redactor(), extra_redact_keys=["pin"])


class TestJSONHandler:
    """Writing lines to text streams, binary streams and files."""

    def test_text_stream(self) -> None:
        """A text stream gets str lines."""
        stream = io.StringIO()
        configure_logging(stream=stream)

        logging.getLogger("app").info("héllo")

        assert "héllo" == lines(stream)[0]["message"]

    def test_path_appends(self, tmp_path: Path) -> None:
        """path= appends to the file and close() closes it."""
        target = tmp_path / "app.log"
        target.write_bytes(b'{"old":true}\n')
        handler = configure_logging(path=target)

        logging.getLogger("app").info("new")
        handler.close()

        rows = [orjson.loads(x) for x in target.read_bytes().splitlines()]
        assert ({"old": True}, "new", True) == (rows[0], rows[1]["message"], handler.stream.closed)

    def test_stream_and_path_conflict(self, tmp_path: Path) -> None:
        """Giving both a stream and a path is refused, naming both."""
        with pytest.raises(TypeError, match=r"both stream=.* and path="):
            JSONHandler(io.StringIO(), path=tmp_path / "x.log")

    def test_filters_apply(self, out: io.BytesIO) -> None:
        """Handler filters still drop records."""
        handler = next(h for h in logging.getLogger().handlers if isinstance(h, JSONHandler))
        handler.addFilter(lambda r: r.name != "noisy")

        logging.getLogger("noisy").info("drop me")
        logging.getLogger("app").info("keep me")

        assert ["keep me"] == [x["message"] for x in lines(out)]

    def test_other_formatter(self) -> None:
        """A plain logging.Formatter on the handler still gives one line per record."""
        stream = io.StringIO()
        handler = JSONHandler(stream, formatter=logging.Formatter("%(levelname)s %(message)s"))

        handler.handle(record())

        assert "INFO hello\n" == stream.getvalue()

    def test_formatter_on_stdlib_handler(self) -> None:
        """JSONFormatter works on a stdlib StreamHandler, which adds the newline itself."""
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JSONFormatter())

        handler.handle(record())

        assert "hello" == lines(stream)[0]["message"]

    def test_write_error_goes_to_handle_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A failing stream is reported through handleError, not raised to the caller."""
        stream = io.BytesIO()
        stream.close()
        handler = JSONHandler(stream)
        seen: list[logging.LogRecord] = []
        monkeypatch.setattr(handler, "handleError", seen.append)

        handler.handle(record())

        assert 1 == len(seen)


class TestConfigureLogging:
    """configure_logging() on the root logger."""

    def test_existing_loggers_become_json(self) -> None:
        """A logger created before configuration writes JSON afterwards."""
        early = logging.getLogger("app.created_early")
        stream = io.BytesIO()
        configure_logging(stream=stream)

        early.info("hi")

        assert "app.created_early" == lines(stream)[0]["logger"]

    def test_reconfigure_replaces_handler(self) -> None:
        """Configuring twice leaves one JSON handler, writing to the new stream."""
        first, second = io.BytesIO(), io.BytesIO()
        configure_logging(stream=first)
        configure_logging(stream=second)

        logging.getLogger("app").info("once")

        assert (b"", 1) == (first.getvalue(), len(lines(second)))

    def test_keeps_other_handlers(self, out: io.BytesIO) -> None:
        """Handlers added by others stay unless force=True."""
        other = ListHandler()
        logging.getLogger().addHandler(other)
        configure_logging(stream=io.BytesIO())
        kept = other in logging.getLogger().handlers
        configure_logging(stream=io.BytesIO(), force=True)

        assert (True, False) == (kept, other in logging.getLogger().handlers)

    def test_level(self, out: io.BytesIO) -> None:
        """Records below the configured level are dropped."""
        configure_logging("WARNING", stream=out)
        logging.getLogger("app").info("dropped")
        logging.getLogger("app").warning("kept")

        assert ["kept"] == [x["message"] for x in lines(out)]

    def test_caller_lookup(self) -> None:
        """The stdlib caller lookup is off by default and back on with callsite=True."""
        configure_logging(stream=io.BytesIO())
        off = logging._srcfile
        configure_logging(stream=io.BytesIO(), callsite=True)

        assert (None, True) == (off, logging._srcfile is not None)


def native(logger: logging.Logger) -> Logger:
    """
    Return a Logger for *logger* after dropping pytest's capture handlers from it.

    pytest attaches those to non-propagating loggers at the start of each test, and any
    handler other than a JSONHandler sends the Logger down the LogRecord path.
    """
    logger.handlers[:] = [h for h in logger.handlers if isinstance(h, JSONHandler)]
    return get_logger(logger.name)


class TestLogger:
    """The keyword-field Logger and its path that skips the LogRecord."""

    @pytest.fixture
    def alone(self) -> Iterator[tuple[logging.Logger, io.BytesIO]]:
        """A logger with its own JSONHandler, not propagating to the root."""
        configure_logging(stream=io.BytesIO())  # switches new loggers to the fast class
        stream = io.BytesIO()
        handler = JSONHandler(stream, formatter=JSONFormatter(service_name="shop"))
        logger = logging.getLogger(f"alone.{uuid.uuid4().hex}")
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
        yield logger, stream
        logger.removeHandler(handler)
        logger.propagate = True

    def test_skips_the_log_record(
        self, alone: tuple[logging.Logger, io.BytesIO], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With only JSON handlers in the way, no LogRecord is built at all."""
        logger, stream = alone
        monkeypatch.setattr(logger, "makeRecord", None)

        native(logger).info("fast", order_id=3)

        assert ("fast", 3, "shop") == (
            lines(stream)[0]["message"],
            lines(stream)[0]["order_id"],
            lines(stream)[0]["service.name"],
        )

    def test_same_line_as_stdlib(self, alone: tuple[logging.Logger, io.BytesIO]) -> None:
        """The native path writes what the stdlib path writes for the same call."""
        logger, stream = alone
        bind(correlation_id="c-1")

        native(logger).warning("paid", order_id=3, card="4111 1111 1111 1111")
        logger.warning("paid", extra={"order_id": 3, "card": "4111 1111 1111 1111"})

        fast, slow = lines(stream)
        assert fast.pop("ts") <= slow.pop("ts")
        assert slow == fast

    def test_field_names(self, alone: tuple[logging.Logger, io.BytesIO]) -> None:
        """Aliases become dotted names; LogRecord and core names get a trailing underscore."""
        logger, stream = alone

        native(logger).info("x", user_id=7, name="ann", level="high")

        assert ["user.id", "name_", "level_"] == list(lines(stream)[0])[-3:]

    def test_levels(self, alone: tuple[logging.Logger, io.BytesIO]) -> None:
        """Each level method writes its level, and levels below the logger's are dropped."""
        logger, stream = alone
        log = native(logger)

        log.debug("dropped")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
        log.log(logging.INFO + 5, "custom")

        assert ["INFO", "WARNING", "ERROR", "CRITICAL", "Level 25"] == [
            x["level"] for x in lines(stream)
        ]

    def test_exception(self, alone: tuple[logging.Logger, io.BytesIO]) -> None:
        """exception() writes the exception being handled."""
        logger, stream = alone
        try:
            raise KeyError("sku")
        except KeyError:
            native(logger).exception("lookup failed")

        assert ("ERROR", "KeyError") == (
            lines(stream)[0]["level"],
            lines(stream)[0]["exception.type"],
        )

    def test_message_not_percent_formatted(self, alone: tuple[logging.Logger, io.BytesIO]) -> None:
        """The message is written as given, percent signs included."""
        logger, stream = alone

        native(logger).info("100%s done %d")

        assert "100%s done %d" == lines(stream)[0]["message"]

    def test_other_handlers_get_a_record(self, out: io.BytesIO) -> None:
        """With another handler in the way, a LogRecord carrying the fields is built for all."""
        other = ListHandler()
        logging.getLogger().addHandler(other)

        get_logger("app").info("slow path", order_id=3, module="billing")

        assert (3, "billing") == (
            vars(other.records[0])["order_id"],
            vars(other.records[0])["module_"],
        )
        assert ("slow path", 3) == (lines(out)[0]["message"], lines(out)[0]["order_id"])

    def test_logger_filters_apply(self, alone: tuple[logging.Logger, io.BytesIO]) -> None:
        """A filter on the logger is honoured (through the stdlib path)."""
        logger, stream = alone
        logger.addFilter(lambda r: r.getMessage() != "drop")

        native(logger).info("drop")
        native(logger).info("keep")

        assert ["keep"] == [x["message"] for x in lines(stream)]

    def test_callsite_points_at_the_caller(self) -> None:
        """With callsite=True the code fields name the function that called the Logger."""
        stream = io.BytesIO()
        configure_logging(stream=stream, callsite=True)

        get_logger("app").info("here")

        assert ("test_callsite_points_at_the_caller", __file__) == (
            lines(stream)[0]["code.function.name"],
            lines(stream)[0]["code.file.path"],
        )

    def test_write_failure_reported(
        self, alone: tuple[logging.Logger, io.BytesIO], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failing stream on the native path goes to handleError, not to the caller."""
        logger, stream = alone
        log = native(logger)
        (handler,) = logger.handlers
        seen: list[logging.LogRecord] = []
        monkeypatch.setattr(handler, "handleError", seen.append)
        stream.close()

        log.info("lost")

        assert ["lost"] == [r.getMessage() for r in seen]

    def test_name(self) -> None:
        """The Logger carries the name of the stdlib logger it wraps."""
        assert "app.orders" == Logger("app.orders").name


class TestStdlibFastPath:
    """Plain stdlib calls skip the LogRecord too, once configure_logging() has run."""

    @pytest.fixture
    def alone(self) -> Iterator[tuple[logging.Logger, io.BytesIO]]:
        """A fast-class logger with its own JSONHandler and nothing else in the way."""
        configure_logging(stream=io.BytesIO())
        stream = io.BytesIO()
        logger = logging.getLogger(f"alone.{uuid.uuid4().hex}")
        logger.addHandler(JSONHandler(stream))
        logger.propagate = False
        yield logger, stream
        logger.handlers.clear()
        logger.propagate = True

    def test_existing_loggers_switch_class(self) -> None:
        """Loggers are switched to the fast class, and back with callsite=True."""
        logger = logging.getLogger("app.switch")
        configure_logging(stream=io.BytesIO())
        fast = type(logger).__name__, type(logging.getLogger()).__name__
        configure_logging(stream=io.BytesIO(), callsite=True)

        assert (("_FastLogger", "_FastRootLogger"), logging.Logger) == (fast, type(logger))

    def test_skips_the_log_record(
        self, alone: tuple[logging.Logger, io.BytesIO], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A stdlib call renders without a LogRecord when only JSON handlers would see it."""
        logger, stream = alone
        native(logger)
        monkeypatch.setattr(logger, "makeRecord", None)

        logger.info("order %s for %d", "A1", 3, extra={"order_id": 3})

        assert ("order A1 for 3", 3) == (lines(stream)[0]["message"], lines(stream)[0]["order_id"])

    def test_same_line_as_the_record_path(self, alone: tuple[logging.Logger, io.BytesIO]) -> None:
        """The shortcut writes exactly what the LogRecord path writes for the same call."""
        logger, stream = alone
        native(logger)
        bind(user_id=7)
        call = ("paid %s with %s", "A1", "4111 1111 1111 1111")
        logger.warning(*call, extra={"items": [1, 2], "ts": "forged"})
        logger.addHandler(ListHandler())
        logger.warning(*call, extra={"items": [1, 2], "ts": "forged"})

        fast, slow = lines(stream)
        assert fast.pop("ts") <= slow.pop("ts")
        assert slow == fast

    def test_lone_mapping_argument(self, alone: tuple[logging.Logger, io.BytesIO]) -> None:
        """A single mapping argument fills named placeholders, as in the stdlib."""
        logger, stream = alone
        native(logger)

        logger.info("%(sku)s x %(n)d", {"sku": "A1", "n": 2})

        assert "A1 x 2" == lines(stream)[0]["message"]

    def test_exc_info_forms(self, alone: tuple[logging.Logger, io.BytesIO]) -> None:
        """exc_info=True, an exception and a tuple all write the exception."""
        logger, stream = alone
        native(logger)
        try:
            raise LookupError("gone")
        except LookupError as exc:
            logger.error("a", exc_info=True)  # noqa: G201 - the form under test
            logger.error("b", exc_info=exc)
            logger.error("c", exc_info=sys.exc_info())  # noqa: G201 - the form under test

        assert ["LookupError"] * 3 == [x["exception.type"] for x in lines(stream)]

    def test_refused_extra_still_raises(self, alone: tuple[logging.Logger, io.BytesIO]) -> None:
        """An extra= key the stdlib refuses raises the stdlib's KeyError."""
        logger, _ = alone
        native(logger)

        with pytest.raises(KeyError, match="Attempt to overwrite 'msg'"):
            logger.info("x", extra={"msg": "y"})  # noqa: G101 - the clash under test
