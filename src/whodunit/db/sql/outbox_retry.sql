-- outbox_retry.sql — the attempt failed but may succeed later: try again after a delay.
UPDATE whodunit.alert_outbox
SET attempts = attempts + 1, last_error = %(error)s,
    next_attempt_at = clock_timestamp() + make_interval(secs => %(delay)s)
WHERE id = %(id)s
