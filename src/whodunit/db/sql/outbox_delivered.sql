-- outbox_delivered.sql — the receiver took the message carrying these rows.
UPDATE whodunit.alert_outbox
SET status = 'delivered', delivered_at = clock_timestamp(), attempts = attempts + 1,
    last_error = NULL
WHERE id = ANY(%(ids)s)
