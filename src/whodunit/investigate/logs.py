"""
Where investigations read application log lines from: JSON-lines files or Loki.

One interface, `LogSource`, with two implementations: `FileLogSource` (``--logs PATH``,
a glob over files written by `whodunit.log`) and `LokiLogSource` (``--loki-url``, Loki's
``query_range`` API with LogQL).  Both return `LogLine` records of the shared log field
contract (``ts``, ``level``, ``message``, ``correlation_id``, ``user.id``, ...), oldest
first, and skip lines that are not such records, counting them rather than failing: a
half-written last line must not hide the rest of an incident's logs.
"""

from __future__ import annotations

import glob
import itertools
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson

from whodunit.errors import ConfigError, WhodunitError
from whodunit.investigate.model import LogLine

__all__ = ["FileLogSource", "LogSource", "LokiLogSource", "parse_line"]

QUERY_RANGE_PATH = "/loki/api/v1/query_range"
#: Without a window, Loki is asked about this far back (its default retention is 30 days).
DEFAULT_LOOKBACK = timedelta(days=30)


class LogSource(Protocol):
    """Log lines matching a request, a time range and/or a user, oldest first."""

    @property
    def skipped(self) -> int:
        """Distinct lines read so far that were not log records (bad JSON, no ``ts``)."""
        ...

    def describe(self) -> str:
        """Name the source for reports (``logs/*.jsonl``, ``loki http://…``)."""
        ...

    def lines(
        self,
        *,
        correlation_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
    ) -> list[LogLine]:
        """
        Return the records that match every filter given, oldest first.

        Args:
            correlation_id: the record's ``correlation_id``.
            since: records at or after this time.
            until: records before this time.
            actor: the record's ``user.id`` or ``user.name``.
        """
        ...


def parse_line(text: str | bytes, origin: str = "") -> LogLine | None:
    """Parse one JSON log line, or return None when it is not a log record."""
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    ts = _timestamp(record.get("ts"))
    if ts is None:
        return None
    return LogLine(
        ts=ts,
        level=str(record.get("level") or ""),
        message=str(record.get("message") or ""),
        correlation_id=_text(record.get("correlation_id")),
        user_id=_text(record.get("user.id")),
        user_name=_text(record.get("user.name")),
        origin=origin,
        fields=record,
    )


def _matches(
    line: LogLine,
    correlation_id: str | None,
    since: datetime | None,
    until: datetime | None,
    actor: str | None,
) -> bool:
    return (
        (correlation_id is None or line.correlation_id == correlation_id)
        and (since is None or line.ts >= since)
        and (until is None or line.ts < until)
        and (actor is None or actor in (line.user_id, line.user_name))
    )


class FileLogSource:
    """
    JSON-lines log files matched by a glob (``**`` descends into directories).

    Files are read anew on every call, so a running app's newest lines are seen.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._bad: set[str] = set()

    @property
    def skipped(self) -> int:
        """Distinct lines read so far that were not log records."""
        return len(self._bad)

    def describe(self) -> str:
        """Name the source by its glob."""
        return f"files {self.pattern}"

    def files(self) -> list[Path]:
        """Return the files the glob matches now, sorted."""
        return sorted(Path(p) for p in glob.glob(self.pattern, recursive=True) if Path(p).is_file())

    def lines(
        self,
        *,
        correlation_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
    ) -> list[LogLine]:
        """
        Return the matching records of every file, oldest first.

        With a correlation id, lines that do not contain it are not parsed at all: the
        id's characters need no JSON escaping (``[A-Za-z0-9._:-]``), so a byte search is
        exact, and it keeps a search through a day of logs fast.
        """
        needle = correlation_id.encode() if correlation_id else None
        found = [
            line
            for line in self._records(needle)
            if _matches(line, correlation_id, since, until, actor)
        ]
        return sorted(found, key=lambda line: line.ts)

    def _records(self, needle: bytes | None) -> Iterator[LogLine]:
        for path in self.files():
            with path.open("rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    if not raw.strip() or (needle is not None and needle not in raw):
                        continue
                    origin = f"{path}:{number}"
                    line = parse_line(raw, origin)
                    if line is None:
                        self._bad.add(origin)
                    else:
                        yield line


class LokiLogSource:
    """
    Loki's HTTP query API: ``GET /loki/api/v1/query_range`` with a LogQL query.

    The stream selector picks the app's streams (labels stay few: ``service``, ``level``);
    the filters run on the JSON of each line (``| json``), where ``user.id`` reads as
    ``user_id``.

    Args:
        url: Loki's base URL, e.g. ``http://loki:3100``.
        selector: the LogQL stream selector.
        limit: the most lines one query returns (Loki's own cap is 5000 by default).
        tenant: sent as ``X-Scope-OrgID`` for a multi-tenant Loki.
        timeout: seconds per request.
    """

    def __init__(
        self,
        url: str,
        selector: str = '{service=~".+"}',
        *,
        limit: int = 5000,
        tenant: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"Loki URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.selector = selector
        self.limit = limit
        self.tenant = tenant
        self.timeout = timeout
        self._bad: set[tuple[str, str, str]] = set()

    @property
    def skipped(self) -> int:
        """Distinct entries received so far that were not log records."""
        return len(self._bad)

    def describe(self) -> str:
        """Name the source by its URL and selector."""
        return f"loki {self.url} {self.selector}"

    def query(
        self,
        correlation_id: str | None = None,
        actor: str | None = None,
    ) -> str:
        """Return the LogQL query for these filters."""
        parts = [self.selector, "json"]
        if correlation_id is not None:
            parts.append(f"correlation_id={_logql_string(correlation_id)}")
        if actor is not None:
            quoted = _logql_string(actor)
            parts.append(f"(user_id={quoted} or user_name={quoted})")
        return " | ".join(parts)

    def lines(
        self,
        *,
        correlation_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
    ) -> list[LogLine]:
        """Ask Loki for the matching records (one request), oldest first."""
        import httpx

        until = until or datetime.now(UTC)
        since = since or until - DEFAULT_LOOKBACK
        params = {
            "query": self.query(correlation_id, actor),
            "start": str(_ns(since)),
            "end": str(_ns(until)),
            "limit": str(self.limit),
            "direction": "forward",
        }
        headers = {"X-Scope-OrgID": self.tenant} if self.tenant else {}
        try:
            response = httpx.get(
                self.url + QUERY_RANGE_PATH, params=params, headers=headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise WhodunitError(
                f"cannot query Loki at {self.url}: {exc}; check --loki-url (WHODUNIT_LOKI_URL)"
            ) from exc
        if response.status_code != 200:
            raise WhodunitError(
                f"Loki at {self.url} answered {response.status_code}: {response.text.strip()[:300]}"
            )
        found = [
            line
            for line in self._parse(response.content)
            if _matches(line, correlation_id, since, until, actor)
        ]
        return sorted(found, key=lambda line: line.ts)

    def _parse(self, body: bytes) -> Iterable[LogLine]:
        try:
            data = orjson.loads(body)
            streams = data["data"]["result"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise WhodunitError(
                f"Loki at {self.url} answered something that is not a query_range result: "
                f"{body[:200]!r}"
            ) from exc
        return itertools.chain.from_iterable(self._stream(s) for s in streams)

    def _stream(self, stream: dict[str, Any]) -> Iterator[LogLine]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(stream.get("stream", {}).items()))
        for value in stream.get("values", []):
            line = parse_line(value[1], labels) if len(value) >= 2 else None
            if line is None:
                self._bad.add((labels, str(value[0]), str(value[-1])))
            else:
                yield line


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _ns(ts: datetime) -> int:
    return int(ts.timestamp()) * 1_000_000_000 + ts.microsecond * 1000


def _logql_string(value: str) -> str:
    """Quote *value* as a LogQL string (Go syntax: JSON's escapes are valid there)."""
    return orjson.dumps(value).decode()
