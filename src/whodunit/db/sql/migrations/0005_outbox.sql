-- 0005_outbox.sql — schema version 5: the durable outbox of alert notifications.
-- whodunit.alert_outbox holds one row per alert per notification channel, written before
-- anything is sent, so an alert survives a watcher restart or a receiver outage
-- (whodunit/watch/outbox.py delivers it, at least once, in order per channel).
-- The unique (alert_key, channel) makes submitting the same alert twice a no-op.

SET LOCAL ROLE whodunit;

CREATE TABLE IF NOT EXISTS whodunit.alert_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_key       text NOT NULL,
    channel         text NOT NULL,
    -- Rule plus table and/or actor: repeats of one group within a window go out as one
    -- message ("x12 in 5 min"). NULL: never grouped.
    group_key       text,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    last_error      text,
    UNIQUE (alert_key, channel)
);
COMMENT ON TABLE whodunit.alert_outbox IS
    'Alert notifications, one row per alert and channel: pending until a receiver took it.';

-- The deliverer reads the oldest pending rows of a channel, and asks whether a group
-- had a message within the grouping window.
CREATE INDEX IF NOT EXISTS alert_outbox_pending ON whodunit.alert_outbox (channel, id)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS alert_outbox_group_sent
    ON whodunit.alert_outbox (channel, group_key, delivered_at)
    WHERE status = 'delivered' AND group_key IS NOT NULL;

RESET ROLE;

UPDATE whodunit.meta SET value = '5' WHERE key = 'schema_version';
