-- seal_app_event_hashes.sql — the SHA-256 of each app_event in %(ids)s (the row as jsonb).
SELECT e.id, e.txid::text AS txid,
       sha256(convert_to(jsonb_build_object('app_event', to_jsonb(e))::text, 'UTF8')) AS digest
FROM whodunit.app_event e
WHERE e.id = ANY (%(ids)s::bigint[])
ORDER BY e.id
