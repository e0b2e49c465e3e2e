-- 0004_watch.sql — schema version 4: what `whodunit watch` needs to read the trail live.
-- Defines the table whodunit.watch_checkpoint (where each named watcher stopped), the
-- function whodunit.watch_position() (a snapshot plus the sessions that may still commit
-- older rows), and the NOLOGIN role whodunit_watcher, granted just enough to run a
-- watcher: read statement and app_event, keep its checkpoint, call watch_position().

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'whodunit_watcher') THEN
        CREATE ROLE whodunit_watcher NOLOGIN;
    END IF;
END $$;

SET LOCAL ROLE whodunit;

-- Ids cannot say where a reader stopped: they are drawn when a statement runs, 32 at a
-- time per session, and become visible when their transaction commits, in any order.
-- The position is a snapshot instead: rows of transactions it shows as finished have
-- been read, all others not yet. The `at` bounds let the next read use the index on
-- `at` rather than scan the trail (see watch_position()).
CREATE TABLE whodunit.watch_checkpoint (
    name           text PRIMARY KEY,
    snapshot       pg_snapshot NOT NULL,
    -- Every row not yet read has `at` >= floor, or belongs to a session in `sessions`.
    floor          timestamptz NOT NULL,
    sessions       jsonb NOT NULL DEFAULT '[]',
    -- Where the detectors' look-back starts (rows read with `at` before it are forgotten).
    history_from   timestamptz NOT NULL,
    -- The highest ids read so far: progress for people and metrics, not a position.
    statement_id   bigint NOT NULL DEFAULT 0,
    app_event_id   bigint NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE whodunit.watch_checkpoint IS
    'Where each whodunit watcher (by name) stopped reading the trail.';

GRANT SELECT ON whodunit.statement, whodunit.app_event TO whodunit_watcher;
GRANT SELECT, INSERT, UPDATE ON whodunit.watch_checkpoint TO whodunit_watcher;

RESET ROLE;

-- Owned by the installing superuser: pg_stat_activity shows other roles' transactions only
-- to superusers and pg_read_all_stats, and this passes on their timing, never their SQL.
--
-- A row not visible in `snapshot` was written by a transaction still open then, or by one
-- that starts later. Its `at` (statement_timestamp() or clock_timestamp()) is at least the
-- start of that transaction, or of the statement running when `taken_at` was read (inside
-- a procedure that commits, only the statement's start bounds it). So every such row has
-- `at` >= taken_at, or belongs to one of the sessions in `running`, with `at` >= its
-- `start`. `open` (read after the snapshot) says which of an earlier read's sessions are
-- still in the same transaction: their rows are still invisible.
-- Prepared transactions have no session; their xid is listed instead.
CREATE FUNCTION whodunit.watch_position(
    OUT snapshot pg_snapshot, OUT taken_at timestamptz, OUT running jsonb,
    OUT prepared jsonb, OUT open jsonb, OUT still_prepared jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
DECLARE
    db oid := (SELECT oid FROM pg_database WHERE datname = current_database());
BEGIN
    -- Each statement below must see the present, not the transaction's first snapshot.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'whodunit.watch_position() needs READ COMMITTED, not %',
            current_setting('transaction_isolation') USING ERRCODE = '25001';
    END IF;
    PERFORM pg_stat_clear_snapshot();
    taken_at := clock_timestamp();
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'pid', a.pid, 'xact_start', a.xact_start,
               'start', least(a.xact_start, a.query_start), 'xid', a.backend_xid::text)), '[]')
    INTO running
    FROM pg_stat_activity a
    WHERE a.datid = db AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
      -- Neither fires triggers (a parallel worker's leader is listed itself).
      AND a.backend_type NOT IN ('autovacuum worker', 'parallel worker')
      -- A transaction that wrote nothing and runs nothing writes later, stamped later.
      AND (a.backend_xid IS NOT NULL
           OR coalesce(a.state, '') NOT LIKE 'idle in transaction%');
    SELECT coalesce(jsonb_agg(p.transaction::text), '[]') INTO prepared
    FROM pg_prepared_xacts p WHERE p.database = current_database();
    snapshot := pg_current_snapshot();
    PERFORM pg_stat_clear_snapshot();
    SELECT coalesce(jsonb_agg(jsonb_build_object('pid', a.pid, 'xact_start', a.xact_start)), '[]')
    INTO open
    FROM pg_stat_activity a
    WHERE a.datid = db AND a.xact_start IS NOT NULL;
    SELECT coalesce(jsonb_agg(p.transaction::text), '[]') INTO still_prepared
    FROM pg_prepared_xacts p WHERE p.database = current_database();
END $$;
REVOKE ALL ON FUNCTION whodunit.watch_position() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION whodunit.watch_position() TO whodunit_watcher;

UPDATE whodunit.meta SET value = '4' WHERE key = 'schema_version';
