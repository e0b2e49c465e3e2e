-- seal_new_ids.sql — of the ids a batch read, those no seal of %(watcher)s covers yet
-- (a batch re-read after a crash, before its checkpoint was saved, is not sealed twice).
SELECT 'statement' AS kind, i.id
FROM unnest(%(statement_ids)s::bigint[]) AS i(id)
WHERE NOT EXISTS (SELECT FROM whodunit.seal x
                  WHERE x.statement_ids @> i.id AND x.watcher = %(watcher)s)
UNION ALL
SELECT 'app_event', i.id
FROM unnest(%(app_event_ids)s::bigint[]) AS i(id)
WHERE NOT EXISTS (SELECT FROM whodunit.seal x
                  WHERE x.app_event_ids @> i.id AND x.watcher = %(watcher)s)
