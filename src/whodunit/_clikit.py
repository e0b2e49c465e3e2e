"""
What every ``whodunit`` sub-command shares: options, the connection, error handling, output.

Commands of an area live beside the area (``whodunit/investigate/commands.py``) and are
added to the group in `whodunit.cli`; they import their plumbing from here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console

from whodunit.errors import WhodunitError

__all__ = [
    "CLIState",
    "F",
    "connection",
    "console",
    "data_dir_option",
    "dsn_option",
    "emit_json",
    "error_console",
    "handle_errors",
    "json_option",
    "quiet_option",
]

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
error_console = Console(stderr=True)


class CLIState:
    """State shared by the sub-commands of one invocation."""

    def __init__(self, debug: bool, config: Path | None) -> None:
        self.debug = debug
        self.config = config

    def settings(self) -> Any:
        """Load the settings file and environment (once a command needs them)."""
        from whodunit.config import load

        return load(self.config)


def handle_errors(func: F) -> F:
    """Turn a WhodunitError into a clean one-line message and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import psycopg

        ctx = click.get_current_context()
        state = ctx.find_object(CLIState)
        try:
            return func(*args, **kwargs)
        except (WhodunitError, psycopg.Error) as exc:
            if state and state.debug:
                raise
            # A database error whodunit did not foresee still gets one line, not a traceback.
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            error_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            ctx.exit(getattr(exc, "exit_code", 1))

    return wrapper  # type: ignore[return-value]


def emit_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


dsn_option = click.option(
    "--dsn",
    envvar="WHODUNIT_DSN",
    help="PostgreSQL URI of the audited database [env: WHODUNIT_DSN]; default: the "
    "settings file's dsn, else the embedded database started by 'whodunit db start'.",
)
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="WHODUNIT_DATA_DIR",
    help="Data directory of the embedded database [env: WHODUNIT_DATA_DIR].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")


@contextmanager
def connection(dsn: str | None, **kwargs: Any) -> Iterator[Any]:
    """Connect to --dsn / WHODUNIT_DSN, else the settings file's dsn, else the embedded db."""
    from whodunit.db.connect import connect, resolve_dsn

    if not dsn:
        state = click.get_current_context().find_object(CLIState)
        dsn = state.settings().dsn if state else None
    conn = connect(resolve_dsn(dsn), **kwargs)
    try:
        yield conn
    finally:
        conn.close()
