-- seal_insert.sql — append one seal to a watcher's chain.
INSERT INTO whodunit.seal (watcher, since, until, statement_ids, app_event_ids, records,
                           statement_hashes, app_event_hashes, prev_hash, hash)
VALUES (%(watcher)s, %(since)s::pg_snapshot, %(until)s::pg_snapshot,
        %(statement_ids)s::int8multirange, %(app_event_ids)s::int8multirange, %(records)s,
        %(statement_hashes)s, %(app_event_hashes)s, %(prev_hash)s, %(hash)s)
RETURNING id, sealed_at
