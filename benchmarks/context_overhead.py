"""
Cost of the app-context bridge: one-row write transactions through SQLAlchemy.

Three set-ups write the same rows into the same audited table, through each driver:

- ``plain``: no context at all (the baseline);
- ``bridge``: `whodunit.context.instrument_sqlalchemy` with a request-like context;
- ``naive``: the context sent by hand, ``SELECT set_config(...)`` as the transaction's
  first statement (a round trip of its own; what the bridge avoids).

Every round runs the three back to back in a rotating order; the table shows the median
transactions per second and the median of the rounds' own ratios to ``plain``.

    python benchmarks/context_overhead.py                 # embedded PostgreSQL, 5 rounds
    python benchmarks/context_overhead.py --dsn postgresql://... --transactions 5000

The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson
import psycopg
from _environment import database, environment  # the script's own folder is on sys.path
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL

from whodunit.context import acting_as, context_json, instrument_sqlalchemy
from whodunit.db.install import install

DRIVERS = ("psycopg", "psycopg2")
SETUPS = ("plain", "bridge", "naive")
INSERT = text("INSERT INTO game (title, owner) VALUES (:title, :owner)")
SET_CONTEXT = text("SELECT set_config('whodunit.context', :context, true)")
REQUEST = {
    "actor_id": "42",
    "actor_name": "player-one",
    "correlation_id": "01JD6W5M3X9K2N8P7Q4R5S6T7V",
    "method": "POST",
    "path": "/games",
    "client_ip": "203.0.113.9",
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", help="a superuser DSN (default: a throwaway embedded cluster)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transactions", type=int, default=3000, help="per set-up and round")
    args = parser.parse_args()
    with database(args.dsn) as dsn:
        run(dsn, args)


def run(dsn: str, args: argparse.Namespace) -> None:
    console = Console(stderr=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS game")
        conn.execute("CREATE TABLE game (id bigserial PRIMARY KEY, title text, owner text)")
        install(conn, ["public"])
        server = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    tps: dict[tuple[str, str], list[float]] = {}
    for driver in DRIVERS:
        engines = {name: create_engine(_url(dsn, driver), pool_size=1) for name in SETUPS}
        instrument_sqlalchemy(engines["bridge"])
        for rnd in range(args.rounds):
            console.log(f"{driver}: round {rnd + 1}/{args.rounds}")
            order = SETUPS[rnd % 3 :] + SETUPS[: rnd % 3]
            for name in order:
                rate = transactions(engines[name], args.transactions, naive=name == "naive")
                tps.setdefault((driver, name), []).append(rate)
        for engine in engines.values():
            engine.dispose()
    report(tps, server, args)


def transactions(engine: Engine, count: int, *, naive: bool) -> float:
    """Run *count* one-row INSERT transactions; return transactions per second."""
    with acting_as(**REQUEST), engine.connect() as db:
        db.execute(text("SELECT 1"))  # connect outside the timing
        db.commit()
        params = {"title": "chess", "owner": "player-one"}
        begin = time.perf_counter()
        for _ in range(count):
            if naive:
                db.execute(SET_CONTEXT, {"context": context_json()})
            db.execute(INSERT, params)
            db.commit()
        return count / (time.perf_counter() - begin)


def report(tps: dict[tuple[str, str], list[float]], server: str, args: argparse.Namespace) -> None:
    table = Table(
        title=f"whodunit context bridge — one-row INSERT transactions through SQLAlchemy, "
        f"PostgreSQL {server}, median of {args.rounds} rounds"
    )
    for column in ("driver", "set-up", "TPS", "ratio to plain"):
        table.add_column(column, justify="left" if column in ("driver", "set-up") else "right")
    summary: dict[str, object] = {"bench": "context_overhead"}

    def ratio_of(driver: str, name: str) -> float:
        # The median of each round's own ratio: drift between rounds cancels out.
        pairs = zip(tps[driver, name], tps[driver, "plain"], strict=True)
        return statistics.median(a / p for a, p in pairs)

    for driver in DRIVERS:
        for name in SETUPS:
            ratio = ratio_of(driver, name)
            table.add_row(
                driver, name, f"{statistics.median(tps[driver, name]):,.0f}", f"{ratio:.2f}"
            )
            if name != "plain":
                summary[f"{driver}_{name}_ratio"] = round(ratio, 3)
    Console().print(table)
    summary.update(postgres=server, rounds=args.rounds, **environment())
    print(orjson.dumps(summary).decode())


def _url(dsn: str, driver: str) -> URL:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    return URL.create(
        "postgresql+" + driver,
        username=params.pop("user", None),
        password=params.pop("password", None),
        database=params.pop("dbname", None),
        query={key: str(value) for key, value in params.items()},
    )


if __name__ == "__main__":
    main()
