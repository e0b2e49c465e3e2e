-- outbox_prune.sql — forget delivered and failed rows older than the retention; pending rows
-- stay whatever their age. A pruned alert key submitted again is sent again.
DELETE FROM whodunit.alert_outbox
WHERE status <> 'pending' AND created_at < now() - make_interval(days => %(days)s)
