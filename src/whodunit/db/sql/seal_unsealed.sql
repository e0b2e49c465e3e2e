-- seal_unsealed.sql — ids of trail rows that some seal of %(watcher)s should cover but
-- none does: their transaction finished within the chain's snapshots (in %(until)s, not
-- in %(since)s), so the watcher read them, yet no seal lists them. A forged row dated
-- into the sealed past. Rows of later transactions are simply not sealed yet.
SELECT 'statement' AS kind, s.id
FROM whodunit.statement s
WHERE pg_visible_in_snapshot(s.txid, %(until)s::pg_snapshot)
  AND NOT pg_visible_in_snapshot(s.txid, %(since)s::pg_snapshot)
  AND NOT EXISTS (SELECT FROM whodunit.seal x
                  WHERE x.statement_ids @> s.id AND x.watcher = %(watcher)s)
UNION ALL
SELECT 'app_event', e.id
FROM whodunit.app_event e
WHERE pg_visible_in_snapshot(e.txid, %(until)s::pg_snapshot)
  AND NOT pg_visible_in_snapshot(e.txid, %(since)s::pg_snapshot)
  AND NOT EXISTS (SELECT FROM whodunit.seal x
                  WHERE x.app_event_ids @> e.id AND x.watcher = %(watcher)s)
ORDER BY 1 DESC, 2
