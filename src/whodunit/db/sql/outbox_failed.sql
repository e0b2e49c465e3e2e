-- outbox_failed.sql — the receiver refused the message for good: never sent again.
UPDATE whodunit.alert_outbox
SET status = 'failed', attempts = attempts + 1, last_error = %(error)s
WHERE id = ANY(%(ids)s)
