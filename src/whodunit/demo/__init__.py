"""
The demo behind ``make demo``: a small incident on the embedded PostgreSQL.

An app role works with its context set, then a developer connects "by hand" as another
role, deletes most users (cascading into their profiles and friend requests) and drops a
table; whodunit's trail shows who did what.  The full incident replay with alerts,
investigation and restore builds on this.
"""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

from whodunit.db.embedded import LocalCluster
from whodunit.db.install import install

__all__ = ["run"]

DEMO_DB = "gameclub"
APP_CONTEXT = {
    "actor_id": "17",
    "actor_name": "admin@gameclub",
    "correlation_id": "req-5e1d2c",
    "method": "POST",
    "path": "/admin/cleanup",
    "client_ip": "198.51.100.23",
    "user_agent": "Mozilla/5.0",
}


def run(
    cluster: LocalCluster | None = None, console: Console | None = None
) -> list[dict[str, Any]]:
    """
    Replay the incident and print the trail; return the statement rows it captured.

    Args:
        cluster: where to run; a throwaway cluster in a temporary directory by default.
        console: where to print.
    """
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="whodunit-demo-") as tmp:
        own = cluster is None
        cluster = cluster or LocalCluster(Path(tmp) / "pg")
        try:
            with console.status("starting the embedded PostgreSQL"):
                server_dsn = cluster.start()
            return _replay(cluster, server_dsn, console)
        finally:
            if own:
                cluster.stop()


def _replay(cluster: LocalCluster, server_dsn: str, console: Console) -> list[dict[str, Any]]:
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DEMO_DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DEMO_DB}")
    dsn = cluster.dsn(DEMO_DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_sql("schema.sql"))
        result = install(conn, ["public"])
        console.print(
            f"[green]✓[/] whodunit v{result.to_version} audits {len(result.tables_enabled)} tables"
        )

    # 1. The application, with the request's context on each transaction.
    with psycopg.connect(
        cluster.dsn(DEMO_DB, user="gameclub_app"), application_name="gameclub"
    ) as app:
        app.execute("SELECT set_config('whodunit.context', %s, true)", (json.dumps(APP_CONTEXT),))
        app.execute(_sql("traffic.sql"))
        app.commit()
    console.print("[green]✓[/] the app signed up 40 players, with profiles and friend requests")

    # 2. A developer, by hand, as another role and with no app context.
    with psycopg.connect(cluster.dsn(DEMO_DB, user="ops_dev"), application_name="psql") as dev:
        dev.execute("DELETE FROM users WHERE username <> 'player1'")
        dev.commit()
    with psycopg.connect(dsn, application_name="psql") as dba:
        dba.execute("DROP TABLE games")
        dba.commit()
    console.print("[red]✗[/] someone deleted 39 players and dropped a table")

    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT id, at, op, coalesce(command_tag, op) AS what, table_name, rows, "
            "db_current_user, application_name, actor_name, correlation_id, "
            "left(query, 60) AS query "
            "FROM whodunit.statement ORDER BY id"
        ).fetchall()
    _print_trail(rows, console)
    return rows


def _print_trail(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="what whodunit captured", header_style="bold", title_justify="left")
    for column in ("id", "what", "table", "rows", "db role", "app", "app user", "request"):
        table.add_column(column, no_wrap=column in ("what", "table", "db role"))
    for r in rows:
        table.add_row(
            str(r["id"]), r["what"], r["table_name"] or "", f"{r['rows']:,}", r["db_current_user"],
            r["application_name"] or "", r["actor_name"] or "—", r["correlation_id"] or "—",
            style="bold red" if _destructive(r) else None,
        )  # fmt: skip
    console.print(table)
    for r in filter(_destructive, rows):
        console.print(
            f"  [red]#{r['id']}[/] {r['db_current_user']} via {r['application_name']}: {r['query']}"
        )
    console.print(
        "The DELETE and the DROP came from roles ops_dev and postgres in psql, with no app "
        "user: a person, not the app. The rows they removed are in whodunit.row_change."
    )


def _destructive(row: dict[str, Any]) -> bool:
    return row["op"] in ("DELETE", "TRUNCATE") or str(row["what"]).startswith("DROP")


def _sql(name: str) -> str:
    return resources.files("whodunit.demo").joinpath(name).read_text()
