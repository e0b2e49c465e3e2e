"""
The ``whodunit verify`` command: recompute the hash chain and name what was tampered with.

Everything beyond click is imported when the command runs, so ``whodunit --help`` stays
fast.
"""

from __future__ import annotations

from datetime import datetime

import click

from whodunit._clikit import console, dsn_option, emit_json, handle_errors, json_option

__all__ = ["verify"]


@click.command("verify", short_help="Check the trail against its hash chain (seals).")
@dsn_option
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
    help="Check only the seals made from this time on (UTC unless an offset is given).",
)
@click.option(
    "--against",
    metavar="HASH|SEAL_ID:HASH",
    help="A seal hash published outside the database (the whodunit.seal log line): "
    "the chain must still hold it.",
)
@click.option(
    "--name",
    envvar="WHODUNIT_WATCH_NAME",
    default="default",
    show_default=True,
    help="Whose chain: the watcher's name [env: WHODUNIT_WATCH_NAME].",
)
@json_option
@handle_errors
def verify(
    dsn: str | None, since: datetime | None, against: str | None, name: str, as_json: bool
) -> None:
    """
    Recompute the hash chain the watcher keeps over the trail and name the first record
    altered (its hash differs from the sealed one), inserted (it should be sealed and is
    not) or missing (sealed, and gone). Exit code 0: intact; 1: tampering found.

    A superuser can rebuild the whole chain inside the database; --against the hash of
    a seal published outside it (the log stream, the metrics) catches that.

    \b
    Examples:
      whodunit verify
      whodunit verify --since 2026-11-01 --json
      whodunit verify --against 412:3f5c…e9
    """
    from datetime import UTC

    from whodunit._clikit import connection
    from whodunit.watch.seal import parse_against
    from whodunit.watch.seal import verify as run_verify

    pinned = parse_against(against) if against else None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    with connection(dsn, autocommit=True) as conn:
        report = run_verify(conn, watcher=name, since=since, against=pinned)
    if as_json:
        emit_json(report.to_json())
    elif report.intact:
        last = f"; last seal {report.last_seal_id}: {report.last_hash}" if report.last_hash else ""
        console.print(
            f"intact: {report.seals} seals, {report.records} records{last}", highlight=False
        )
    else:
        first = report.first
        assert first is not None
        console.print(f"[bold red]tampered:[/] {first.detail}", highlight=False)
        for finding in report.findings[1:]:
            console.print(f"  also: {finding.detail}", highlight=False)
    if not report.intact:
        click.get_current_context().exit(1)
