-- outbox_depth.sql — pending rows per channel: the outbox depth metric.
SELECT channel, count(*) FROM whodunit.alert_outbox WHERE status = 'pending' GROUP BY channel
