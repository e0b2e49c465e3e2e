-- outbox_lock_channel.sql — one deliverer per channel at a time, so messages leave in order.
-- Transaction-scoped: it ends with the delivery attempt, or with the deliverer's death.
SELECT pg_try_advisory_xact_lock(2003332964, hashtext(%(channel)s))
