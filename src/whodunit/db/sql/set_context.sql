-- The application's context for the current transaction only (LOCAL, the same as
-- set_config(..., true)), so it cannot outlive the transaction on a pooled connection or
-- behind PgBouncer. A utility statement: no planning, about half the server time of
-- SELECT set_config(...). {context} is a quoted literal (whodunit/context.py).
SET LOCAL whodunit.context = {context}
