"""
``whodunit restore``: the lost rows put back, from the audit trail.

A dry run unless ``--apply``: the engineer reads what would come back, what conflicts
and what cannot, before anything changes.  The work is in `whodunit.investigate.restore`,
imported inside the command: the ``whodunit`` group loads this module for every
sub-command, and the quick questions must not pay for psycopg.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import click

from whodunit._clikit import (
    connection,
    console,
    dsn_option,
    emit_json,
    error_console,
    handle_errors,
    json_option,
    quiet_option,
)
from whodunit.investigate.commands import Duration, Timestamp

if TYPE_CHECKING:
    from whodunit.investigate.restore import RestorePlan, RestoreResult, Unrestorable

__all__ = ["restore"]

#: The choices of --on-conflict: `whodunit.investigate.restore.ON_CONFLICT`, spelled out
#: here so that building the command imports nothing heavy (a test keeps them equal).
ON_CONFLICT = ("skip", "overwrite")

# Statements listed one by one in the dry run; the rest are counted.
_SHOWN_STATEMENTS = 10


class Moment(click.ParamType[datetime]):
    """A point in time: a duration ago (``30m``, ``1h``, ``2d``) or an ISO 8601 time."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        """Return an aware `datetime`, or fail showing both forms."""
        if isinstance(value, datetime):
            return value
        for kind in (Duration(), Timestamp()):
            try:
                read = kind.convert(value, param, ctx)
            except click.BadParameter:
                continue
            return read if isinstance(read, datetime) else datetime.now(UTC) - read
        self.fail(
            f"{value!r} is not a time: give a duration ago (30m, 1h, 2d) or ISO 8601 "
            "(2026-06-01T14:00 local time, 2026-06-01T14:00Z)",
            param,
            ctx,
        )


@click.command("restore", short_help="Put back rows deleted or overwritten, from the trail.")
@dsn_option
@click.option(
    "--statement",
    "statement_id",
    type=click.IntRange(min=1),
    help="Statement id (whodunit.statement.id), with the cascades it caused.",
)
@click.option("--tx", "txid", type=click.IntRange(min=1), help="Transaction id (statement.txid).")
@click.option("--since", type=Moment(), help="Start of a time window: 30m, 1h, 2d ago or ISO 8601.")
@click.option("--until", type=Moment(), help="End of the --since window (default: now).")
@click.option("--table", help="Only this table, TABLE or SCHEMA.TABLE (quote mixed case).")
@click.option("--apply", is_flag=True, help="Put the rows back; without it nothing changes.")
@click.option(
    "--on-conflict",
    type=click.Choice(ON_CONFLICT),
    default="skip",
    show_default=True,
    help="Rows changed since: leave them (skip) or write the earlier values over them.",
)
@json_option
@quiet_option
@handle_errors
def restore(
    dsn: str | None,
    statement_id: int | None,
    txid: int | None,
    since: datetime | None,
    until: datetime | None,
    table: str | None,
    apply: bool,
    on_conflict: Literal["skip", "overwrite"],
    as_json: bool,
    quiet: bool,
) -> None:
    """
    Put back the rows that a statement (with its ON DELETE CASCADE), a transaction or a
    time window deleted, truncated, dropped or overwrote, from the audit trail.

    Without --apply it is a dry run: it prints the rows it would put back and set back
    per table, the conflicts (a row with that key exists again, a value changed since)
    and what cannot be restored, and changes nothing.  With --apply it writes them in
    one transaction, parents before children, audited as actor whodunit-restore; a
    constraint it would break rolls everything back.  Needs a superuser.

    \b
    Examples:
      whodunit restore --statement 4711                # dry run: what would come back
      whodunit restore --statement 4711 --apply
      whodunit restore --tx 912345 --apply --on-conflict overwrite
      whodunit restore --since 1h --table '"User"' --json
      whodunit restore --since '2026-06-01 14:00' --until '2026-06-01 14:30' --apply
    """
    from whodunit.investigate.restore import Selection, apply_restore, plan_restore

    selection = Selection(statement_id, txid, since, until, table)
    show = not (quiet or as_json) and error_console.is_terminal
    with connection(dsn, autocommit=True) as conn, _progress(show) as progress:
        # An apply decides every row again under its locks: a dry run first would
        # only double the work.
        plan = plan_restore(conn, selection, decide=not apply, progress=progress)
        result = apply_restore(conn, plan, on_conflict, progress=progress) if apply else None
    if as_json:
        emit_json(result.as_dict() if result else plan.as_dict())
    elif quiet:
        return
    elif result:
        _print_result(result)
    else:
        _print_plan(plan, on_conflict)


@contextmanager
def _progress(show: bool) -> Iterator[Any]:
    """A progress callback drawing a rich bar on the terminal, or None."""
    if not show:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=error_console, transient=True) as bar:
        task = bar.add_task("reading the trail", total=None)

        def advance(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        yield advance


def _print_plan(plan: RestorePlan, on_conflict: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(
        f"[bold]Dry run[/] — nothing changed. Restoring {escape(plan.selection.describe())} "
        f"would undo {len(plan.statements)} statement(s):"
    )
    for s in plan.statements[:_SHOWN_STATEMENTS]:
        who = s.actor or f"role {s.db_user}"
        app = f", {s.application_name}" if s.application_name else ""
        console.print(
            f"  {s.id}  {s.at:%Y-%m-%d %H:%M:%S%z}  {s.op} of {s.rows:,} row(s) on "
            f"{escape(s.table)} by {escape(who)}{escape(app)}",
            highlight=False,
        )
    if len(plan.statements) > _SHOWN_STATEMENTS:
        console.print(f"  … and {len(plan.statements) - _SHOWN_STATEMENTS} more")
    if plan.tables:
        grid = Table(box=None, header_style="bold", padding=(0, 2, 0, 0))
        grid.add_column("table", no_wrap=True)
        for column in ("re-insert", "revert", "as before", "conflicts"):
            grid.add_column(column, justify="right", no_wrap=True)
        grid.add_column("note", min_width=10)
        for t in plan.tables:
            # Short: the notes below say more.
            note = ", ".join(
                filter(
                    None,
                    [
                        "re-created" if t.recreate_from else "",
                        f"{t.created:,} new rows kept" if t.created else "",
                    ],
                )
            )
            grid.add_row(
                escape(t.table),
                f"{t.insert:,}",
                f"{t.revert:,}",
                f"{t.unchanged:,}",
                f"{sum(t.conflicts.values()):,}",
                note,
            )
        console.print(grid)
    samples = [(t.table, c) for t in plan.tables for c in t.samples]
    if samples:
        action = "skipped" if on_conflict == "skip" else "overwritten"
        console.print(f"[yellow]Conflicts[/] ({action} with --on-conflict {on_conflict}):")
        for name, conflict in samples:
            key = ", ".join(f"{k}={v}" for k, v in conflict.key.items())
            console.print(f"  {escape(name)} ({escape(key)}): {conflict.reason}", highlight=False)
    _print_lost(plan.cannot_restore, plan.notes)
    if plan.rows_to_insert or plan.rows_to_revert or plan.conflicts:
        console.print("Run the same command with --apply to put them back.")
    else:
        console.print("Nothing to write: every row is already as it was, or cannot be restored.")


def _print_result(result: RestoreResult) -> None:
    from rich.markup import escape

    from whodunit.investigate.restore import RESTORE_ACTOR

    handled = sum(t.overwritten + t.skipped for t in result.tables)
    verb = "overwritten" if result.on_conflict == "overwrite" else "skipped"
    console.print(
        f"[green]Restored[/] {escape(result.selection.describe())} in {result.seconds:.2f} s: "
        f"{result.inserted:,} row(s) put back, {result.reverted:,} set back, "
        f"{handled:,} conflict(s) {verb}, in {len(result.tables)} table(s)."
    )
    for t in result.tables:
        recreated = (
            f", table re-created from statement {t.recreated_from}" if t.recreated_from else ""
        )
        console.print(
            f"  {escape(t.table)}: {t.inserted:,} put back, {t.reverted:,} set back, "
            f"{t.overwritten + t.skipped:,} {verb}, {t.unchanged:,} already as before{recreated}",
            highlight=False,
        )
    _print_lost(result.cannot_restore, result.notes)
    console.print(
        f"The restore's own changes are in the trail as actor {RESTORE_ACTOR}, correlation id "
        f"{result.correlation_id}."
    )


def _print_lost(cannot: list[Unrestorable], notes: list[str]) -> None:
    from rich.markup import escape

    if cannot:
        console.print("[red]Cannot restore[/]:")
        for c in cannot:
            rows = f"{c.rows:,} row(s)" if c.rows is not None else "rows"
            console.print(f"  {escape(c.table)}: {rows} — {escape(c.reason)}", highlight=False)
    for note in notes:
        console.print(f"[dim]note:[/] {escape(note)}", highlight=False)
