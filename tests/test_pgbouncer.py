"""
The PgBouncer claims, proven with the real pgbouncer in front of a real PostgreSQL.

One PostgreSQL with ``max_connections = 100`` (the original incident's server) and one
pgbouncer started on ``whodunit deploy render``'s own files, unchanged but for where
they listen and which server they reach.  The application role gets its password from
the rendered ``server_role.sql``, so every login here also proves that PostgreSQL and
PgBouncer accept the SCRAM verifiers whodunit computed.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from whodunit.context import acting_as, set_db_context
from whodunit.db.embedded import LocalCluster
from whodunit.db.install import install
from whodunit.deploy import COMPONENTS, registry
from whodunit.deploy.pgbouncer_live import Bouncer, free_port, raise_fd_limit, serve
from whodunit.deploy.render import render
from whodunit.deploy.settings import load

CLIENTS = 1000
SERVER_CONNECTIONS = 30  # default_pool_size 25 + reserve_pool_size 5, the rendered defaults
APP_PASSWORD = "app-Plaintext-5d81"
STATS_PASSWORD = "stats-Plaintext-0c6e"
ENVIRON = {
    "WHODUNIT_DEPLOY_PGBOUNCER_PASSWORD": APP_PASSWORD,
    "WHODUNIT_DEPLOY_PGBOUNCER_ADMIN_PASSWORD": "admin-Plaintext-a7e4",
    "WHODUNIT_DEPLOY_PGBOUNCER_STATS_PASSWORD": STATS_PASSWORD,
}
REFUSED = re.compile(r"too many clients already|remaining connection slots are reserved")

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    """PostgreSQL and the pgbouncer in front of it."""

    cluster: LocalCluster
    bouncer: Bouncer

    def admin_dsn(self) -> str:
        """Superuser, over the Unix socket: outside the pool and its limits."""
        return self.cluster.dsn("app")

    def app(self, via_bouncer: bool = True) -> dict[str, Any]:
        """Connection arguments of the application role, through pgbouncer or direct."""
        return {
            "host": "127.0.0.1",
            "port": self.bouncer.port if via_bouncer else self.cluster.port,
            "dbname": "app",
            "user": "app",
            "password": APP_PASSWORD,
            "prepare_threshold": None,  # PgBouncer 1.18 cannot pool prepared statements
        }


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """A max_connections = 100 server and the rendered pgbouncer, for the whole module."""
    limit = raise_fd_limit(4 * CLIENTS)
    if limit < 2 * CLIENTS + 500:
        pytest.fail(f"{CLIENTS} clients need more open files than the hard limit {limit}")
    # Not under pytest's basetemp: a concurrent pytest run may prune it under the server.
    root = Path(tempfile.mkdtemp(prefix="whodunit-test-pgbouncer-"))
    cluster = LocalCluster(
        root / "pg",
        port=free_port(),
        tcp=True,
        settings={"max_connections": "100", "fsync": "off", "full_page_writes": "off"},
    )
    cluster.start()
    try:
        out = root / "deploy"
        render(COMPONENTS, load(registry(), environ=ENVIRON), out)
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute("CREATE ROLE app LOGIN")
            admin.execute((out / "pgbouncer/server_role.sql").read_text())
            admin.execute("CREATE DATABASE app OWNER app")
        with serve(out / "pgbouncer", "127.0.0.1", cluster.port) as bouncer:
            yield Stack(cluster, bouncer)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Crowd:
    """What happened to a crowd of clients that connected at once."""

    results: list[Any]
    refusals: list[str]
    observed: Any
    peak_backends: int


async def crowd(
    stack: Stack,
    connect: dict[str, Any],
    work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]],
    observe: Callable[[], Awaitable[Any]],
) -> Crowd:
    """
    Connect CLIENTS clients at once; once every attempt is over, *observe* while all of
    them are still connected, then let each run *work*; watch pg_stat_activity throughout.
    """
    attempts_over, go = asyncio.Event(), asyncio.Event()
    results: list[Any] = []
    refusals: list[str] = []
    finished = 0
    # Listen backlogs are ~128: more simultaneous handshakes only add SYN retries.
    handshakes = asyncio.Semaphore(100)

    async def client() -> None:
        nonlocal finished
        conn = None
        try:
            async with handshakes:
                conn = await psycopg.AsyncConnection.connect(autocommit=True, **connect)
        except psycopg.OperationalError as exc:
            refusals.append(str(exc))
        finally:
            finished += 1
            if finished == CLIENTS:
                attempts_over.set()
        if conn is not None:
            try:
                await go.wait()
                results.append(await work(conn))
            finally:
                await conn.close()

    peak = 0
    over = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        async with await psycopg.AsyncConnection.connect(
            stack.admin_dsn(), autocommit=True
        ) as admin:
            while not over.is_set():
                peak = max(peak, await app_backends(admin))
                await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    await asyncio.wait_for(attempts_over.wait(), 60)
    observed = await observe()
    go.set()
    await asyncio.wait_for(asyncio.gather(*clients), 60)
    over.set()
    await watcher
    return Crowd(results, refusals, observed, peak)


async def app_backends(admin: psycopg.AsyncConnection[Any], application: str = "%") -> int:
    """The application role's backends on the server (pgbouncer's pool included)."""
    cur = await admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND application_name LIKE %s",
        (application,),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


class TestThousandClients:
    def test_through_pgbouncer_all_succeed_on_thirty_connections(self, stack: Stack) -> None:
        """1000 clients connected at once all run their queries on at most 25 + 5 backends."""

        async def work(conn: psycopg.AsyncConnection[Any]) -> set[int]:
            pids = set()
            for _ in range(3):
                cur = await conn.execute("SELECT pg_backend_pid() FROM pg_sleep(0.002)")
                row = await cur.fetchone()
                assert row is not None
                pids.add(row[0])
            return pids

        async def clients_seen_by_pgbouncer() -> int:
            async with await psycopg.AsyncConnection.connect(
                **{
                    **stack.app(),
                    "dbname": "pgbouncer",
                    "user": "pgbouncer_stats",
                    "password": STATS_PASSWORD,
                },
                autocommit=True,
                cursor_factory=psycopg.AsyncClientCursor,  # the console speaks simple queries
                row_factory=dict_row,
            ) as console:
                cur = await console.execute("SHOW POOLS")
                pools = [p for p in await cur.fetchall() if p["database"] == "app"]
                return sum(p["cl_active"] + p["cl_waiting"] for p in pools)

        result = asyncio.run(crowd(stack, stack.app(), work, clients_seen_by_pgbouncer))
        backends = set().union(*result.results)
        assert ([], CLIENTS, CLIENTS) == (result.refusals, len(result.results), result.observed)
        assert 0 < result.peak_backends <= SERVER_CONNECTIONS
        assert len(backends) <= SERVER_CONNECTIONS

    def test_direct_to_postgresql_most_are_refused(self, stack: Stack) -> None:
        """The same 1000 clients straight at max_connections = 100: the original incident."""

        async def nothing(_conn: psycopg.AsyncConnection[Any]) -> None:
            return None

        async def direct_backends() -> int:
            async with await psycopg.AsyncConnection.connect(stack.admin_dsn()) as admin:
                return await app_backends(admin, "direct")

        direct = {**stack.app(via_bouncer=False), "application_name": "direct"}
        result = asyncio.run(crowd(stack, direct, nothing, direct_backends))
        assert CLIENTS == len(result.results) + len(result.refusals)
        assert len(result.refusals) >= CLIENTS - 100
        assert [] == [r for r in result.refusals if not REFUSED.search(r)]
        assert len(result.results) == result.observed


class TestContextThroughTransactionPooling:
    THREADS = 40
    PER_THREAD = 250

    def test_every_transaction_carries_its_own_actor(self, stack: Stack) -> None:
        """10,000 transactions over the pool: each audit row names the actor that wrote it."""
        with psycopg.connect(stack.admin_dsn(), autocommit=True) as admin:
            install(admin, ["public"])
            admin.execute("CREATE TABLE ledger (id bigserial PRIMARY KEY, actor text NOT NULL)")
            admin.execute("GRANT INSERT ON ledger TO app")
            admin.execute("GRANT USAGE ON SEQUENCE ledger_id_seq TO app")

        def write(thread: int) -> None:
            with psycopg.connect(**stack.app()) as conn:
                for n in range(self.PER_THREAD):
                    actor = f"{thread}:{n}"
                    with acting_as(actor_id=actor):
                        set_db_context(conn)
                        conn.execute("INSERT INTO ledger (actor) VALUES (%s)", (actor,))
                        conn.commit()

        with ThreadPoolExecutor(self.THREADS) as pool:
            list(pool.map(write, range(self.THREADS)))
        with psycopg.connect(stack.admin_dsn(), row_factory=dict_row) as reader:
            trail = reader.execute(
                "SELECT count(*) AS rows, "
                "count(*) FILTER (WHERE s.actor_id IS DISTINCT FROM rc.new_row ->> 'actor') "
                "AS mismatches, count(DISTINCT s.backend_pid) AS backends, "
                "count(*) FILTER (WHERE s.application_name NOT LIKE '% - 127.0.0.1:%') "
                "AS without_client_address "
                "FROM whodunit.statement s JOIN whodunit.row_change rc ON rc.statement_id = s.id "
                "WHERE s.table_name = 'ledger' AND s.op = 'INSERT'"
            ).fetchone()
        assert trail is not None
        total = self.THREADS * self.PER_THREAD
        assert (total, 0, 0) == (
            trail["rows"],
            trail["mismatches"],
            trail["without_client_address"],
        )
        assert trail["backends"] <= SERVER_CONNECTIONS
