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
from rich.markup import escape

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


class LazyGroup(click.Group):
    """
    A group whose sub-commands are imported only when one of them runs (or help lists them).

    Each area's commands pull in their own libraries (rich renderers, httpx, SQLAlchemy...);
    importing them all for every ``whodunit`` call would cost the start-up time the
    3 a.m. commands (``who-deleted``) are measured by.

    Args:
        lazy_subcommands: Command name to ``"module:attribute"``.
    """

    def __init__(
        self, *args: Any, lazy_subcommands: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy_subcommands.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        import importlib

        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


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
            error_console.print(
                f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
            )
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
