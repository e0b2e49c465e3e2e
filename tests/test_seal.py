"""The hash chain: the watcher seals what it reads, `whodunit verify` names tampering."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner

from tests.test_watch import inserted_id, run_once, settings_for
from whodunit.errors import WhodunitError
from whodunit.watch.seal import Sealer, parse_against, verify
from whodunit.watch.verify_commands import verify as verify_command

Conn = psycopg.Connection[Any]


@pytest.fixture
def trail(dsn: str, conn: Conn) -> list[int]:
    """Table t with three audited INSERTs, an app event, all sealed: the statement ids."""
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    ids = [inserted_id(conn, i) for i in (1, 2, 3)]
    conn.execute("SELECT whodunit.record_app_event(p_action => 'login_failed')")
    run_once(settings_for(dsn, start="beginning"))
    return ids


def maintenance(conn: Conn, statement: str, *args: Any) -> None:
    """Run *statement* as the owner's tamperer would: maintenance on, in one transaction."""
    with conn.transaction():
        conn.execute("SELECT set_config('whodunit.maintenance', 'on', true)")
        conn.execute(statement, args)


def cli(dsn: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(verify_command, ["--dsn", dsn, "--json", *args])
    return result.exit_code, orjson.loads(result.output)


def first(report: dict[str, Any]) -> tuple[str, str | None, int | None]:
    f = report["first"]
    return f["kind"], f["table"], f["id"]


class TestSeal:
    def test_intact_chain_verifies(self, dsn: str, conn: Conn, trail: list[int]) -> None:
        code, report = cli(dsn)
        assert (0, True) == (code, report["intact"])
        assert report["records"] >= 4
        seal = conn.execute("SELECT records, prev_hash FROM whodunit.seal").fetchall()
        assert len(seal) == 1
        assert seal[0][1] == "0" * 64

    def test_update_of_a_statement_is_named(self, dsn: str, conn: Conn, trail: list[int]) -> None:
        maintenance(conn, "UPDATE whodunit.statement SET actor_id = 'x' WHERE id = %s", trail[1])
        code, report = cli(dsn)
        assert (1, ("altered", "statement", trail[1])) == (code, first(report))

    def test_update_of_a_row_image_names_its_statement(
        self, dsn: str, conn: Conn, trail: list[int]
    ) -> None:
        maintenance(
            conn,
            'UPDATE whodunit.row_change SET new_row = \'{"id": 2, "v": "forged"}\' '
            "WHERE statement_id = %s",
            trail[1],
        )
        assert ("altered", "statement", trail[1]) == first(verify(conn).to_json())

    def test_deleted_row_is_missing(self, dsn: str, conn: Conn, trail: list[int]) -> None:
        maintenance(conn, "DELETE FROM whodunit.statement WHERE id = %s", trail[0])
        code, report = cli(dsn)
        assert (1, ("missing", "statement", trail[0])) == (code, first(report))

    def test_forged_row_in_the_sealed_past_is_inserted(self, conn: Conn, trail: list[int]) -> None:
        """A copy of a sealed statement under a fresh id, backdated to its transaction."""
        row = conn.execute("SELECT nextval('whodunit.statement_id_seq')").fetchone()
        assert row is not None
        forged = int(row[0])
        conn.execute(
            "INSERT INTO whodunit.statement SELECT (jsonb_populate_record(NULL::whodunit.statement,"
            " to_jsonb(s) || jsonb_build_object('id', %s::bigint))).* "
            "FROM whodunit.statement s WHERE id = %s",
            (forged, trail[2]),
        )
        assert ("inserted", "statement", forged) == first(verify(conn).to_json())

    def test_rebuilt_chain_is_caught_against_the_published_hash(
        self, dsn: str, conn: Conn, trail: list[int], caplog: pytest.LogCaptureFixture
    ) -> None:
        """A superuser alters a row, then re-seals everything: only --against sees it."""
        with caplog.at_level(logging.INFO, logger="whodunit.seal"):
            conn.execute("INSERT INTO t VALUES (4, 'd')")
            run_once(settings_for(dsn))
        published = caplog.records[-1].seal  # type: ignore[attr-defined]
        code, report = cli(dsn, "--against", f"{published['id']}:{published['hash']}")
        assert (0, True) == (code, report["intact"])
        maintenance(conn, "UPDATE whodunit.statement SET actor_id = 'x' WHERE id = %s", trail[0])
        everything = conn.execute(
            "SELECT array_agg(id) FROM whodunit.statement UNION ALL "
            "SELECT array_agg(id) FROM whodunit.app_event"
        ).fetchall()
        snap = conn.execute("SELECT since::text, until::text FROM whodunit.seal ORDER BY id")
        bounds = snap.fetchall()
        maintenance(conn, "DELETE FROM whodunit.seal")
        Sealer("default").seal(
            conn,
            since=bounds[0][0],
            until=bounds[-1][1],
            statement_ids=everything[0][0],
            app_event_ids=everything[1][0] or [],
        )
        assert verify(conn).intact  # the rebuilt chain is consistent in itself
        code, report = cli(dsn, "--against", f"{published['id']}:{published['hash']}")
        assert (1, "against") == (code, report["first"]["kind"])
        code, report = cli(dsn, "--against", published["hash"])
        assert (1, "against") == (code, report["first"]["kind"])

    def test_late_commit_of_a_lower_id_is_sealed_once(self, dsn: str, conn: Conn) -> None:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        settings = settings_for(dsn, start="beginning")
        with psycopg.connect(dsn) as t1, psycopg.connect(dsn, autocommit=True) as t2:
            low = inserted_id(t1, 1)  # stays open while a higher id is sealed
            high = inserted_id(t2, 2)
            run_once(settings)
            t1.commit()
        run_once(settings)
        run_once(settings)
        assert low < high
        covering = conn.execute(
            "SELECT i, (SELECT array_agg(id) FROM whodunit.seal WHERE statement_ids @> i) "
            "FROM unnest(%s::bigint[]) i ORDER BY i",
            ([low, high],),
        ).fetchall()
        (_lo, lo_seals), (_hi, hi_seals) = covering
        assert len(lo_seals) == 1
        assert len(hi_seals) == 1
        assert lo_seals[0] > hi_seals[0]
        assert verify(conn).intact

    def test_a_batch_read_again_is_not_sealed_again(self, conn: Conn, trail: list[int]) -> None:
        """A crash between the seal and the checkpoint makes the watcher read it again."""
        row = conn.execute("SELECT until::text FROM whodunit.seal").fetchone()
        assert row is not None
        again = Sealer("default").seal(
            conn, since=row[0], until=row[0], statement_ids=trail, app_event_ids=[]
        )
        assert again is None

    def test_since_and_text_output(self, dsn: str, conn: Conn, trail: list[int]) -> None:
        result = CliRunner().invoke(verify_command, ["--dsn", dsn, "--since", "2000-01-01"])
        assert result.exit_code == 0
        assert result.output.startswith("intact: 1 seals")
        result = CliRunner().invoke(verify_command, ["--dsn", dsn, "--since", "2999-01-01"])
        assert result.exit_code == 0
        assert "intact: 0 seals" in result.output
        maintenance(conn, "DELETE FROM whodunit.app_event")
        result = CliRunner().invoke(verify_command, ["--dsn", dsn])
        assert result.exit_code == 1
        assert "tampered:" in result.output

    def test_against_must_be_a_hash(self) -> None:
        assert (3, "a" * 64) == parse_against("3:" + "A" * 64)
        with pytest.raises(WhodunitError):
            parse_against("3:nothex")
