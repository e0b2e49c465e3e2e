"""Concurrent writers: every committed change is recorded, none twice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

WRITERS = 8
PER_WRITER = 150


@pytest.mark.slow
class TestConcurrentWriters:
    def test_eight_writers_lose_no_record(self, conn: psycopg.Connection[Any], dsn: str) -> None:
        """8 connections inserting, updating and deleting at once: the trail matches exactly."""
        conn.execute("CREATE TABLE hits (id int PRIMARY KEY, writer int, n int)")

        def write(writer: int) -> None:
            with psycopg.connect(dsn, autocommit=True) as own:
                for i in range(PER_WRITER):
                    key = writer * 10_000 + i
                    own.execute("INSERT INTO hits VALUES (%s, %s, 0)", (key, writer))
                    own.execute("UPDATE hits SET n = n + 1 WHERE id = %s", (key,))
                    if i % 3 == 0:
                        own.execute("DELETE FROM hits WHERE id = %s", (key,))

        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(write, range(WRITERS)))
        counts = dict(
            conn.execute(
                "SELECT s.op, count(*) FROM whodunit.statement s JOIN whodunit.row_change rc "
                "ON rc.statement_id = s.id WHERE s.table_name = 'hits' GROUP BY s.op"
            ).fetchall()
        )
        deletes = WRITERS * len(range(0, PER_WRITER, 3))
        assert {
            "INSERT": WRITERS * PER_WRITER,
            "UPDATE": WRITERS * PER_WRITER,
            "DELETE": deletes,
        } == counts
        duplicates = conn.execute(
            "SELECT count(*) FROM (SELECT statement_id, pk_hash FROM whodunit.row_change "
            "GROUP BY 1, 2 HAVING count(*) > 1) d"
        ).fetchone()
        assert 0 == duplicates[0]
