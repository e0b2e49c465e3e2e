"""
The investigation commands: ``investigate``, ``who-deleted``, ``history``, ``timeline``,
``trace``.  `whodunit.cli` adds `COMMANDS` to the ``whodunit`` group.

The on-call engineer runs these under pressure, so each prints the answer first, and a
bad argument gets one line saying what was wrong and what to type instead.  Everything
beyond click is imported inside the commands: ``whodunit who-deleted`` must print its
answer well within half a second of being started.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from whodunit._clikit import (
    F,
    connection,
    console,
    dsn_option,
    error_console,
    handle_errors,
    json_option,
)

if TYPE_CHECKING:
    from whodunit.investigate.logs import LogSource
    from whodunit.investigate.model import Window

__all__ = [
    "COMMANDS",
    "Duration",
    "Timestamp",
    "history_command",
    "investigate_command",
    "timeline_command",
    "trace_command",
    "who_deleted_command",
]

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class Duration(click.ParamType[timedelta]):
    """A length of time as on-call people write it: ``30m``, ``1h``, ``24h``, ``7d``."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        """Return a `timedelta`, or fail with an example of what is accepted."""
        if isinstance(value, timedelta):
            return value
        match = _DURATION.fullmatch(str(value).strip().lower())
        if not match or int(match[1]) == 0:
            self.fail(
                f"{value!r} is not a duration: give a number and a unit (s, m, h, d, w), "
                "e.g. 30m, 1h, 24h or 7d",
                param,
                ctx,
            )
        return timedelta(**{_UNITS[match[2]]: int(match[1])})


class Timestamp(click.ParamType[datetime]):
    """A point in time in ISO 8601; without an offset it is local time."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        """Return an aware `datetime`, or fail with an example."""
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(
                f"{value!r} is not a time: use ISO 8601, e.g. 2026-06-01T14:00 (local time) "
                "or 2026-06-01T14:00Z",
                param,
                ctx,
            )
        return parsed if parsed.tzinfo else parsed.astimezone()


def _window_options(default_since: str | None) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        since_help = "Look back this long, e.g. 30m, 1h, 24h, 7d"
        if default_since:
            since_help += f" [default: {default_since}, unless --from/--to]"
        func = click.option(
            "--to", "until", type=Timestamp(), help="End of the window (ISO 8601)."
        )(func)
        func = click.option(
            "--from", "start", type=Timestamp(), help="Start of the window (ISO 8601)."
        )(func)
        return click.option("--since", type=Duration(), help=since_help + ".")(func)

    return decorate


def _log_options(func: F) -> F:
    func = click.option(
        "--loki-selector",
        envvar="WHODUNIT_LOKI_SELECTOR",
        default='{service=~".+"}',
        show_default=True,
        help="LogQL stream selector of the app's logs [env: WHODUNIT_LOKI_SELECTOR].",
    )(func)
    func = click.option(
        "--loki-url",
        envvar="WHODUNIT_LOKI_URL",
        metavar="URL",
        help="Read log lines from Loki's query API [env: WHODUNIT_LOKI_URL].",
    )(func)
    return click.option(
        "--logs",
        metavar="GLOB",
        help="Read log lines from JSON-lines files; quote the glob: 'logs/**/*.jsonl'.",
    )(func)


def _log_source(logs: str | None, loki_url: str | None, selector: str) -> LogSource | None:
    if logs and loki_url:
        raise click.UsageError("give --logs or --loki-url, not both")
    if logs:
        from whodunit.investigate.logs import FileLogSource

        return FileLogSource(logs)
    if loki_url:
        from whodunit.investigate.logs import LokiLogSource

        return LokiLogSource(loki_url, selector)
    return None


def _window(
    since: timedelta | None, start: datetime | None, until: datetime | None
) -> tuple[Window | None, timedelta | None]:
    from whodunit.investigate.model import Window

    if since is not None and (start or until):
        raise click.UsageError("give --since or --from/--to, not both")
    return (Window(start, until) if start or until else None), since


def _report_skipped(source: LogSource | None) -> None:
    if source is not None and source.skipped:
        error_console.print(
            f"skipped {source.skipped} log line(s) that are not JSON log records",
            style="yellow",
            highlight=False,
        )


@click.command("investigate", short_help="The incident report: who destroyed what, when, how, why.")
@dsn_option
@_window_options("24h")
@click.option("--table", help="Only transactions that removed rows of this table.")
@click.option("--actor", help="Only this app user (id or name) or DB role.")
@click.option(
    "--mass-update-rows",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="An UPDATE of this many rows or more counts as destructive.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Describe at most this many incidents.",
)
@_log_options
@json_option
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML report to this file.",
)
@click.option(
    "--markdown",
    "markdown_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a Markdown report (for an incident channel) to this file.",
)
@handle_errors
def investigate_command(
    dsn: str | None,
    since: timedelta | None,
    start: datetime | None,
    until: datetime | None,
    table: str | None,
    actor: str | None,
    mass_update_rows: int,
    limit: int,
    logs: str | None,
    loki_url: str | None,
    loki_selector: str,
    as_json: bool,
    html_file: Path | None,
    markdown_file: Path | None,
) -> None:
    """
    Rank what destroyed data (DELETE, TRUNCATE, DROP, mass UPDATE) by rows lost, and
    answer for each incident: who (app user, DB role, client, application), when, what
    (tables, rows, cascades, rows as they were), how (SQL, request, correlation id), why
    (the request's logs and events, errors just before, logins) and what would have
    prevented it. The first line is the answer.

    \b
    Examples:
      whodunit investigate                          # the last 24 hours
      whodunit investigate --since 1h --table '"User"'
      whodunit investigate --from 2026-06-01T14:00 --to 2026-06-01T15:00
      whodunit investigate --logs 'logs/*.jsonl' --html report.html --markdown report.md
      whodunit investigate --json | jq '.incidents[0].who'
    """
    from whodunit.investigate.render import to_html, to_json, to_markdown
    from whodunit.investigate.report import investigate

    window, since = _window(since, start, until)
    source = _log_source(logs, loki_url, loki_selector)
    with connection(dsn) as conn:
        report = investigate(
            conn,
            window,
            since=since,
            table=table,
            actor=actor,
            log_source=source,
            mass_rows=mass_update_rows,
            limit=limit,
        )
    for path, render in ((html_file, to_html), (markdown_file, to_markdown)):
        if path is not None:
            path.write_text(render(report), encoding="utf-8")
    if as_json:
        click.echo(to_json(report), nl=False)
    else:
        from whodunit.investigate.terminal import print_report

        print_report(console, report)
        for path in (html_file, markdown_file):
            if path is not None:
                console.print(f"report written to {path}", style="dim", highlight=False)
    _report_skipped(source)


@click.command("who-deleted", short_help="Who removed one row: DELETE, TRUNCATE or DROP.")
@dsn_option
@click.argument("table")
@click.argument("pk")
@json_option
@handle_errors
def who_deleted_command(dsn: str | None, table: str, pk: str, as_json: bool) -> None:
    """
    Find the statement that removed the row of TABLE whose primary key is PK, and say who
    ran it, when, through which request, and what the row held. Exits 1 when no deletion
    of that row was recorded.

    TABLE may be unquoted (User finds "User") and may have been dropped since. For a
    composite key give PK as a JSON array or comma-separated: '[7, "admin"]' or 7,admin.

    \b
    Examples:
      whodunit who-deleted User 3f2a7c1e-9b0d-4e57-8a41-5d6c0f1e2b3a
      whodunit who-deleted public.orders 4711 --json | jq .change.who
    """
    from whodunit.investigate.queries import check_trail, history, who_deleted
    from whodunit.investigate.tables import resolve_table

    with connection(dsn) as conn:
        check_trail(conn)
        target = resolve_table(conn, table)
        change = who_deleted(conn, target, pk)
        if change is None:
            _not_found(target, pk, history(conn, target, pk), as_json, "deletion")
            return
    from whodunit.investigate.terminal import change_answer, print_deletion

    if as_json:
        _emit({"table": str(target), "pk": pk, "found": True,
               "answer": change_answer(str(target), pk, change), "change": change})  # fmt: skip
    else:
        print_deletion(console, str(target), pk, change)


def _not_found(table: Any, pk: str, changes: list[Any], as_json: bool, looked_for: str) -> None:
    """Say that nothing was found (an answer, not an error) and exit 1."""
    from whodunit.investigate.model import format_ts

    if changes:
        last = changes[-1]
        answer = (
            f"no {looked_for} recorded for {table} {pk}: {len(changes)} change(s) recorded, "
            f"the last {last.command_tag or last.op} at {format_ts(last.at)}; "
            f"see 'whodunit history {table} {pk}'"
        )
    else:
        answer = (
            f"no change recorded for {table} {pk}: check the key, and that the table was "
            "audited at the time ('whodunit status')"
        )
    if as_json:
        _emit({"table": str(table), "pk": pk, "found": False, "answer": answer, "change": None})
    else:
        console.print(answer, highlight=False, soft_wrap=True)
    click.get_current_context().exit(1)


@click.command("history", short_help="A row's whole life: every change, with who and how.")
@dsn_option
@click.argument("table")
@click.argument("pk")
@_window_options(None)
@json_option
@handle_errors
def history_command(
    dsn: str | None,
    table: str,
    pk: str,
    since: timedelta | None,
    start: datetime | None,
    until: datetime | None,
    as_json: bool,
) -> None:
    """
    List every INSERT, UPDATE, DELETE, TRUNCATE and DROP that touched the row of TABLE
    whose primary key is PK, oldest first, with the values before and after and who made
    each change. Exits 1 when nothing was recorded for that row.

    \b
    Examples:
      whodunit history User 3f2a7c1e-9b0d-4e57-8a41-5d6c0f1e2b3a
      whodunit history public.orders 4711 --since 7d --json
    """
    from whodunit.investigate.model import ALL_TIME, Window
    from whodunit.investigate.queries import check_trail, history
    from whodunit.investigate.tables import resolve_table

    window, since = _window(since, start, until)
    with connection(dsn) as conn:
        check_trail(conn)
        target = resolve_table(conn, table)
        # All time unless bounded; an open end stays open (--to alone: everything before).
        bounds = Window(datetime.now(UTC) - since, None) if since else window or ALL_TIME
        changes = history(conn, target, pk, window=bounds)
    if not changes:
        _not_found(target, pk, [], as_json, "change")
        return
    if as_json:
        _emit({"table": str(target), "pk": pk, "changes": changes})
    else:
        from whodunit.investigate.terminal import print_history

        print_history(console, str(target), pk, changes)


@click.command("timeline", short_help="What one user, DB role, address or request did, in order.")
@dsn_option
@click.option("--actor", help="App user id or name.")
@click.option("--db-user", help="DB role (logged in as, or chosen with SET ROLE).")
@click.option("--client-addr", help="IP address, as the database or the app saw it.")
@click.option("--correlation-id", help="A request's correlation id.")
@_window_options("24h")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="At most this many statements (and as many app events).",
)
@_log_options
@json_option
@handle_errors
def timeline_command(
    dsn: str | None,
    actor: str | None,
    db_user: str | None,
    client_addr: str | None,
    correlation_id: str | None,
    since: timedelta | None,
    start: datetime | None,
    until: datetime | None,
    limit: int,
    logs: str | None,
    loki_url: str | None,
    loki_selector: str,
    as_json: bool,
) -> None:
    """
    List the audited statements and app events (logins, @audit_log actions) of one app
    user, DB role, client address or correlation id, oldest first; with --logs or
    --loki-url, also the user's or the request's log lines.

    \b
    Examples:
      whodunit timeline --actor player1 --since 7d
      whodunit timeline --db-user dev1 --from 2026-06-01T00:00 --to 2026-06-02T00:00
      whodunit timeline --client-addr 10.0.0.5 --json
    """
    from whodunit.investigate.queries import check_trail, timeline
    from whodunit.investigate.report import resolve_window

    window, since = _window(since, start, until)
    source = _log_source(logs, loki_url, loki_selector)
    filters = {
        "actor": actor,
        "db_user": db_user,
        "client_addr": client_addr,
        "correlation_id": correlation_id,
    }
    if not any(filters.values()):
        raise click.UsageError("give --actor, --db-user, --client-addr or --correlation-id")
    with connection(dsn) as conn:
        check_trail(conn)
        bounds = resolve_window(window, since)
        events = timeline(conn, **filters, window=bounds, limit=limit, log_source=source)
    title = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in filters.items() if v)
    if as_json:
        _emit({"filters": filters, "window": bounds, "events": events})
    else:
        from whodunit.investigate.terminal import print_events

        print_events(console, title, events)
    _report_skipped(source)


@click.command("trace", short_help="One request: log lines, app events and DB changes, in order.")
@dsn_option
@click.argument("correlation_id")
@_log_options
@json_option
@handle_errors
def trace_command(
    dsn: str | None,
    correlation_id: str,
    logs: str | None,
    loki_url: str | None,
    loki_selector: str,
    as_json: bool,
) -> None:
    """
    Put everything recorded under CORRELATION_ID (the X-Request-ID of a request) in one
    ordered list: its log lines (--logs or --loki-url), its app events and the database
    changes it made. Exits 1 when nothing was recorded under it.

    \b
    Examples:
      whodunit trace req-5e1d --logs 'logs/*.jsonl'
      whodunit trace req-5e1d --loki-url http://loki:3100 --loki-selector '{service="api"}'
    """
    from whodunit.investigate.queries import check_trail, trace

    source = _log_source(logs, loki_url, loki_selector)
    with connection(dsn) as conn:
        check_trail(conn)
        events = trace(conn, correlation_id, source)
    if as_json:
        _emit({"correlation_id": correlation_id, "events": events})
    else:
        from whodunit.investigate.terminal import print_events

        if events:
            print_events(console, f"correlation id {correlation_id}", events)
        else:
            console.print(f"nothing recorded for correlation id {correlation_id}", highlight=False)
    _report_skipped(source)
    if not events:
        click.get_current_context().exit(1)


def _emit(data: Any) -> None:
    from whodunit.investigate.render import to_json

    click.echo(to_json(data), nl=False)


#: The commands `whodunit.cli` adds to the ``whodunit`` group.
COMMANDS: list[click.Command] = [
    investigate_command,
    who_deleted_command,
    history_command,
    timeline_command,
    trace_command,
]
