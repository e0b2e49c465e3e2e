-- outbox_hold_end.sql — seconds until the first group held back on a channel may go out
-- (NULL when none is held).
SELECT extract(epoch FROM min(h.until) - now())::float8
FROM (SELECT (SELECT max(d.delivered_at) FROM whodunit.alert_outbox d
              WHERE d.channel = o.channel AND d.group_key = o.group_key
                AND d.status = 'delivered') + make_interval(secs => %(window)s) AS until
      FROM whodunit.alert_outbox o
      WHERE o.channel = %(channel)s AND o.status = 'pending' AND o.group_key IS NOT NULL) h
WHERE h.until > now()
