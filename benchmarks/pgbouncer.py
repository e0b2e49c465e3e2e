"""
PgBouncer: pgbench TPS straight at PostgreSQL and through PgBouncer, at 25, 200 and 1000 clients.

The server has ``max_connections = 100``, as in the original incident: straight at it, the
larger crowds cannot all connect, so for them the script counts the clients refused
instead of a TPS.  Through PgBouncer (the files ``whodunit deploy render`` writes, with
their defaults: transaction pooling, 25 + 5 server connections) every client connects.

    python benchmarks/pgbouncer.py                # embedded PostgreSQL 18, ~10 s a run
    python benchmarks/pgbouncer.py --seconds 30 --clients 25,200,1000 --max-connections 100

pgbench runs its built-in TPC-B-like script with ``-M simple`` (PgBouncer before 1.21 cannot
pool prepared statements).  The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import secrets
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import orjson
import psycopg
from _environment import environment  # the script's own folder is on sys.path
from rich.console import Console
from rich.table import Table

from whodunit.db.embedded import LocalCluster, embedded_bin_dir
from whodunit.deploy import COMPONENTS, registry
from whodunit.deploy.pgbouncer_live import free_port, raise_fd_limit, serve
from whodunit.deploy.render import render
from whodunit.deploy.settings import load

CONNECT_SECONDS = 0.02  # per client, for pgbench's connection phase


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="25,200,1000", help="comma-separated crowd sizes")
    parser.add_argument("--seconds", type=int, default=10, help="per pgbench run")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor")
    parser.add_argument("--max-connections", type=int, default=100)
    args = parser.parse_args()
    crowds = [int(n) for n in args.clients.split(",")]
    raise_fd_limit(4 * max(crowds) + 1024)

    console = Console(stderr=True)
    password = secrets.token_urlsafe(18)
    environ = {
        f"WHODUNIT_DEPLOY_PGBOUNCER_{key}": secrets.token_urlsafe(18)
        for key in ("ADMIN_PASSWORD", "STATS_PASSWORD")
    }
    environ["WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD"] = password
    with tempfile.TemporaryDirectory(prefix="whodunit-bench-") as tmp:
        cluster = LocalCluster(
            Path(tmp) / "pg",
            port=free_port(),
            tcp=True,
            settings={"max_connections": str(args.max_connections)},
        )
        cluster.start()
        try:
            out = Path(tmp) / "deploy"
            render(COMPONENTS, load(registry(), environ=environ), out)
            with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
                admin.execute("CREATE ROLE app LOGIN")
                admin.execute((out / "pgbouncer/server_role.sql").read_text())
                admin.execute("CREATE DATABASE app OWNER app")
                server = str(admin.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            direct = {"host": "127.0.0.1", "port": cluster.port, "user": "app", "dbname": "app"}
            console.log(f"pgbench -i -s {args.scale}")
            pgbench(["-i", "-q", "-s", str(args.scale)], direct, password)
            with serve(out / "pgbouncer", "127.0.0.1", cluster.port) as bouncer:
                pooled = {**direct, "port": bouncer.port}
                results = {}
                for clients in crowds:
                    console.log(f"{clients} clients")
                    results[str(clients)] = {
                        "direct": run(direct, password, clients, args.seconds),
                        "pgbouncer": run(pooled, password, clients, args.seconds),
                    }
                version = re.search(r"process up: PgBouncer (\S+),", bouncer.log_text())
        finally:
            cluster.stop()
    report(results, server, version[1] if version else "unknown", args)


def run(target: dict[str, Any], password: str, clients: int, seconds: int) -> dict[str, Any]:
    """TPS of *clients* pgbench clients at *target*, or how many of them were refused."""
    refused = asyncio.run(count_refused(target, password, clients))
    if refused:
        return {"tps": None, "refused": refused}
    # pgbench's -T includes connecting, and each SCRAM login costs the client ~5-10 ms of
    # PBKDF2: allow for it, so every run has about *seconds* of transactions (the TPS
    # pgbench prints leaves the connection phase out).
    duration = seconds + math.ceil(clients * CONNECT_SECONDS)
    out = pgbench(
        ["-n", "-M", "simple", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
         "-T", str(duration)],
        target, password,
    )  # fmt: skip
    tps = re.search(r"tps = ([\d.]+)", out)
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    if tps is None or latency is None:
        raise SystemExit(
            f"pgbench printed no TPS (was --seconds shorter than connecting {clients} "
            f"clients?):\n{out}"
        )
    return {"tps": round(float(tps[1])), "latency_ms": float(latency[1]), "refused": 0}


async def count_refused(target: dict[str, Any], password: str, clients: int) -> int:
    """Open *clients* connections at once and hold them; return how many were refused."""
    opened: list[psycopg.AsyncConnection[Any]] = []
    handshakes = asyncio.Semaphore(100)  # listen backlogs are ~128

    async def one() -> bool:
        try:
            async with handshakes:
                opened.append(await psycopg.AsyncConnection.connect(password=password, **target))
        except psycopg.OperationalError:
            return False
        return True

    try:
        outcomes = await asyncio.gather(*(one() for _ in range(clients)))
    finally:
        await asyncio.gather(*(conn.close() for conn in opened))
    return outcomes.count(False)


def pgbench(argv: list[str], target: dict[str, Any], password: str) -> str:
    connection = [
        "-h", target["host"], "-p", str(target["port"]), "-U", target["user"], target["dbname"],
    ]  # fmt: skip
    result = subprocess.run(
        [str(embedded_bin_dir() / "pgbench"), *argv, *connection],
        capture_output=True, text=True, env={**os.environ, "PGPASSWORD": password},
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{result.stderr}")
    return result.stdout


def report(
    results: dict[str, dict[str, dict[str, Any]]], server: str, pgbouncer: str, args: Any
) -> None:
    table = Table(
        title=f"TPC-B-like TPS, PostgreSQL {server} (max_connections {args.max_connections}) "
        f"direct vs PgBouncer {pgbouncer} (25 + 5 server connections), {args.seconds} s a run"
    )
    for column in ("clients", "direct", "through PgBouncer"):
        table.add_column(column, justify="right")
    for clients, row in results.items():
        cells = [
            f"{r['tps']:,} TPS ({r['latency_ms']:.1f} ms)"
            if r["tps"] is not None
            else f"[red]{r['refused']} of {clients} refused[/]"
            for r in (row["direct"], row["pgbouncer"])
        ]
        table.add_row(clients, *cells)
    Console().print(table)
    summary = {
        "bench": "pgbouncer",
        "postgres": server,
        "pgbouncer": pgbouncer,
        "max_connections": args.max_connections,
        "scale": args.scale,
        "seconds": args.seconds,
        "results": results,
        **environment(),
    }
    print(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
