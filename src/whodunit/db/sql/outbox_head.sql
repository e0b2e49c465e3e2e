-- outbox_head.sql — the next row to deliver on a channel: its oldest pending row whose group
-- had no message within the grouping window (such rows wait, folded into a later message).
-- `wait` > 0: the row is waiting for a retry, and the rows behind it wait with it.
SELECT o.id, o.alert_key, o.group_key, o.payload, o.attempts,
       greatest(extract(epoch FROM o.next_attempt_at - now()), 0)::float8 AS wait
FROM whodunit.alert_outbox o
WHERE o.channel = %(channel)s AND o.status = 'pending'
  AND NOT (o.group_key IS NOT NULL AND EXISTS (
      SELECT FROM whodunit.alert_outbox d
      WHERE d.channel = o.channel AND d.group_key = o.group_key AND d.status = 'delivered'
        AND d.delivered_at > now() - make_interval(secs => %(window)s)))
ORDER BY o.id
LIMIT 1
FOR UPDATE OF o SKIP LOCKED
