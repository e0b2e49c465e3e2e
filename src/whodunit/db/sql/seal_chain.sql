-- seal_chain.sql — a watcher's seals in chain order, with the ids each covers expanded.
SELECT id, sealed_at, since::text AS since, until::text AS until, records,
       ARRAY(SELECT generate_series(lower(r), upper(r) - 1)
             FROM unnest(statement_ids) AS r ORDER BY 1) AS statement_ids,
       ARRAY(SELECT generate_series(lower(r), upper(r) - 1)
             FROM unnest(app_event_ids) AS r ORDER BY 1) AS app_event_ids,
       statement_hashes, app_event_hashes, prev_hash, hash
FROM whodunit.seal
WHERE watcher = %(watcher)s
ORDER BY id
