-- outbox_notify.sql — wake the deliverers when the submitting transaction commits.
SELECT pg_notify('whodunit_outbox', '')
