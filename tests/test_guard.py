"""Prevention guards: mass DELETE/UPDATE, TRUNCATE and DROP of protected tables."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from whodunit.db import install as installer

Conn = psycopg.Connection[Any]


@pytest.fixture
def guarded(conn: Conn) -> Conn:
    """A table of 10 rows with every guard on."""
    conn.execute("CREATE TABLE players (id int PRIMARY KEY, name text)")
    conn.execute("INSERT INTO players SELECT g, 'p' || g FROM generate_series(1, 10) g")
    installer.set_guard(conn, "players", max_rows=3, no_truncate=True, no_drop=True)
    return conn


def rows(conn: Conn) -> int:
    """Count the rows left in players."""
    return int(conn.execute("SELECT count(*) FROM players").fetchone()[0])


class TestGuards:
    def test_mass_delete_is_refused_with_a_hint(self, guarded: Conn) -> None:
        """Deleting more rows than allowed fails with WD001, names the guard and how to allow it."""
        with pytest.raises(psycopg.DatabaseError) as info:
            guarded.execute("DELETE FROM players WHERE id > 2")
        assert "WD001" == info.value.sqlstate
        assert 'whodunit guard "max_rows" on public.players refused DELETE of 8 rows (limit 3)' == (
            info.value.diag.message_primary
        )
        assert "set_config('whodunit.allow', 'public.players', true)" in str(
            info.value.diag.message_hint
        )
        assert 10 == rows(guarded)

    def test_small_delete_and_update_pass(self, guarded: Conn) -> None:
        """Statements within the limit are not affected."""
        guarded.execute("DELETE FROM players WHERE id <= 3")
        guarded.execute("UPDATE players SET name = 'x' WHERE id IN (4, 5)")
        assert 7 == rows(guarded)

    def test_mass_update_is_refused(self, guarded: Conn) -> None:
        """UPDATE of more rows than allowed is refused too."""
        with pytest.raises(psycopg.DatabaseError, match="refused UPDATE of 10 rows"):
            guarded.execute("UPDATE players SET name = 'x'")

    def test_transaction_can_allow_it(self, guarded: Conn) -> None:
        """set_config('whodunit.allow', table, true) lifts the guard for that transaction only."""
        with guarded.transaction():
            guarded.execute("SELECT set_config('whodunit.allow', 'public.players', true)")
            guarded.execute("DELETE FROM players WHERE id > 5")
        assert 5 == rows(guarded)
        with pytest.raises(psycopg.DatabaseError):
            guarded.execute("DELETE FROM players")

    def test_truncate_is_refused_unless_allowed(self, guarded: Conn) -> None:
        """TRUNCATE of a no_truncate table fails, and passes with whodunit.allow = '*'."""
        with pytest.raises(psycopg.DatabaseError, match='guard "no_truncate"'):
            guarded.execute("TRUNCATE players")
        with guarded.transaction():
            guarded.execute("SELECT set_config('whodunit.allow', '*', true)")
            guarded.execute("TRUNCATE players")
        assert 0 == rows(guarded)

    @pytest.mark.parametrize("ddl", ["DROP TABLE players", "DROP SCHEMA public CASCADE"])
    def test_drop_is_refused(self, guarded: Conn, ddl: str) -> None:
        """DROP TABLE, directly or through DROP SCHEMA CASCADE, is refused."""
        with pytest.raises(psycopg.DatabaseError, match='guard "no_drop"'):
            guarded.execute(ddl)
        assert 10 == rows(guarded)

    def test_drop_if_exists_of_other_tables_still_works(self, guarded: Conn) -> None:
        """A guard does not block migrations' DROP TABLE IF EXISTS of other tables."""
        guarded.execute("DROP TABLE IF EXISTS players_old")
        guarded.execute("CREATE TABLE scratch (id int)")
        guarded.execute("DROP TABLE scratch")

    def test_refusal_is_written_to_the_server_log(self, guarded: Conn) -> None:
        """The refusal is also raised at LOG level: the refused transaction's rows roll back."""
        seen: list[str] = []
        guarded.add_notice_handler(lambda diag: seen.append(str(diag.message_primary)))
        guarded.execute("SET client_min_messages = log")
        with pytest.raises(psycopg.DatabaseError):
            guarded.execute("DELETE FROM players")
        assert any(m.startswith("whodunit guard max_rows refused DELETE of 10 rows") for m in seen)

    def test_guard_off_removes_it(self, guarded: Conn) -> None:
        """A guard with no limits is removed."""
        installer.set_guard(guarded, "players")
        guarded.execute("DELETE FROM players")
        assert [] == guarded.execute("SELECT * FROM whodunit.guard").fetchall()
