-- outbox_insert.sql — queue one alert for one channel; the same alert key again is a no-op.
INSERT INTO whodunit.alert_outbox (alert_key, channel, group_key, payload)
VALUES (%(key)s, %(channel)s, %(group_key)s, %(payload)s)
ON CONFLICT (alert_key, channel) DO NOTHING
