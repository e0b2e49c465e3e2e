"""``whodunit deploy render`` and ``whodunit deploy check``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table

from whodunit._clikit import CLIState, console, emit_json, handle_errors, json_option

__all__ = ["deploy"]

_STATUS_STYLE = {"passed": "green", "failed": "bold red", "skipped": "yellow"}


@click.group(short_help="Render and check the ops configs (PgBouncer, ...).")
def deploy() -> None:
    """
    Ops configs generated from the [deploy] settings, never written by hand, and
    validated with the real tools where the machine has them.

    \b
    Examples:
      whodunit deploy render --out deploy/ && whodunit deploy check deploy/
      whodunit deploy render --example --out stack/    # secrets generated
    """


@deploy.command("render", short_help="Render every component's configs into a directory.")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Settings file (whodunit.toml) [env: WHODUNIT_CONFIG]; only its [deploy] is read.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output directory: new, empty or a previous render, replaced whole "
    "[env: WHODUNIT_DEPLOY_OUT; setting deploy.out].",
)
@click.option(
    "--example",
    is_flag=True,
    help="Render for the example app: secrets not set are generated into OUT/secrets/.",
)
@json_option
@handle_errors
def render_command(config: Path | None, out: Path | None, example: bool, as_json: bool) -> None:
    """
    Render the components of deploy.components (default: all) from the [deploy] settings.

    Secrets come from WHODUNIT_DEPLOY_<COMPONENT>_<KEY> or a file (the _FILE variable,
    or <key>_file in the settings); no rendered file holds a plaintext password. All or
    nothing: on a bad setting OUT is left as it was.

    \b
    Examples:
      WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD_FILE=/run/secrets/app \\
      WHODUNIT_DEPLOY_PGBOUNCER_ADMIN_PASSWORD_FILE=/run/secrets/admin \\
      WHODUNIT_DEPLOY_PGBOUNCER_STATS_PASSWORD_FILE=/run/secrets/stats \\
        whodunit deploy render --config whodunit.toml --out deploy/
      whodunit deploy render --example --out stack/ --json
    """
    from whodunit.deploy import COMPONENTS, registry
    from whodunit.deploy.render import render
    from whodunit.deploy.settings import load

    state = click.get_current_context().find_object(CLIState)
    settings = load(registry(), config or (state.config if state else None))
    target = out or settings.out
    if target is None:
        raise click.UsageError("give --out DIR (or WHODUNIT_DEPLOY_OUT, or deploy.out)")
    result = render(COMPONENTS, settings, target, example=example)
    files = [
        {"path": f.path, "mode": "0600" if f.secret else "0644"}
        for f in sorted(result.files, key=lambda f: f.path)
    ]
    if as_json:
        emit_json(
            {
                "out": str(result.out),
                "components": list(settings.components),
                "files": files,
                "generated_secrets": result.generated_secrets,
            }
        )
        return
    table = Table(box=None, header_style="bold")
    table.add_column("file")
    table.add_column("mode")
    for file in files:
        table.add_row(file["path"], file["mode"])
    console.print(table)
    console.print(
        f"[green]rendered {', '.join(settings.components)}[/] into {result.out}"
        + (f"; generated {len(result.generated_secrets)} secret(s)" if example else "")
    )
    console.print(f"next: whodunit deploy check {result.out}", highlight=False)


@deploy.command("check", short_help="Validate a render with every tool this machine has.")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--strict", is_flag=True, help="Fail when a check was skipped (a tool is missing).")
@json_option
@handle_errors
def check_command(directory: Path, strict: bool, as_json: bool) -> None:
    """
    Run the checks of every component rendered into DIRECTORY: always the built-in
    ones, and those of the real tools (pgbouncer, ...) when installed; the others are
    reported as skipped, with how to install them. Exits 1 when a check failed.

    \b
    Examples:
      whodunit deploy check deploy/
      whodunit deploy check deploy/ --strict --json    # CI: a missing tool fails too
    """
    from whodunit.deploy import COMPONENTS
    from whodunit.deploy.check import run_checks

    results = run_checks(directory, COMPONENTS)
    counts = {status: sum(r.status == status for r in results) for status in _STATUS_STYLE}
    if as_json:
        emit_json(
            {
                "directory": str(directory),
                "results": [asdict(r) for r in results],
                "ran": counts["passed"] + counts["failed"],
                **counts,
            }
        )
    else:
        table = Table(header_style="bold")
        for column in ("component", "check", "status", "detail"):
            table.add_column(column, overflow="fold")
        for r in results:
            style = _STATUS_STYLE[r.status]
            table.add_row(r.component, r.check, f"[{style}]{r.status}[/]", r.detail)
        console.print(table)
        console.print(
            f"{counts['passed'] + counts['failed']} ran: {counts['passed']} passed, "
            f"{counts['failed']} failed; {counts['skipped']} skipped"
        )
    if counts["failed"] or (strict and counts["skipped"]):
        click.get_current_context().exit(1)
