-- outbox_group.sql — every pending row of a group on a channel, folded into one message.
SELECT id, payload ->> 'at' AS at
FROM whodunit.alert_outbox
WHERE channel = %(channel)s AND group_key = %(group_key)s AND status = 'pending'
ORDER BY id
FOR UPDATE SKIP LOCKED
