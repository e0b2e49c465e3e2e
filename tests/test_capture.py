"""Row-level and DDL capture by the triggers, checked value by value."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

Conn = psycopg.Connection[Any]

CONTEXT = {
    "actor_id": "42",
    "actor_name": "player-one",
    "correlation_id": "req-7f3a",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "method": "DELETE",
    "path": "/api/users/42",
    "client_ip": "203.0.113.9",
    "user_agent": "pytest",
    "tenant": "eu-1",
}


def statements(conn: Conn, **where: Any) -> list[dict[str, Any]]:
    """Return the statement rows matching *where*, oldest first."""
    clause = " AND ".join(f"{k} = %({k})s" for k in where) or "true"
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        f"SELECT * FROM whodunit.statement WHERE {clause} ORDER BY id", where
    ).fetchall()


def dml(conn: Conn) -> list[dict[str, Any]]:
    """Return the INSERT/UPDATE/DELETE/TRUNCATE statement rows, oldest first."""
    return [s for s in statements(conn) if s["op"] != "DDL"]


def row_changes(conn: Conn, statement_id: int) -> list[dict[str, Any]]:
    """Return the row images of one statement, in key order."""
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT * FROM whodunit.row_change WHERE statement_id = %s "
        "ORDER BY old_row::text, new_row::text",
        (statement_id,),
    ).fetchall()


def set_context(conn: Conn, context: object) -> None:
    """Set whodunit.context for the session (the app sets it per transaction)."""
    raw = context if isinstance(context, str) else json.dumps(context)
    conn.execute("SELECT set_config('whodunit.context', %s, false)", (raw,))


@pytest.fixture
def users(conn: Conn) -> Conn:
    """A users table with a uuid key, created after install (so audited by the event trigger)."""
    conn.execute(
        "CREATE TABLE users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
        "name text NOT NULL, score int NOT NULL DEFAULT 0)"
    )
    return conn


class TestDml:
    def test_insert_records_new_rows_and_context(self, users: Conn) -> None:
        """An INSERT stores one statement row with the app context and each new row."""
        set_context(users, CONTEXT)
        users.execute("INSERT INTO users (name) VALUES ('ann'), ('bob')")
        [stmt] = dml(users)
        assert ("INSERT", 2, "public") == (stmt["op"], stmt["rows"], stmt["schema_name"])
        assert ("42", "player-one", "req-7f3a") == (
            stmt["actor_id"], stmt["actor_name"], stmt["correlation_id"]
        )  # fmt: skip
        assert ("DELETE", "/api/users/42", "203.0.113.9", "pytest") == (
            stmt["request_method"], stmt["request_path"], stmt["client_ip"], stmt["user_agent"]
        )  # fmt: skip
        assert CONTEXT["trace_id"] == stmt["trace_id"]
        assert {"tenant": "eu-1"} == stmt["context"]
        assert "INSERT INTO users (name) VALUES ('ann'), ('bob')" == stmt["query"]
        assert ("postgres", "postgres") == (stmt["db_session_user"], stmt["db_current_user"])
        assert ["ann", "bob"] == sorted(
            r["new_row"]["name"] for r in row_changes(users, stmt["id"])
        )
        assert all(r["old_row"] is None for r in row_changes(users, stmt["id"]))

    def test_update_records_before_and_after(self, users: Conn) -> None:
        """An UPDATE stores the whole row before and after, paired even when the key changes."""
        users.execute(
            "INSERT INTO users (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'ann')"
        )
        users.execute(
            "UPDATE users SET id = '00000000-0000-0000-0000-000000000002', score = 5 "
            "WHERE name = 'ann'"
        )
        [stmt] = statements(users, op="UPDATE")
        [change] = row_changes(users, stmt["id"])
        assert {"id": "00000000-0000-0000-0000-000000000001", "name": "ann", "score": 0} == change[
            "old_row"
        ]
        assert {"id": "00000000-0000-0000-0000-000000000002", "name": "ann", "score": 5} == change[
            "new_row"
        ]

    def test_delete_records_before_images(self, users: Conn) -> None:
        """A DELETE stores each deleted row whole, enough to put it back."""
        users.execute(
            "INSERT INTO users (name, score) SELECT 'u' || g, g FROM generate_series(1, 10) g"
        )
        users.execute("DELETE FROM users WHERE score > 7")
        [stmt] = statements(users, op="DELETE")
        assert 3 == stmt["rows"]
        assert [8, 9, 10] == sorted(r["old_row"]["score"] for r in row_changes(users, stmt["id"]))

    def test_statement_touching_no_rows_writes_nothing(self, users: Conn) -> None:
        """UPDATE or DELETE of zero rows leaves no statement row."""
        users.execute("DELETE FROM users WHERE false")
        users.execute("UPDATE users SET score = 1 WHERE false")
        assert [] == dml(users)

    def test_rolled_back_transaction_leaves_no_trace(self, users: Conn) -> None:
        """The audit rows roll back with the change they describe."""
        with users.transaction(force_rollback=True):
            users.execute("INSERT INTO users (name) VALUES ('ghost')")
        assert [] == dml(users)

    def test_cascaded_deletes_share_txid_and_query(self, users: Conn) -> None:
        """Rows removed by ON DELETE CASCADE are recorded for the child, with the parent's query."""
        users.execute(
            "CREATE TABLE friend_request (id int PRIMARY KEY, "
            "from_user uuid NOT NULL REFERENCES users ON DELETE CASCADE)"
        )
        users.execute(
            "INSERT INTO users (id, name) VALUES ('00000000-0000-0000-0000-00000000000a', 'ann')"
        )
        users.execute(
            "INSERT INTO friend_request SELECT g, '00000000-0000-0000-0000-00000000000a' "
            "FROM generate_series(1, 3) g"
        )
        users.execute("DELETE FROM users WHERE name = 'ann'")
        parent, child = statements(users, op="DELETE")
        assert ("users", "friend_request") == (parent["table_name"], child["table_name"])
        assert parent["txid"] == child["txid"]
        assert parent["query"] == child["query"]
        assert 3 == child["rows"]
        assert [1, 2, 3] == sorted(r["old_row"]["id"] for r in row_changes(users, child["id"]))

    def test_set_role_is_the_current_user(self, users: Conn, app_dsn: str) -> None:
        """SET ROLE shows as db_current_user while the login role stays db_session_user."""
        role = psycopg.conninfo.conninfo_to_dict(app_dsn)["user"]
        users.execute(f'GRANT INSERT ON users TO "{role}"')
        users.execute(f'SET ROLE "{role}"')
        users.execute("INSERT INTO users (name) VALUES ('via role')")
        users.execute("RESET ROLE")
        [stmt] = dml(users)
        assert ("postgres", role) == (stmt["db_session_user"], stmt["db_current_user"])


class TestContext:
    @pytest.mark.parametrize("raw", ["not json", '["an", "array"]', '{"unterminated": '])
    def test_malformed_context_is_stored_raw(self, users: Conn, raw: str) -> None:
        """A context that is not a JSON object never fails the write: it is kept raw and flagged."""
        set_context(users, raw)
        users.execute("INSERT INTO users (name) VALUES ('still written')")
        [stmt] = dml(users)
        assert (raw, None, None) == (stmt["context_error"], stmt["actor_id"], stmt["context"])

    def test_transaction_local_context_does_not_leak(self, users: Conn) -> None:
        """A context set with is_local=true is gone after its transaction (read as '', not NULL)."""
        with users.transaction():
            users.execute("SELECT set_config('whodunit.context', %s, true)", (json.dumps(CONTEXT),))
            users.execute("INSERT INTO users (name) VALUES ('in request')")
        users.execute("INSERT INTO users (name) VALUES ('after request')")
        first, second = dml(users)
        assert ("42", None) == (first["actor_id"], second["actor_id"])
        assert (None, None) == (second["context"], second["context_error"])

    def test_query_text_is_capped(self, users: Conn) -> None:
        """The SQL text is cut at query_max_bytes."""
        users.execute("SELECT whodunit.configure('query_max_bytes', '40')")
        users.execute("INSERT INTO users (name) VALUES ('" + "x" * 500 + "')")
        [stmt] = dml(users)
        assert 40 == len(stmt["query"])


class TestTableShapes:
    def test_quoted_mixed_case_table(self, conn: Conn) -> None:
        """A table named "User" with a column "Name" is captured under its exact name."""
        conn.execute('CREATE TABLE "User" (id int PRIMARY KEY, "Name" text)')
        conn.execute("INSERT INTO \"User\" VALUES (1, 'ann')")
        conn.execute('DELETE FROM "User"')
        [stmt] = statements(conn, op="DELETE")
        assert "User" == stmt["table_name"]
        assert [{"id": 1, "Name": "ann"}] == [r["old_row"] for r in row_changes(conn, stmt["id"])]

    def test_composite_key_and_no_key_hash_like_key_text(self, conn: Conn) -> None:
        """The trigger's key hash equals whodunit.key_text() of the image, for any key shape."""
        conn.execute(
            "CREATE TABLE membership (club int, member int, role text, PRIMARY KEY (club, member))"
        )
        conn.execute("CREATE TABLE loose (a int, b text)")
        conn.execute("CREATE TABLE by_uuid (id uuid PRIMARY KEY)")
        conn.execute("CREATE TABLE by_text (id text PRIMARY KEY)")
        conn.execute("CREATE TABLE by_time (id timestamptz PRIMARY KEY)")
        conn.execute("INSERT INTO membership VALUES (1, 2, 'admin')")
        conn.execute("INSERT INTO loose VALUES (1, 'x')")
        conn.execute("INSERT INTO by_uuid VALUES ('11111111-1111-1111-1111-111111111111')")
        conn.execute("INSERT INTO by_text VALUES (E'quote \" and \\\\ backslash')")
        conn.execute("INSERT INTO by_time VALUES ('2026-01-02 03:04:05+00')")
        mismatches = conn.execute(
            "SELECT count(*) FROM whodunit.row_change rc "
            "JOIN whodunit.statement s ON s.id = rc.statement_id "
            "JOIN whodunit.audited_table t "
            "ON (t.schema_name, t.table_name) = (s.schema_name, s.table_name) "
            "WHERE rc.pk_hash <> hashtextextended(whodunit.key_text(rc.new_row, t.key_columns), 0)"
        ).fetchone()
        keys = dict(
            conn.execute("SELECT table_name, key_columns FROM whodunit.audited_table").fetchall()
        )
        assert (0, ["club", "member"], []) == (mismatches[0], keys["membership"], keys["loose"])

    def test_column_types_round_trip(self, conn: Conn) -> None:
        """uuid, jsonb, bytea, arrays, timestamptz, enum and generated columns survive capture."""
        conn.execute("CREATE TYPE mood AS ENUM ('calm', 'angry')")
        conn.execute(
            "CREATE TABLE odd (id uuid PRIMARY KEY, doc jsonb, blob bytea, tags text[], "
            "at timestamptz, m mood, n int, twice int GENERATED ALWAYS AS (n * 2) STORED)"
        )
        conn.execute(
            "INSERT INTO odd VALUES ('11111111-1111-1111-1111-111111111111', '{\"a\": [1, 2]}', "
            "'\\xdeadbeef', '{x,y}', '2026-01-02 03:04:05.678901+00', 'angry', 21)"
        )
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute("DELETE FROM odd")
        [stmt] = statements(conn, op="DELETE")
        restored = conn.execute(
            "SELECT (json_populate_record(NULL::odd, old_row)).* FROM whodunit.row_change "
            "WHERE statement_id = %s",
            (stmt["id"],),
        ).fetchone()
        assert restored is not None
        assert {"a": [1, 2]} == restored[1]
        assert (b"\xde\xad\xbe\xef", ["x", "y"], "angry", 21, 42) == (
            bytes(restored[2]), restored[3], restored[5], restored[6], restored[7]
        )  # fmt: skip
        assert "2026-01-02 03:04:05.678901+00:00" == str(restored[4])


class TestTruncateAndDrop:
    def test_truncate_saves_rows_up_to_the_cap(self, users: Conn) -> None:
        """TRUNCATE records the rows it removes, counting all but saving at most the cap."""
        users.execute("SELECT whodunit.configure('snapshot_max_rows', '5')")
        users.execute(
            "INSERT INTO users (name, score) SELECT 'u' || g, g FROM generate_series(1, 8) g"
        )
        users.execute("TRUNCATE users")
        [stmt] = statements(users, op="TRUNCATE")
        assert (8, 5) == (stmt["rows"], stmt["rows_captured"])
        assert 5 == len(row_changes(users, stmt["id"]))

    def test_drop_table_keeps_rows_restorable(self, users: Conn) -> None:
        """DROP TABLE of an audited table records the drop and the rows it held."""
        users.execute("INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 4) g")
        users.execute("DROP TABLE users")
        [stmt] = statements(users, op="DDL", command_tag="DROP TABLE")
        assert ("users", "public.users", 4, 4) == (
            stmt["table_name"], stmt["object_identity"], stmt["rows"], stmt["rows_captured"]
        )  # fmt: skip
        assert 4 == len(row_changes(users, stmt["id"]))
        assert [] == conn_audited(users)

    def test_name_only_in_query_text_saves_nothing(self, users: Conn) -> None:
        """Saved rows of a table that a DROP only mentioned are removed again."""
        users.execute("INSERT INTO users (name) VALUES ('stays')")
        users.execute("CREATE TABLE other (id int)")
        users.execute("DROP TABLE other /* not users */")
        [stmt] = statements(users, op="DDL", command_tag="DROP TABLE")
        assert ("other", 0) == (stmt["table_name"], stmt["rows"])
        assert (
            1 == users.execute("SELECT count(*) FROM whodunit.row_change").fetchone()[0]
        )  # the INSERT

    def test_drop_schema_cascade_saves_its_tables(self, conn: Conn) -> None:
        """DROP SCHEMA ... CASCADE saves the rows of the audited tables it drops."""
        conn.execute("CREATE SCHEMA game")
        conn.execute("CREATE TABLE game.session (id int PRIMARY KEY)")
        conn.execute("SELECT whodunit.enable_audit('game.session')")
        conn.execute("INSERT INTO game.session VALUES (1), (2)")
        conn.execute("DROP SCHEMA game CASCADE")
        drops = statements(conn, op="DDL", command_tag="DROP SCHEMA")
        assert [(2, "session"), (0, None)] == [(s["rows"], s["table_name"]) for s in drops]


def conn_audited(conn: Conn) -> list[str]:
    """Return the audited tables' names."""
    return [r[0] for r in conn.execute("SELECT table_name FROM whodunit.audited_table ORDER BY 1")]


class TestDdl:
    def test_system_tables_are_refused(self, conn: Conn) -> None:
        """Auditing a system catalog is refused with a clear error."""
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="system or own tables"):
            conn.execute("SELECT whodunit.enable_audit('pg_catalog.pg_class')")

    def test_created_table_is_audited_and_recorded(self, conn: Conn) -> None:
        """CREATE TABLE in an audited schema is recorded and the table audited at once."""
        conn.execute("CREATE TABLE later (id serial PRIMARY KEY, v text)")
        conn.execute("INSERT INTO later (v) VALUES ('x')")
        [ddl] = statements(conn, op="DDL")
        assert ("CREATE TABLE", "table", "public.later", "later") == (
            ddl["command_tag"], ddl["object_type"], ddl["object_identity"], ddl["table_name"]
        )  # fmt: skip
        assert ["later"] == conn_audited(conn)
        assert 1 == len(statements(conn, op="INSERT", table_name="later"))

    def test_grant_and_alter_are_recorded(self, users: Conn, app_dsn: str) -> None:
        """GRANT, REVOKE and ALTER TABLE are recorded with their command tags."""
        role = psycopg.conninfo.conninfo_to_dict(app_dsn)["user"]
        users.execute(f'GRANT DELETE ON users TO "{role}"')
        users.execute(f'REVOKE DELETE ON users FROM "{role}"')
        users.execute("ALTER TABLE users ADD COLUMN email text")
        tags = [s["command_tag"] for s in statements(users, op="DDL") if "users" in s["query"]]
        assert ["CREATE TABLE", "GRANT", "REVOKE", "ALTER TABLE"] == tags

    def test_altered_table_keeps_capturing_new_columns(self, users: Conn) -> None:
        """After ALTER TABLE ADD COLUMN the new column appears in the row images."""
        users.execute("ALTER TABLE users ADD COLUMN email text")
        users.execute("INSERT INTO users (name, email) VALUES ('ann', 'ann@example.com')")
        [stmt] = statements(users, op="INSERT")
        assert "ann@example.com" == row_changes(users, stmt["id"])[0]["new_row"]["email"]

    def test_replica_mode_does_not_switch_capture_off(self, users: Conn) -> None:
        """session_replication_role = replica still fires the (ENABLE ALWAYS) triggers."""
        users.execute("SET session_replication_role = replica")
        users.execute("INSERT INTO users (name) VALUES ('sneaky')")
        users.execute("RESET session_replication_role")
        assert 1 == len(statements(users, op="INSERT"))


class TestHardening:
    def test_partition_and_parent_are_each_captured_once(self, conn: Conn) -> None:
        """A DELETE on the parent and one aimed at a partition are each recorded once."""
        conn.execute("CREATE TABLE score (id int, v int, PRIMARY KEY (id)) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE score_low PARTITION OF score FOR VALUES FROM (0) TO (100)")
        conn.execute("INSERT INTO score VALUES (1, 1), (2, 2)")
        conn.execute("DELETE FROM score WHERE id = 1")
        conn.execute("DELETE FROM score_low WHERE id = 2")
        found = [(s["table_name"], s["rows"]) for s in statements(conn, op="DELETE")]
        assert [("score", 1), ("score_low", 1)] == found

    def test_replica_mode_does_not_hide_a_drop(self, users: Conn) -> None:
        """Event triggers fire (ENABLE ALWAYS) under session_replication_role = replica."""
        users.execute("INSERT INTO users (name) VALUES ('a')")
        users.execute("SET session_replication_role = replica")
        users.execute("DROP TABLE users")
        users.execute("RESET session_replication_role")
        [drop] = statements(users, command_tag="DROP TABLE")
        assert (1, 1) == (drop["rows"], drop["rows_captured"])

    def test_truncate_sees_rows_hidden_by_row_security(self, users: Conn) -> None:
        """Row-level security does not hide rows from the TRUNCATE snapshot."""
        users.execute("INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 3) g")
        users.execute("ALTER TABLE users ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
        users.execute("TRUNCATE users")
        [stmt] = statements(users, op="TRUNCATE")
        assert (3, 3) == (stmt["rows"], stmt["rows_captured"])

    def test_renamed_schema_is_recorded_under_its_new_name(self, conn: Conn) -> None:
        """After ALTER SCHEMA ... RENAME, statements carry the new schema name."""
        conn.execute("CREATE SCHEMA old_name")
        conn.execute("CREATE TABLE old_name.t (id int PRIMARY KEY)")
        conn.execute("SELECT whodunit.enable_audit('old_name.t')")
        conn.execute("ALTER SCHEMA old_name RENAME TO new_name")
        conn.execute("INSERT INTO new_name.t VALUES (1)")
        conn.execute("TRUNCATE new_name.t")
        found = [(s["op"], s["schema_name"]) for s in dml(conn)]
        assert [("INSERT", "new_name"), ("TRUNCATE", "new_name")] == found

    def test_truncating_a_partitioned_table_saves_rows_once(self, conn: Conn) -> None:
        """The parent's TRUNCATE counts the rows; each partition's saves its own."""
        conn.execute("CREATE TABLE score (id int PRIMARY KEY) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE score_a PARTITION OF score FOR VALUES FROM (0) TO (10)")
        conn.execute("CREATE TABLE score_b PARTITION OF score FOR VALUES FROM (10) TO (20)")
        conn.execute("INSERT INTO score VALUES (1), (2), (15)")
        conn.execute("TRUNCATE score")
        found = {s["table_name"]: (s["rows"], s["rows_captured"]) for s in dml(conn)[1:]}
        assert {"score": (3, 0), "score_a": (2, 2), "score_b": (1, 1)} == found
        assert (
            3
            == conn.execute(
                "SELECT count(*) FROM whodunit.row_change WHERE old_row IS NOT NULL"
            ).fetchone()[0]
        )
