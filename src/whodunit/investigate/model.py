"""
What an investigation finds, as plain dataclasses.

The queries build them, the report fills them in, the renderers read them; the JSON
output is `dataclasses.asdict` of them, so a field added here is a key added there
(see ``docs/investigate.md`` for the shape scripts may rely on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ALL_TIME",
    "Change",
    "Event",
    "How",
    "Incident",
    "LogLine",
    "Report",
    "StatementDamage",
    "Who",
    "Why",
    "Window",
    "format_ts",
    "rows",
]


@dataclass(frozen=True)
class Window:
    """A time range, either end open (None)."""

    since: datetime | None = None
    until: datetime | None = None

    def describe(self) -> str:
        """``2026-06-01 14:00:00 UTC to now``: an open end reads as now (or … for the start)."""
        return f"{format_ts(self.since)} to {format_ts(self.until) if self.until else 'now'}"


#: No time limit: the default window of the focused questions.
ALL_TIME = Window()


@dataclass(frozen=True)
class Who:
    """
    Who acted: the application's user when one was recorded, and always the DB identity.

    ``inferred`` is true when no app user was recorded, so "who" rests on the database
    identity; ``app_context`` says whether the statement came through the app at all (an
    anonymous request) or not (a psql session, a script, an app that never set it).
    """

    actor_id: str | None = None
    actor_name: str | None = None
    db_session_user: str | None = None
    db_current_user: str | None = None
    client_addr: str | None = None
    application_name: str | None = None
    backend_pid: int | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    inferred: bool = False
    app_context: bool = False
    #: One line for people, e.g. "player1 (actor id 7) as DB role app".
    summary: str = ""


@dataclass(frozen=True)
class How:
    """How the change came in: the SQL text and, when recorded, the request."""

    query: str | None = None
    request_method: str | None = None
    request_path: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None


@dataclass(frozen=True)
class LogLine:
    """One parsed log record (the shared log field contract), from a file or Loki."""

    ts: datetime
    level: str
    message: str
    correlation_id: str | None = None
    user_id: str | None = None
    user_name: str | None = None
    #: Where it came from: ``path:line`` for files, the stream's labels for Loki.
    origin: str = ""
    #: Every field of the record as logged.
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """
    One entry of a timeline or trace: an audited statement, an app event or a log line.

    ``source`` is ``statement``, ``app_event`` or ``log``; ``id`` is the statement's or the
    event's id (None for log lines).
    """

    at: datetime
    source: str
    what: str
    target: str | None = None
    id: int | None = None
    rows: int | None = None
    outcome: str | None = None
    detail: str | None = None
    correlation_id: str | None = None
    who: Who | None = None


@dataclass(frozen=True)
class Change:
    """One audited change of one row: the statement that made it and the row images."""

    statement_id: int
    at: datetime
    txid: int
    op: str
    command_tag: str | None
    table: str
    rows: int
    old_row: dict[str, Any] | None
    new_row: dict[str, Any] | None
    who: Who
    how: How


@dataclass
class StatementDamage:
    """One destructive statement of an incident, on one table."""

    id: int
    at: datetime
    op: str
    command_tag: str | None
    #: ``schema.table`` as people type it, or the DDL object's identity.
    table: str
    rows: int
    rows_captured: int | None
    schema_name: str | None = None
    table_name: str | None = None
    #: The statement this one cascaded from (ON DELETE CASCADE, TRUNCATE ... CASCADE).
    cascaded_from: int | None = None
    #: A few of the removed rows as they were (``row_change.old_row``).
    sample: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """``DELETE``, ``TRUNCATE``, ``UPDATE`` or the DDL command (``DROP TABLE``)."""
        return self.command_tag or self.op


@dataclass
class Why:
    """What surrounds the incident: its request's logs and events, errors, logins."""

    log_lines: list[LogLine] = field(default_factory=list)
    app_events: list[Event] = field(default_factory=list)
    #: Failures (app events, error log lines) of the same actor shortly before.
    errors_before: list[Event] = field(default_factory=list)
    #: ``auth.login_succeeded`` / ``auth.login_failed`` of the actor before the incident.
    logins: list[Event] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Incident:
    """The destructive statements of one transaction, with the answers about them."""

    rank: int
    txid: int
    summary: str
    first_at: datetime
    last_at: datetime
    duration_s: float
    rows_lost: int
    rows_overwritten: int
    tables: list[str]
    who: Who
    how: How
    statements: list[StatementDamage]
    why: Why = field(default_factory=Why)
    prevention: list[str] = field(default_factory=list)

    @property
    def when(self) -> str:
        """The first time, and the last with the duration when they differ by a second."""
        if self.duration_s < 1:
            return format_ts(self.first_at)
        return f"{format_ts(self.first_at)} to {format_ts(self.last_at)} ({self.duration_s:.1f} s)"

    @property
    def headline(self) -> str:
        """A title for the incident: rows lost and where (``40 rows lost in public.users``)."""
        tables = ", ".join(self.tables[:3]) + (" …" if len(self.tables) > 3 else "")
        if self.rows_lost or not self.rows_overwritten:
            return f"{rows(self.rows_lost)} lost in {tables}"
        return f"{rows(self.rows_overwritten)} overwritten in {tables}"


@dataclass
class Report:
    """The incident report over a time window: the answer first, then each incident."""

    window: Window
    answer: str
    incidents: list[Incident]
    #: How many destructive transactions matched in all (``incidents`` may be cut).
    total: int
    filters: dict[str, str | None] = field(default_factory=dict)
    generated_at: datetime | None = None
    log_source: str | None = None
    #: Lines of the log source that were not log records (malformed JSON, no ``ts``).
    log_lines_skipped: int = 0


def rows(n: int) -> str:
    """``1 row``, ``1,000 rows``."""
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def format_ts(ts: datetime | None) -> str:
    """Render a timestamp the way every report shows it: UTC, to the second."""
    if ts is None:
        return "…"
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
