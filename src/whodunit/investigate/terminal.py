"""
The answers in a terminal, with rich: the answer first, then the evidence, aligned.

Values from the trail go into `rich.text.Text` objects, never into markup strings, so a
row or a query holding ``[bold]`` or escape sequences prints as it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from whodunit.investigate.model import Change, Event, Incident, Report, Who, format_ts, rows
from whodunit.investigate.queries import actor_phrase

__all__ = ["change_answer", "print_deletion", "print_events", "print_history", "print_report"]

_MAX_WHY = 12


def print_report(console: Console, report: Report) -> None:
    """Print the incident report: the answer, then each incident, worst first."""
    style = "bold red" if report.incidents else "bold green"
    console.print(Text(report.answer, style=style))
    shown = f"{len(report.incidents)} shown" if report.total > len(report.incidents) else ""
    console.print(
        Text(
            f"window {report.window.describe()} · "
            f"{report.total} destructive transaction(s) {shown}".rstrip(),
            style="dim",
        )
    )
    for incident in report.incidents:
        console.print()
        console.print(Rule(Text(f"#{incident.rank}  {incident.headline}"), align="left"))
        console.print(_incident(incident))


def _incident(incident: Incident) -> Table:
    grid = _grid()
    how = incident.how
    grid.add_row("Who", _who(incident.who))
    grid.add_row("When", Text(incident.when))
    grid.add_row("What", _statements(incident))
    request = " ".join(filter(None, (how.request_method, how.request_path)))
    ids = f"correlation id {how.correlation_id or '-'} · trace id {how.trace_id or '-'}"
    how_text = Text(f"{request} · {ids}" if request else ids)
    if how.query:
        how_text.append("\n" + how.query.strip(), style="cyan")
    grid.add_row("How", how_text)
    samples = [row for s in incident.statements for row in s.sample][:3]
    if samples:
        grid.add_row("Before", Text("\n".join(_row(r) for r in samples), style="dim"))
    why = _why(incident)
    if why:
        grid.add_row("Why", why)
    if incident.prevention:
        grid.add_row("Prevent", Text("\n".join(f"• {p}" for p in incident.prevention)))
    return grid


def _who(who: Who) -> Text:
    text = Text(who.summary, style="bold red" if who.inferred else "bold")
    role = f"DB role {who.db_current_user}"
    if who.db_session_user != who.db_current_user:
        role += f" (logged in as {who.db_session_user})"
    detail = [
        role,
        f"client {who.client_addr or 'local socket'}",
        f"application {who.application_name or '(none)'}",
        f"backend pid {who.backend_pid}",
    ]
    if who.client_ip:
        detail.append(f"end user {who.client_ip}")
    text.append("\n" + " · ".join(detail), style="dim")
    return text


def _statements(incident: Incident) -> Table:
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for column, justify in (
        ("id", "right"),
        ("kind", "left"),
        ("table", "left"),
        ("rows", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("cascaded from", justify="right")
    for s in incident.statements:
        table.add_row(
            str(s.id), Text(s.kind), Text(s.table), f"{s.rows:,}", str(s.cascaded_from or "")
        )
    return table


def _why(incident: Incident) -> RenderableType | None:
    why = incident.why
    lines: list[Text] = []
    for e in why.logins:
        lines.append(Text(f"{format_ts(e.at)}  {e.what} {e.target or ''} ({e.outcome})"))
    for e in why.errors_before:
        lines.append(Text(f"{format_ts(e.at)}  before: {e.what} {e.detail or ''}", style="red"))
    for e in why.app_events:
        lines.append(Text(f"{format_ts(e.at)}  event {e.what} ({e.outcome})"))
    for line in why.log_lines:
        lines.append(Text(f"{format_ts(line.ts)}  {line.level:<7} {line.message}"))
    if len(lines) > _MAX_WHY:
        lines = [*lines[:_MAX_WHY], Text(f"… {len(lines) - _MAX_WHY} more (--json)", style="dim")]
    lines += [Text(note, style="yellow") for note in why.notes]
    return Group(*lines) if lines else None


def change_answer(table: str, pk: str, change: Change) -> str:
    """One sentence: who removed the row, when, by what, through which request."""
    by = actor_phrase(change.who)
    what = change.command_tag or change.op
    text = (
        f"{table} {pk} was removed by {by} at {format_ts(change.at)}: {what} of "
        f"{rows(change.rows)} (statement {change.statement_id}, transaction {change.txid})"
    )
    request = " ".join(filter(None, (change.how.request_method, change.how.request_path)))
    if request:
        text += f" via {request}"
    if change.how.correlation_id:
        text += f" (correlation id {change.how.correlation_id})"
    return text + "."


def print_deletion(console: Console, table: str, pk: str, change: Change) -> None:
    """Print who removed one row: the answer, the SQL, the row as it was."""
    console.print(Text(change_answer(table, pk, change), style="bold red"))
    grid = _grid()
    if change.how.query:
        grid.add_row("SQL", Text(change.how.query.strip(), style="cyan"))
    grid.add_row("Who", _who(change.who))
    if change.old_row is not None:
        grid.add_row("Before", Text(_row(change.old_row, indent=True)))
    console.print(grid)


def print_history(console: Console, table: str, pk: str, changes: Sequence[Change]) -> None:
    """Print a row's life: one line per change, with what changed."""
    console.print(Text(f"{table} {pk}: {len(changes)} change(s)", style="bold"))
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("at", "op", "statement", "who", "change"):
        grid.add_column(column)
    for c in changes:
        grid.add_row(
            format_ts(c.at),
            c.command_tag or c.op,
            str(c.statement_id),
            Text(actor_phrase(c.who), style="red" if c.who.inferred else ""),
            Text(_difference(c)),
        )
    console.print(grid)


def _difference(change: Change) -> str:
    old, new = change.old_row, change.new_row
    if old is not None and new is not None:
        changed = [k for k in {**old, **new} if old.get(k) != new.get(k)]
        return "; ".join(f"{k}: {_value(old.get(k))} → {_value(new.get(k))}" for k in changed)
    return _row(new if new is not None else old or {})


def print_events(console: Console, title: str, events: Sequence[Event]) -> None:
    """Print a timeline or trace: one aligned line per statement, event or log line."""
    console.print(Text(f"{title}: {len(events)} entr{'y' if len(events) == 1 else 'ies'}"))
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("at", "source", "what", "target", "rows", "who", "detail"):
        grid.add_column(column, overflow="fold")
    for e in events:
        failed = e.outcome == "failure"
        grid.add_row(
            format_ts(e.at),
            e.source,
            Text(e.what, style="red" if failed else ""),
            Text(e.target or ""),
            "" if e.rows is None else f"{e.rows:,}",
            Text(actor_phrase(e.who) if e.who and e.source != "log" else _log_user(e)),
            Text(e.detail or ""),
        )
    console.print(grid)


def _log_user(event: Event) -> str:
    who = event.who
    return (who.actor_name or who.actor_id or "") if who else ""


def _grid() -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    return grid


def _row(row: dict[str, Any], indent: bool = False) -> str:
    return json.dumps(row, ensure_ascii=False, indent=2 if indent else None)


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
