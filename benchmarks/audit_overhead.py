"""
Audit-trigger overhead: the same workload on an un-audited and an audited copy of a table.

Both copies live in one database (schemas ``plain`` and ``audited``), and every round runs
each workload on both tables back to back, alternating which goes first, so machine noise
hits both alike; the table reports the median over rounds of each, and the median of the
rounds' own ratios audited / plain (higher is better, 1.0 = free).

    python benchmarks/audit_overhead.py                 # embedded PostgreSQL 18, 5 rounds
    python benchmarks/audit_overhead.py --dsn postgresql://... --rounds 3

pgbench (shipped with the server) drives the single-row and concurrent workloads, so the
client's own cost stays out of the ratio.  The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time

import orjson
import psycopg
from _environment import database, environment  # the script's own folder is on sys.path
from rich.console import Console
from rich.table import Table

from whodunit.db.embedded import embedded_bin_dir
from whodunit.db.install import install

TABLE_DDL = """
CREATE TABLE {schema}.account (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL,
    email      text NOT NULL,
    score      integer NOT NULL,
    active     boolean NOT NULL DEFAULT true,
    bio        text,
    balance    numeric(12, 2) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON {schema}.account (score);
"""
ROW_VALUES = (
    "'user ' || g, 'user' || g || '@example.com', g, true, 'likes board games and long walks',"
    " 100.50"
)
SCHEMAS = ("plain", "audited")
PGBENCH_WORKLOADS = (
    ("single-row insert (TPS)", "insert", 1),
    ("single-row update (TPS)", "update", 1),
    ("single-row delete (TPS)", "delete", 1),
    ("8 writers insert (TPS)", "insert", 8),
)

# pgbench scripts; :r is a random score, so UPDATE/DELETE hit one row through the index.
PGBENCH = {
    "insert": "INSERT INTO {schema}.account (name, email, score, bio, balance) VALUES "
    "('user x', 'x@example.com', :r, 'likes board games and long walks', 100.50);",
    "update": "UPDATE {schema}.account SET score = score + 1, updated_at = now() WHERE score = :r;",
    "delete": "DELETE FROM {schema}.account WHERE score = :r;",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", help="a superuser DSN (default: a throwaway embedded cluster)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="per pgbench run")
    parser.add_argument("--bulk-rows", type=int, default=100_000)
    args = parser.parse_args()

    with database(args.dsn) as dsn:
        run(dsn, args)


def run(dsn: str, args: argparse.Namespace) -> None:
    console = Console(stderr=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn)
        server = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    results: dict[str, dict[str, list[float]]] = {}

    def record(name: str, schema: str, value: float) -> None:
        results.setdefault(name, {s: [] for s in SCHEMAS})[schema].append(value)

    for rnd in range(1, args.rounds + 1):
        console.log(f"round {rnd}/{args.rounds}")
        # Each workload runs on both tables back to back, so a pair sees the same machine.
        for name, kind, clients in PGBENCH_WORKLOADS:
            for schema in _alternate(rnd):
                record(name, schema, pgbench(dsn, schema, kind, clients, args.seconds))
        for schema in _alternate(rnd):
            record("batched insert, 1000 rows/stmt (rows/s)", schema, batched_insert(dsn, schema))
        for schema in _alternate(rnd):
            rate, per_row = bulk_delete(dsn, schema, args.bulk_rows)
            record(f"{args.bulk_rows // 1000}k-row DELETE (rows/s)", schema, rate)
            if schema == "audited":
                record("audit bytes per deleted row", schema, per_row)

    table = Table(
        title=f"whodunit audit overhead — PostgreSQL {server}, median of {args.rounds} rounds"
    )
    table.add_column("workload")
    table.add_column("no audit", justify="right")
    table.add_column("whodunit", justify="right")
    table.add_column("ratio", justify="right")
    summary: dict[str, object] = {"bench": "audit_overhead"}
    keys = {
        "single-row insert (TPS)": "single_insert_ratio",
        "single-row update (TPS)": "single_update_ratio",
        "single-row delete (TPS)": "single_delete_ratio",
        "batched insert, 1000 rows/stmt (rows/s)": "batched_insert_ratio",
        f"{args.bulk_rows // 1000}k-row DELETE (rows/s)": "bulk_delete_ratio",
        "8 writers insert (TPS)": "writers8_ratio",
    }
    for name, values in results.items():
        if name == "audit bytes per deleted row":
            bytes_per_row = statistics.median(values["audited"])
            table.add_row(name, "", f"{bytes_per_row:,.0f}", "")
            summary["bytes_per_deleted_row"] = round(bytes_per_row)
            continue
        plain, audited = statistics.median(values["plain"]), statistics.median(values["audited"])
        # The median of each round's own ratio: drift between rounds cancels out.
        ratio = statistics.median(
            a / p for a, p in zip(values["audited"], values["plain"], strict=True)
        )
        table.add_row(name, f"{plain:,.0f}", f"{audited:,.0f}", f"{ratio:.2f}")
        summary[keys[name]] = round(ratio, 3)
    Console().print(table)
    summary.update(postgres=server, rounds=args.rounds, **environment())
    print(orjson.dumps(summary).decode())


def setup(conn: psycopg.Connection) -> None:
    conn.execute("DROP SCHEMA IF EXISTS plain CASCADE")
    conn.execute("DROP SCHEMA IF EXISTS audited CASCADE")
    for schema in SCHEMAS:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(TABLE_DDL.format(schema=schema))
        # Warm both tables with the same rows so UPDATE/DELETE find work.
        conn.execute(
            f"INSERT INTO {schema}.account (name, email, score, active, bio, balance) "
            f"SELECT {ROW_VALUES} FROM generate_series(1, 200000) g"
        )
    install(conn, ["audited"])
    conn.execute("VACUUM ANALYZE")


def pgbench(dsn: str, schema: str, kind: str, clients: int, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("\\set r random(1, 200000)\n" + PGBENCH[kind].format(schema=schema) + "\n")
    os.chmod(script.name, 0o644)
    try:
        out = subprocess.run(
            [
                str(embedded_bin_dir() / "pgbench"), "-n", "-M", "prepared", "-c", str(clients),
                "-j", str(min(clients, 2)), "-T", str(int(seconds)), "-f", script.name, dsn,
            ],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    match = re.search(r"tps = ([\d.]+)", out)
    if not match:
        raise SystemExit(f"pgbench printed no TPS:\n{out}")
    return float(match[1])


def batched_insert(dsn: str, schema: str, statements: int = 30) -> float:
    query = (
        f"INSERT INTO {schema}.account (name, email, score, active, bio, balance) "
        f"SELECT {ROW_VALUES} FROM generate_series(1, 1000) g"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query)  # warm the plan and the caches
        start = time.perf_counter()
        for _ in range(statements):
            conn.execute(query)
        elapsed = time.perf_counter() - start
    return statements * 1000 / elapsed


def bulk_delete(dsn: str, schema: str, rows: int) -> tuple[float, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.doomed (LIKE {schema}.account INCLUDING ALL)"
        )
        conn.execute(
            f"INSERT INTO {schema}.doomed (name, email, score, active, bio, balance) "
            f"SELECT {ROW_VALUES} FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute(f"VACUUM ANALYZE {schema}.doomed")
        conn.execute("CHECKPOINT")
        before = _trail_bytes(conn)
        start = time.perf_counter()
        deleted = conn.execute(f"DELETE FROM {schema}.doomed").rowcount
        elapsed = time.perf_counter() - start
        per_row = (_trail_bytes(conn) - before) / max(deleted, 1)
    return deleted / elapsed, per_row


def _trail_bytes(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'whodunit' AND c.relname IN ('statement', 'row_change')"
    ).fetchone()
    return int(row[0]) if row else 0


def _alternate(rnd: int) -> tuple[str, ...]:
    """Swap which variant goes first each round, so warm-up effects cancel."""
    return SCHEMAS if rnd % 2 else SCHEMAS[::-1]


if __name__ == "__main__":
    main()
