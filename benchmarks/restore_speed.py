"""
Restore speed: putting back a 100k-row DELETE from the trail, against inserting the same
rows into an un-audited table.

Two copies of one table live in one database (schemas ``plain`` and ``audited``).  Each
round DELETEs every row of the audited copy (the trail keeps their images) and times
``whodunit restore --apply`` of that DELETE through the library, as the command runs it
(``plan_restore(decide=False)``, then ``apply_restore``), which fills the table again;
and it times an un-audited batched INSERT of the same rows (1000 rows per statement) into
the plain copy.  The table reports the median of each and the median of the rounds' own
ratios restore / insert (lower is better; 1.0 = as fast as a bare insert).

    python benchmarks/restore_speed.py                 # embedded PostgreSQL 18, 5 rounds
    python benchmarks/restore_speed.py --dsn postgresql://... --rows 100000 --rounds 3

The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson
import psycopg
from _environment import database, environment  # the script's own folder is on sys.path
from psycopg import sql
from rich.console import Console
from rich.table import Table

from whodunit.db.install import install
from whodunit.investigate.restore import Selection, apply_restore, plan_restore

# Types restore must bring back exactly: uuid, text, integer, boolean, numeric, arrays,
# jsonb and timestamptz.
TABLE_DDL = """
CREATE TABLE {schema}.account (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL,
    email      text NOT NULL,
    score      integer NOT NULL,
    active     boolean NOT NULL DEFAULT true,
    bio        text,
    balance    numeric(12, 2) NOT NULL DEFAULT 0,
    tags       text[] NOT NULL DEFAULT '{{}}',
    prefs      jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON {schema}.account (score);
"""
# Every row is a function of g, so both copies get the same rows.
ROWS = """
INSERT INTO {schema}.account (id, name, email, score, bio, balance, tags, prefs, created_at)
SELECT md5(g::text)::uuid, 'user ' || g, 'user' || g || '@example.com', g,
       'likes board games and long walks', 100.50 + g %% 100, ARRAY['player', 'tier' || g %% 5],
       jsonb_build_object('theme', 'dark', 'level', g %% 50),
       timestamptz '2026-01-01 00:00+00' + g * interval '1 minute'
FROM generate_series(%(first)s::int, %(last)s::int) g
"""
BATCH = 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", help="a superuser DSN (default: a throwaway embedded cluster)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", "--rows", type=int, default=100_000)
    args = parser.parse_args()

    with database(args.dsn) as dsn:
        run(dsn, args)


def run(dsn: str, args: argparse.Namespace) -> None:
    console = Console(stderr=True)
    restore: list[float] = []
    baseline: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn, args.rows)
        server = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        for rnd in range(1, args.rounds + 1):
            console.log(f"round {rnd}/{args.rounds}")
            # Alternate which goes first, so warm-up and machine drift hit both alike.
            for kind in ("restore", "insert") if rnd % 2 else ("insert", "restore"):
                if kind == "restore":
                    restore.append(time_restore(conn, args.rows))
                else:
                    baseline.append(time_insert(conn, args.rows))
    ratio = statistics.median(r / b for r, b in zip(restore, baseline, strict=True))
    thousands = f"{args.rows // 1000}k"
    table = Table(title=f"whodunit restore — PostgreSQL {server}, median of {args.rounds} rounds")
    table.add_column("workload")
    table.add_column("seconds", justify="right")
    table.add_column("rows/s", justify="right")
    for name, values in (
        (f"restore --apply of a {thousands}-row DELETE (audited)", restore),
        (f"batched INSERT of {thousands} rows, {BATCH}/stmt (no audit)", baseline),
    ):
        median = statistics.median(values)
        table.add_row(name, f"{median:.2f}", f"{args.rows / median:,.0f}")
    table.add_row("ratio restore / insert", f"{ratio:.2f}", "")
    Console().print(table)
    summary = {
        "bench": "restore_speed",
        f"restore_{thousands}_s": round(statistics.median(restore), 3),
        f"baseline_insert_{thousands}_s": round(statistics.median(baseline), 3),
        "ratio": round(ratio, 3),
        "postgres": server,
        "rounds": args.rounds,
        **environment(),
    }
    print(orjson.dumps(summary).decode())


def setup(conn: psycopg.Connection, rows: int) -> None:
    for schema in ("plain", "audited"):
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(TABLE_DDL.format(schema=schema))
    conn.execute(ROWS.format(schema="audited"), {"first": 1, "last": rows})
    install(conn, ["audited"])


def time_restore(conn: psycopg.Connection, rows: int) -> float:
    """DELETE every row of the audited copy and time putting them back (which refills it)."""
    conn.execute("DELETE FROM audited.account")
    row = conn.execute(
        "SELECT max(id) FROM whodunit.statement WHERE op = 'DELETE' AND schema_name = 'audited'"
    ).fetchone()
    assert row is not None
    conn.execute("VACUUM ANALYZE audited.account")
    start = time.perf_counter()
    result = apply_restore(conn, plan_restore(conn, Selection(statement_id=row[0]), decide=False))
    elapsed = time.perf_counter() - start
    if result.inserted != rows:
        raise SystemExit(f"restore put back {result.inserted} rows, expected {rows}")
    return elapsed


def time_insert(conn: psycopg.Connection, rows: int) -> float:
    """Time inserting the same rows into the un-audited copy, BATCH rows per statement."""
    conn.execute("TRUNCATE plain.account")
    conn.execute("VACUUM ANALYZE plain.account")
    query = ROWS.format(schema="plain")
    start = time.perf_counter()
    with conn.transaction():
        for first in range(1, rows + 1, BATCH):
            conn.execute(query, {"first": first, "last": min(first + BATCH - 1, rows)})
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
