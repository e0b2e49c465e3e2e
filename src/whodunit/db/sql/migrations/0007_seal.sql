-- 0007_seal.sql — schema version 7: the hash chain that makes the trail tamper-evident.
-- whodunit.seal holds one row per batch the watcher read: the statement and app_event
-- ids it covers, the SHA-256 of each of those records (as whodunit/watch/seal.py
-- serialises them), and a hash chaining them to the previous seal of the same watcher.
-- The hashes are computed by the watcher after commit, never inside the capture
-- triggers (a chain in the triggers would serialise every audited writer).
--
-- Ordering: a seal covers the rows *read in one batch* (finished in the snapshot
-- `until` and not in `since`), listed by id as multiranges, not "ids up to N". A lower
-- id that commits after a higher one was sealed is therefore sealed by the next batch,
-- exactly once; `since` of each seal is the `until` of the one before, so together
-- they say which transactions every row of the trail must be sealed for.

SET LOCAL ROLE whodunit;

CREATE TABLE whodunit.seal (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The watcher (by [watch] name) whose chain this seal belongs to.
    watcher           text NOT NULL,
    sealed_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Rows of transactions finished in `until` and not in `since` were read for it.
    since             pg_snapshot NOT NULL,
    until             pg_snapshot NOT NULL,
    statement_ids     int8multirange NOT NULL,
    app_event_ids     int8multirange NOT NULL,
    records           integer NOT NULL,
    -- SHA-256 digests (32 bytes each) of the records, in id order, statements first.
    statement_hashes  bytea NOT NULL,
    app_event_hashes  bytea NOT NULL,
    -- Hex SHA-256; the first seal of a chain has 64 zeros as its prev_hash.
    prev_hash         text NOT NULL,
    hash              text NOT NULL
);
COMMENT ON TABLE whodunit.seal IS
    'The hash chain over the trail: one seal per batch read by a watcher (whodunit verify).';

-- "Is this id sealed already?" for every row a batch read, and for whodunit verify.
CREATE INDEX IF NOT EXISTS seal_statement_ids ON whodunit.seal USING gist (statement_ids);
CREATE INDEX IF NOT EXISTS seal_app_event_ids ON whodunit.seal USING gist (app_event_ids);
CREATE INDEX IF NOT EXISTS seal_watcher ON whodunit.seal (watcher, id);

-- Append-only like the trail it seals.
CREATE TRIGGER protect_trail BEFORE UPDATE OR DELETE OR TRUNCATE ON whodunit.seal
    FOR EACH STATEMENT EXECUTE FUNCTION whodunit.protect_trail();
ALTER TABLE whodunit.seal ENABLE ALWAYS TRIGGER protect_trail;

-- The watcher hashes the row images too, and appends seals; it changes nothing else.
GRANT SELECT ON whodunit.row_change TO whodunit_watcher;
GRANT SELECT, INSERT ON whodunit.seal TO whodunit_watcher;

RESET ROLE;

UPDATE whodunit.meta SET value = '7' WHERE key = 'schema_version';
