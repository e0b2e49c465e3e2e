-- One application event from whodunit.audit (the @audit_log decorator, the auth helpers),
-- written through the SECURITY DEFINER function: the app role cannot touch the table.
-- The context is always passed, as a JSON object: a transaction of whodunit's own never
-- got the whodunit.context setting, and the caller's was set when its transaction began.
-- Each {name} becomes the driver's parameter marker (whodunit/audit.py).
SELECT whodunit.record_app_event(
    p_action        => {action},
    p_resource_type => {resource_type},
    p_resource_id   => {resource_id},
    p_outcome       => {outcome},
    p_error         => {error},
    p_duration_ms   => {duration_ms},
    p_details       => CAST({details} AS jsonb),
    p_context       => CAST({context} AS jsonb)
)
