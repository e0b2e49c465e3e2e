-- 0001_trail.sql — schema version 1: the audit trail and its capture.
-- Defines the whodunit schema (owned by the NOLOGIN role "whodunit"), the trail tables
-- statement / row_change / app_event, the audited-table registry, the capture trigger
-- functions (statement-level, transition tables), the TRUNCATE/DROP snapshots, the DDL
-- event triggers, the prevention guards and the append-only protection of the trail.
-- Run by `whodunit install` as a superuser, inside one transaction.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'whodunit') THEN
        CREATE ROLE whodunit NOLOGIN;
    END IF;
END $$;
-- BYPASSRLS: TRUNCATE and DROP snapshots must see every row, row security or not.
ALTER ROLE whodunit NOLOGIN BYPASSRLS;

CREATE SCHEMA IF NOT EXISTS whodunit AUTHORIZATION whodunit;
REVOKE ALL ON SCHEMA whodunit FROM PUBLIC;
GRANT USAGE ON SCHEMA whodunit TO PUBLIC;

-- Trail and registry objects belong to the owner role; the admin functions and the
-- event-trigger functions further down are created by the installing superuser.
SET LOCAL ROLE whodunit;

CREATE TABLE whodunit.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Settings are written into the generated capture functions (see configure()), so a
-- session cannot override them and the triggers read them without a query.
CREATE TABLE whodunit.setting (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO whodunit.setting (key, value) VALUES
    ('query_max_bytes', '8192'),
    ('notify_min_rows', '100'),
    ('snapshot_max_rows', '100000');

CREATE SEQUENCE whodunit.statement_id_seq AS bigint CACHE 32;

CREATE TABLE whodunit.statement (
    id               bigint PRIMARY KEY DEFAULT nextval('whodunit.statement_id_seq'),
    at               timestamptz NOT NULL,
    txid             xid8 NOT NULL,
    -- INSERT, UPDATE, DELETE, TRUNCATE or DDL. No CHECK constraint: its expression is
    -- rebuilt from the catalog for every statement, a cost paid by every audited write.
    op               text NOT NULL,
    schema_name      text,
    table_name       text,
    rows             bigint NOT NULL DEFAULT 0,
    rows_captured    bigint,
    command_tag      text,
    object_type      text,
    object_identity  text,
    query            text,
    db_session_user  text NOT NULL,
    db_current_user  text NOT NULL,
    client_addr      inet,
    client_port      integer,
    application_name text,
    backend_pid      integer NOT NULL,
    actor_id         text,
    actor_name       text,
    correlation_id   text,
    trace_id         text,
    request_method   text,
    request_path     text,
    client_ip        text,
    user_agent       text,
    context          jsonb,
    context_error    text,
    details          jsonb
);
ALTER SEQUENCE whodunit.statement_id_seq OWNED BY whodunit.statement.id;
COMMENT ON TABLE whodunit.statement IS
    'One row per audited statement per table, and per DDL command.';
COMMENT ON COLUMN whodunit.statement.rows_captured IS
    'TRUNCATE/DROP: how many of the removed rows were saved (the snapshot cap applies).';
COMMENT ON COLUMN whodunit.statement.context IS
    'Extra keys of the whodunit.context setting beyond the named columns.';
COMMENT ON COLUMN whodunit.statement.context_error IS
    'The raw whodunit.context value when it was not a JSON object.';

-- Few indexes: each costs ~10 µs on every audited statement here. A B-tree, not BRIN:
-- once VACUUM has summarised the last page range, every insert must widen its summary
-- (~50 µs). Transactions are found through `at` (a transaction's statements sit within
-- its time window), not through an index on txid.
CREATE INDEX statement_at ON whodunit.statement (at);

-- Row images are json from row_to_json(), ~2.5x cheaper to build than jsonb here and
-- smaller; the primary key is kept only as a hash (the images hold the values), which
-- keeps the trail near 350 bytes per deleted row of a typical table.
CREATE TABLE whodunit.row_change (
    statement_id bigint NOT NULL,
    pk_hash      bigint NOT NULL,
    old_row      json,
    new_row      json
);
COMMENT ON TABLE whodunit.row_change IS
    'One row per changed row: the whole row before (old_row) and after (new_row).';
COMMENT ON COLUMN whodunit.row_change.pk_hash IS
    'hashtextextended(whodunit.key_text(row, key columns), 0): finds a row''s history.';
COMMENT ON COLUMN whodunit.row_change.old_row IS
    'UPDATE, DELETE, TRUNCATE, DROP TABLE: the row before the change.';
COMMENT ON COLUMN whodunit.row_change.new_row IS 'INSERT, UPDATE: the row after the change.';
-- A statement's rows are written together, so its id spans a few pages: a BRIN index
-- finds them for restore at almost no cost per row. Measured here against a B-tree, a
-- 100k-row DELETE ran ~40% faster and single-row writes no slower (the benchmark
-- VACUUMs first, so it includes inserts that widen a summarised last range).
CREATE INDEX row_change_statement ON whodunit.row_change
    USING brin (statement_id) WITH (pages_per_range = 16);
-- No index on pk_hash in the write path: its inserts land on random pages, and measured
-- here it took a quarter of 8 concurrent writers' throughput and half the time of a
-- 100k-row DELETE. "Who changed row X" finds the table's statements first and then
-- their rows through row_change_statement; a key index built off the commit path (in
-- bulk, by the watcher) is planned for the investigation part.

CREATE TABLE whodunit.app_event (
    id               bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    txid             xid8,
    action           text NOT NULL,
    resource_type    text,
    resource_id      text,
    outcome          text NOT NULL DEFAULT 'success'
                     CHECK (outcome IN ('success', 'failure')),
    error            text,
    duration_ms      double precision,
    details          jsonb,
    db_session_user  text NOT NULL,
    db_current_user  text NOT NULL,
    client_addr      inet,
    application_name text,
    backend_pid      integer NOT NULL,
    actor_id         text,
    actor_name       text,
    correlation_id   text,
    trace_id         text,
    request_method   text,
    request_path     text,
    client_ip        text,
    user_agent       text,
    context          jsonb,
    context_error    text
);
COMMENT ON TABLE whodunit.app_event IS
    'Application events: @audit_log calls, logins, permission changes.';
CREATE INDEX app_event_at ON whodunit.app_event (at);

CREATE TABLE whodunit.audited_schema (
    schema_name text PRIMARY KEY,
    exclude     text[] NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE whodunit.audited_schema IS
    'Schemas whose tables are audited, including tables created later.';

CREATE TABLE whodunit.audited_table (
    relid       oid PRIMARY KEY,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    key_columns text[] NOT NULL,
    since       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE whodunit.guard (
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    max_rows    bigint CHECK (max_rows >= 0),
    no_truncate boolean NOT NULL DEFAULT false,
    no_drop     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (schema_name, table_name)
);
COMMENT ON TABLE whodunit.guard IS
    'Prevention guards; a transaction lifts them with set_config(''whodunit.allow'', ..., true).';

-- ---------------------------------------------------------------------------
-- Helpers shared by the capture functions.

-- The app context as a JSON object, or NULL when it is not one. A malformed context must
-- never break the application's statement (fail closed means refusing unaudited changes,
-- not refusing on bad metadata): the callers store it raw in context_error instead.
-- PostgreSQL 16+ validates without an exception block (a subtransaction per call).
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        -- plpgsql, not SQL: an inlined SQL body would let the planner fold the cast of a
        -- constant argument before the validity test.
        CREATE FUNCTION whodunit.parse_context(raw text) RETURNS jsonb
        LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$
        BEGIN
            IF pg_input_is_valid(raw, 'jsonb') AND jsonb_typeof(raw::jsonb) = 'object' THEN
                RETURN raw::jsonb;
            END IF;
            RETURN NULL;
        END $f$;
    ELSE
        CREATE FUNCTION whodunit.parse_context(raw text) RETURNS jsonb
        LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $f$
        DECLARE
            ctx jsonb;
        BEGIN
            ctx := raw::jsonb;
            RETURN CASE WHEN jsonb_typeof(ctx) = 'object' THEN ctx END;
        EXCEPTION WHEN others THEN
            RETURN NULL;
        END $f$;
    END IF;
END $$;

-- A setting from whodunit.setting. Capture functions get theirs written in when they
-- are generated (configure() regenerates them); the rare paths (DDL, DROP) read the table.
CREATE FUNCTION whodunit.setting_int(p_key text) RETURNS int
LANGUAGE sql STABLE AS $$
    SELECT value::int FROM whodunit.setting WHERE key = p_key
$$;

-- The role the statement ran as. Inside a SECURITY DEFINER function current_user is the
-- owner, but the "role" setting still holds what SET ROLE chose ('none' when unset).
CREATE FUNCTION whodunit.invoking_role() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE current_setting('role') WHEN 'none' THEN session_user::text
                                        ELSE current_setting('role') END
$$;

-- The text a row's key is hashed from: the value of a one-column key as JSON renders it,
-- a JSON array of the values of a composite key, the whole row without a key.
CREATE FUNCTION whodunit.key_text(img json, keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE cardinality(keys)
        WHEN 0 THEN img::text
        WHEN 1 THEN img ->> keys[1]
        ELSE (SELECT json_agg(img -> k ORDER BY o)::text
              FROM unnest(keys) WITH ORDINALITY AS u(k, o))
    END
$$;

-- The columns of the app context (the whodunit.context setting, or an explicit JSON).
-- Inlined into the queries that use it: no call per statement.
CREATE FUNCTION whodunit.context_columns(raw text)
RETURNS TABLE (actor_id text, actor_name text, correlation_id text, trace_id text,
               request_method text, request_path text, client_ip text, user_agent text,
               context jsonb, context_error text)
LANGUAGE sql STABLE AS $$
    SELECT c.ctx ->> 'actor_id', c.ctx ->> 'actor_name', c.ctx ->> 'correlation_id',
           c.ctx ->> 'trace_id', c.ctx ->> 'method', c.ctx ->> 'path',
           c.ctx ->> 'client_ip', c.ctx ->> 'user_agent',
           nullif(c.ctx - ARRAY['actor_id', 'actor_name', 'correlation_id', 'trace_id',
                                'method', 'path', 'client_ip', 'user_agent'], '{}'),
           CASE WHEN c.raw IS NOT NULL AND c.ctx IS NULL THEN left(c.raw, 8192) END
    FROM (SELECT r.raw, CASE WHEN r.raw IS NOT NULL THEN whodunit.parse_context(r.raw) END
          FROM (SELECT nullif(raw, '') AS raw) r) AS c(raw, ctx)
$$;

-- Statement rows for DDL and DROP TABLE; the generated capture functions write their
-- own inline (a nested call costs ~10 µs on every audited statement).
CREATE FUNCTION whodunit.record_statement(
    p_id bigint, p_op text, p_schema text, p_table text, p_rows bigint,
    p_rows_captured bigint DEFAULT NULL, p_command_tag text DEFAULT NULL,
    p_object_type text DEFAULT NULL, p_object_identity text DEFAULT NULL,
    p_details jsonb DEFAULT NULL)
RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
    INSERT INTO whodunit.statement (
        id, at, txid, op, schema_name, table_name, rows, rows_captured,
        command_tag, object_type, object_identity, query,
        db_session_user, db_current_user, client_addr, client_port, application_name,
        backend_pid, actor_id, actor_name, correlation_id, trace_id, request_method,
        request_path, client_ip, user_agent, context, context_error, details)
    SELECT p_id, statement_timestamp(), pg_current_xact_id(), p_op, p_schema, p_table,
        p_rows, p_rows_captured, p_command_tag, p_object_type, p_object_identity,
        left(current_query(), whodunit.setting_int('query_max_bytes')),
        session_user, whodunit.invoking_role(), inet_client_addr(), inet_client_port(),
        current_setting('application_name'), pg_backend_pid(), c.*, p_details
    FROM whodunit.context_columns(current_setting('whodunit.context', true)) c
$$;

-- Whether the current transaction lifted the guards of a table.
CREATE FUNCTION whodunit.guard_allowed(p_schema text, p_table text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        current_setting('whodunit.allow', true) = '*'
        OR ARRAY[p_table, p_schema || '.' || p_table]
           && string_to_array(replace(current_setting('whodunit.allow', true), ' ', ''), ','),
        false)
$$;

CREATE FUNCTION whodunit.refuse(p_guard text, p_schema text, p_table text, p_detail text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    hint text := format(
        'if this is intended, run SELECT set_config(''whodunit.allow'', %L, true) '
        'in the same transaction first', p_schema || '.' || p_table);
BEGIN
    -- The refused transaction's audit rows roll back with it: the server log keeps it.
    RAISE LOG 'whodunit guard % refused % on %.% by role % (application %): %',
        p_guard, p_detail, p_schema, p_table, whodunit.invoking_role(),
        current_setting('application_name'), left(current_query(), 1000);
    RAISE EXCEPTION 'whodunit guard "%" on %.% refused %', p_guard, p_schema, p_table, p_detail
        USING ERRCODE = 'WD001', HINT = hint;
END $$;

-- ---------------------------------------------------------------------------
-- Capture: every audited table gets its own trigger function, generated from this
-- template with its name, key and settings written in. One call per statement (the rows
-- arrive in transition tables) and one per TRUNCATE. Measured here, what a statement
-- costs is mostly fixed set-up: every expression is initialised anew in each transaction
-- (function look-up and permission check per call). So the template has static column
-- references (no JSON parsing for the key), emits the guard only for guarded tables, and
-- touches the app context only when one is set.
CREATE FUNCTION whodunit.capture_function_sql(p_rel regclass, p_keys text[],
                                              p_max_rows bigint, p_no_truncate boolean)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r        record;
    key_expr text;
    columns  text := 'id, at, txid, op, schema_name, table_name, rows, rows_captured, query, '
                     'db_session_user, db_current_user, client_addr, client_port, '
                     'application_name, backend_pid';
    values   text;
    guard    text := '';
BEGIN
    SELECT c.relkind INTO r FROM pg_class c WHERE c.oid = p_rel;
    -- Must render exactly as whodunit.key_text() does from a row image.
    -- The usual keys (integers, uuid, text) render the same as plain text: cheaper.
    key_expr := CASE
        WHEN cardinality(p_keys) = 0 THEN 'row_to_json(x)::text'
        WHEN cardinality(p_keys) = 1 AND (
            SELECT a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype,
                                  'uuid'::regtype, 'text'::regtype, 'varchar'::regtype)
            FROM pg_attribute a WHERE a.attrelid = p_rel AND a.attname = p_keys[1])
        THEN format('x.%I::text', p_keys[1])
        WHEN cardinality(p_keys) = 1 THEN format('to_json(x.%I) #>> ''{}''', p_keys[1])
        ELSE format('json_build_array(%s)::text',
                    (SELECT string_agg(format('x.%I', k), ', ') FROM unnest(p_keys) k))
    END;
    values := format(
        'sid, statement_timestamp(), pg_current_xact_id(), TG_OP, TG_TABLE_SCHEMA, '
        'TG_TABLE_NAME, n, saved, '
        'left(current_query(), %s), session_user, whodunit.invoking_role(), '
        'inet_client_addr(), inet_client_port(), current_setting(''application_name''), '
        'pg_backend_pid()',
        whodunit.setting_int('query_max_bytes'));
    IF p_max_rows IS NOT NULL THEN
        guard := format($g$
    IF TG_OP IN ('UPDATE', 'DELETE') AND n > %1$s
       AND NOT whodunit.guard_allowed(TG_TABLE_SCHEMA, TG_TABLE_NAME) THEN
        PERFORM whodunit.refuse('max_rows', TG_TABLE_SCHEMA, TG_TABLE_NAME,
                                format('%%s of %%s rows (limit %%s)', TG_OP, n, %1$s));
    END IF;$g$, p_max_rows);
    END IF;
    RETURN format($f$
CREATE OR REPLACE FUNCTION whodunit.%1$I() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $body$
-- generated by whodunit.enable_audit() for %2$s; do not edit
DECLARE
    sid   bigint := nextval('whodunit.statement_id_seq');
    n     bigint;
    saved bigint;
    ctx   text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO whodunit.row_change (statement_id, pk_hash, new_row)
        SELECT sid, hashtextextended(%3$s, 0), row_to_json(x) FROM new_rows x;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO whodunit.row_change (statement_id, pk_hash, old_row)
        SELECT sid, hashtextextended(%3$s, 0), row_to_json(x) FROM old_rows x;
    ELSIF TG_OP = 'UPDATE' THEN
        -- OLD and NEW transition rows are stored pairwise in the same order; pairing by
        -- position (not by key) keeps updates that change the key itself.
        INSERT INTO whodunit.row_change (statement_id, pk_hash, old_row, new_row)
        SELECT sid, hashtextextended(o.k, 0), o.img, nw.img
        FROM (SELECT row_number() OVER () AS rn, %3$s AS k, row_to_json(x) AS img
              FROM old_rows x) o
        JOIN (SELECT row_number() OVER () AS rn, row_to_json(x) AS img FROM new_rows x) nw
        USING (rn);
    ELSE
        IF %4$L AND NOT whodunit.guard_allowed(TG_TABLE_SCHEMA, TG_TABLE_NAME) THEN
            PERFORM whodunit.refuse('no_truncate', TG_TABLE_SCHEMA, TG_TABLE_NAME, 'TRUNCATE');
        END IF;
        -- TRUNCATE: save the rows (up to the cap) while they are still there. Named through
        -- TG_RELID, so a renamed table or schema needs no new function.
        EXECUTE 'INSERT INTO whodunit.row_change (statement_id, pk_hash, old_row) '
             || 'SELECT $1, hashtextextended(' || %3$L || ', 0), row_to_json(x) FROM '
             || TG_RELID::regclass || ' x LIMIT %5$s' USING sid;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF TG_OP = 'TRUNCATE' THEN
        saved := n;
        IF saved >= %5$s THEN
            EXECUTE 'SELECT count(*) FROM ' || TG_RELID::regclass INTO n;
        END IF;
    ELSIF n = 0 THEN
        RETURN NULL;
    END IF;%6$s
    ctx := current_setting('whodunit.context', true);
    IF ctx IS NULL OR ctx = '' THEN
        INSERT INTO whodunit.statement (%7$s) VALUES (%8$s);
    ELSE
        INSERT INTO whodunit.statement (%7$s, actor_id, actor_name, correlation_id, trace_id,
            request_method, request_path, client_ip, user_agent, context, context_error)
        SELECT %8$s, c.* FROM whodunit.context_columns(ctx) c;
    END IF;
    -- NOTIFY serialises committing transactions: only destructive statements wake the
    -- watcher, the rest is read by polling.
    IF TG_OP = 'TRUNCATE' OR (TG_OP <> 'INSERT' AND n >= %9$s) THEN
        PERFORM pg_notify('whodunit', sid::text);
    END IF;
    RETURN NULL;
END
$body$;
ALTER FUNCTION whodunit.%1$I() OWNER TO whodunit;
REVOKE ALL ON FUNCTION whodunit.%1$I() FROM PUBLIC;
$f$,
        'capture_' || p_rel::oid, p_rel, key_expr, p_no_truncate,
        -- A partitioned table holds no rows: each partition's own trigger saves them,
        -- the parent's statement only counts them.
        CASE WHEN r.relkind = 'p' THEN 0 ELSE whodunit.setting_int('snapshot_max_rows') END,
        guard, columns, values,
        whodunit.setting_int('notify_min_rows'));
END $$;

-- Save up to snapshot_max_rows rows of a table that is about to lose them all.
CREATE FUNCTION whodunit.snapshot_rows(p_sid bigint, p_rel regclass, p_keys text[],
                                       OUT total bigint, OUT saved bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
DECLARE
    cap bigint := whodunit.setting_int('snapshot_max_rows');
BEGIN
    EXECUTE format(
        'INSERT INTO whodunit.row_change (statement_id, pk_hash, old_row) '
        'SELECT $1, hashtextextended(whodunit.key_text(img, $2), 0), img '
        'FROM (SELECT row_to_json(t) AS img FROM %s t LIMIT $3) s',
        p_rel) USING p_sid, p_keys, cap;
    GET DIAGNOSTICS saved = ROW_COUNT;
    total := saved;
    IF saved >= cap THEN
        EXECUTE format('SELECT count(*) FROM %s', p_rel) INTO total;
    END IF;
END $$;

-- The trail is append-only: even its owner must switch maintenance on to change it.
CREATE FUNCTION whodunit.protect_trail() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('whodunit.maintenance', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'whodunit.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'WD002',
              HINT = 'only retention may remove trail rows, with whodunit.maintenance on';
END $$;

CREATE TRIGGER protect_trail BEFORE UPDATE OR DELETE OR TRUNCATE ON whodunit.statement
    FOR EACH STATEMENT EXECUTE FUNCTION whodunit.protect_trail();
CREATE TRIGGER protect_trail BEFORE UPDATE OR DELETE OR TRUNCATE ON whodunit.row_change
    FOR EACH STATEMENT EXECUTE FUNCTION whodunit.protect_trail();
CREATE TRIGGER protect_trail BEFORE UPDATE OR DELETE OR TRUNCATE ON whodunit.app_event
    FOR EACH STATEMENT EXECUTE FUNCTION whodunit.protect_trail();
-- ALWAYS: session_replication_role = replica must not open the trail either.
ALTER TABLE whodunit.statement ENABLE ALWAYS TRIGGER protect_trail;
ALTER TABLE whodunit.row_change ENABLE ALWAYS TRIGGER protect_trail;
ALTER TABLE whodunit.app_event ENABLE ALWAYS TRIGGER protect_trail;

-- Application events come in through this function only: the app role cannot write
-- the table, so it cannot forge the identity columns.
CREATE FUNCTION whodunit.record_app_event(
    p_action text, p_resource_type text DEFAULT NULL, p_resource_id text DEFAULT NULL,
    p_outcome text DEFAULT 'success', p_error text DEFAULT NULL,
    p_duration_ms double precision DEFAULT NULL, p_details jsonb DEFAULT NULL,
    p_context jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
    INSERT INTO whodunit.app_event (
        txid, action, resource_type, resource_id, outcome, error, duration_ms, details,
        db_session_user, db_current_user, client_addr, application_name, backend_pid,
        actor_id, actor_name, correlation_id, trace_id, request_method, request_path,
        client_ip, user_agent, context, context_error)
    SELECT pg_current_xact_id(), p_action, p_resource_type, p_resource_id, p_outcome,
        left(p_error, 8192), p_duration_ms, p_details,
        session_user, whodunit.invoking_role(), inet_client_addr(),
        current_setting('application_name'), pg_backend_pid(), c.*
    FROM whodunit.context_columns(
        coalesce(p_context::text, current_setting('whodunit.context', true))) c
    RETURNING id
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA whodunit FROM PUBLIC;
-- What is audited and guarded is no secret: 'whodunit status' works for any role.
GRANT SELECT ON whodunit.meta, whodunit.setting, whodunit.audited_schema,
    whodunit.audited_table, whodunit.guard TO PUBLIC;
GRANT EXECUTE ON FUNCTION whodunit.record_app_event(text, text, text, text, text,
    double precision, jsonb, jsonb) TO PUBLIC;

RESET ROLE;

-- ---------------------------------------------------------------------------
-- Administration: attaching triggers needs rights on the application's tables, so these
-- functions belong to the installing superuser. Only superusers may call them.

CREATE FUNCTION whodunit.enable_audit(p_rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
DECLARE
    r    record;
    keys text[];
    g    record;
    fn   text := format('whodunit.%I()', 'capture_' || p_rel::oid);
BEGIN
    SELECT c.oid, n.nspname, c.relname, c.relkind INTO r
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_rel;
    IF r.nspname IN ('pg_catalog', 'information_schema', 'pg_toast', 'whodunit') THEN
        RAISE EXCEPTION 'whodunit does not audit system or own tables (%)', p_rel
            USING ERRCODE = '42501', HINT = 'audit the application''s schemas';
    END IF;
    -- Partitions are audited too: a statement on the parent fires only the parent's
    -- statement triggers, one aimed at a partition only the partition's.
    IF r.relkind NOT IN ('r', 'p') THEN
        RETURN;
    END IF;
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO keys
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = p_rel AND i.indisprimary;
    -- No primary key: the whole row is the row's identity (key_text of no keys).
    keys := coalesce(keys, '{}');
    SELECT * INTO g FROM whodunit.guard WHERE schema_name = r.nspname AND table_name = r.relname;

    PERFORM whodunit.drop_capture_triggers(p_rel);
    EXECUTE whodunit.capture_function_sql(p_rel, keys, g.max_rows, coalesce(g.no_truncate, false));
    EXECUTE format(
        'CREATE TRIGGER whodunit_capture_insert AFTER INSERT ON %1$s '
        'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION %2$s;'
        'CREATE TRIGGER whodunit_capture_update AFTER UPDATE ON %1$s '
        'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
        'FOR EACH STATEMENT EXECUTE FUNCTION %2$s;'
        'CREATE TRIGGER whodunit_capture_delete AFTER DELETE ON %1$s '
        'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION %2$s;'
        'CREATE TRIGGER whodunit_capture_truncate BEFORE TRUNCATE ON %1$s '
        'FOR EACH STATEMENT EXECUTE FUNCTION %2$s;'
        -- ALWAYS: session_replication_role = replica must not switch auditing off.
        'ALTER TABLE %1$s ENABLE ALWAYS TRIGGER whodunit_capture_insert, '
        'ENABLE ALWAYS TRIGGER whodunit_capture_update, '
        'ENABLE ALWAYS TRIGGER whodunit_capture_delete, '
        'ENABLE ALWAYS TRIGGER whodunit_capture_truncate;'
        -- TRUNCATE and DROP TABLE snapshots read the table as the owner role.
        'GRANT SELECT ON %1$s TO whodunit;'
        'GRANT USAGE ON SCHEMA %3$I TO whodunit',
        p_rel, fn, r.nspname);
    INSERT INTO whodunit.audited_table (relid, schema_name, table_name, key_columns)
    VALUES (p_rel, r.nspname, r.relname, keys)
    ON CONFLICT (relid) DO UPDATE
    SET schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
        key_columns = EXCLUDED.key_columns;
END $$;

CREATE FUNCTION whodunit.drop_capture_triggers(p_rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT tgname FROM pg_trigger
             WHERE tgrelid = p_rel AND tgname LIKE 'whodunit\_capture\_%' LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t, p_rel);
    END LOOP;
    PERFORM whodunit.drop_capture_function(p_rel);
END $$;

-- Also called by on_sql_drop() when an audited table is dropped.
CREATE FUNCTION whodunit.drop_capture_function(p_relid oid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
BEGIN
    IF to_regprocedure(format('whodunit.%I()', 'capture_' || p_relid)) IS NOT NULL THEN
        EXECUTE format('DROP FUNCTION whodunit.%I()', 'capture_' || p_relid);
    END IF;
END $$;

CREATE FUNCTION whodunit.disable_audit(p_rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
BEGIN
    PERFORM whodunit.drop_capture_triggers(p_rel);
    EXECUTE format('REVOKE SELECT ON %s FROM whodunit', p_rel);
    DELETE FROM whodunit.audited_table WHERE relid = p_rel;
END $$;

-- Settings live in whodunit.setting; the capture functions have them written in, so a
-- change regenerates them (and a session's own SET cannot change what triggers do).
CREATE FUNCTION whodunit.configure(p_key text, p_value text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
DECLARE
    t oid;
BEGIN
    IF NOT EXISTS (SELECT FROM whodunit.setting WHERE key = p_key) THEN
        RAISE EXCEPTION 'unknown whodunit setting "%"', p_key
            USING ERRCODE = '22023',
                  HINT = 'known settings: query_max_bytes, notify_min_rows, snapshot_max_rows';
    END IF;
    IF p_value !~ '^[0-9]{1,10}$' OR p_value::bigint > 2147483647 THEN
        RAISE EXCEPTION 'whodunit setting % must be a whole number from 0 to 2147483647, got "%"',
            p_key, p_value USING ERRCODE = '22023';
    END IF;
    UPDATE whodunit.setting SET value = p_value WHERE key = p_key;
    FOR t IN SELECT relid FROM whodunit.audited_table LOOP
        PERFORM whodunit.enable_audit(t::regclass);
    END LOOP;
END $$;

CREATE FUNCTION whodunit.set_guard(p_rel regclass, p_max_rows bigint, p_no_truncate boolean,
                                   p_no_drop boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    SELECT n.nspname, c.relname INTO r
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_rel;
    IF p_max_rows IS NULL AND NOT p_no_truncate AND NOT p_no_drop THEN
        DELETE FROM whodunit.guard WHERE schema_name = r.nspname AND table_name = r.relname;
    ELSE
        INSERT INTO whodunit.guard VALUES (r.nspname, r.relname, p_max_rows, p_no_truncate, p_no_drop)
        ON CONFLICT (schema_name, table_name) DO UPDATE
        SET max_rows = EXCLUDED.max_rows, no_truncate = EXCLUDED.no_truncate,
            no_drop = EXCLUDED.no_drop;
    END IF;
    -- The row limit and the TRUNCATE flag travel as trigger arguments: re-make them.
    IF EXISTS (SELECT FROM whodunit.audited_table WHERE relid = p_rel) THEN
        PERFORM whodunit.enable_audit(p_rel);
    END IF;
END $$;

-- ---------------------------------------------------------------------------
-- DDL capture. Event-trigger functions run for every DDL command in the database.

-- Whether a DDL command was issued by whodunit's own administration functions.
-- A setting could be forged by any session; the call stack cannot.
CREATE FUNCTION whodunit.in_admin_call() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    stack text;
BEGIN
    GET DIAGNOSTICS stack = PG_CONTEXT;
    -- Our functions print unqualified (their schema is on the pinned search_path); a
    -- look-alike elsewhere prints with its schema and does not match.
    RETURN stack ~ 'function (whodunit\.)?(enable_audit|disable_audit|drop_capture_triggers|drop_capture_function|set_guard|configure)\(';
END $$;

CREATE FUNCTION whodunit.on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
DECLARE
    cmds    jsonb;
    main    record;
    c       record;
    audited boolean;
BEGIN
    IF whodunit.in_admin_call() THEN
        RETURN;
    END IF;
    SELECT jsonb_agg(jsonb_build_object('command_tag', d.command_tag, 'object_type', d.object_type,
                                        'object_identity', d.object_identity)),
           count(*) FILTER (WHERE coalesce(d.schema_name, '') NOT LIKE 'pg\_temp%'
                              AND (coalesce(d.schema_name, '') <> 'whodunit'
                                   OR current_setting('whodunit.maintenance', true)
                                      IS DISTINCT FROM 'on')) AS relevant
    INTO c
    FROM pg_event_trigger_ddl_commands() d;
    -- DROP is recorded by on_sql_drop; changes to whodunit's own objects are recorded
    -- too, except during install and uninstall (maintenance on).
    IF c.relevant = 0 THEN
        RETURN;
    END IF;
    cmds := c.jsonb_agg;
    SELECT d.* INTO main FROM pg_event_trigger_ddl_commands() d
    ORDER BY (d.command_tag = TG_TAG) DESC, (d.object_type = 'table') DESC LIMIT 1;
    PERFORM whodunit.record_statement(
        nextval('whodunit.statement_id_seq'), 'DDL', main.schema_name,
        CASE WHEN main.object_type IN ('table', 'table column')
             THEN (SELECT relname FROM pg_class WHERE oid = main.objid) END,
        0, NULL, TG_TAG, main.object_type, main.object_identity, cmds);
    IF TG_TAG IN ('GRANT', 'REVOKE', 'ALTER DEFAULT PRIVILEGES') THEN
        PERFORM pg_notify('whodunit', currval('whodunit.statement_id_seq')::text);
    END IF;
    -- New tables in an audited schema are audited at once; an altered audited table gets
    -- its triggers re-made (the key or the column list may have changed).
    FOR c IN SELECT d.objid, d.command_tag, d.schema_name
             FROM pg_event_trigger_ddl_commands() d
             WHERE d.object_type = 'table' AND d.command_tag IN
                   ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE') LOOP
        audited := EXISTS (SELECT FROM whodunit.audited_table WHERE relid = c.objid);
        IF audited OR (c.command_tag <> 'ALTER TABLE' AND EXISTS (
                SELECT FROM whodunit.audited_schema s
                WHERE s.schema_name = c.schema_name
                  AND NOT ((SELECT relname FROM pg_class WHERE oid = c.objid) = ANY (s.exclude))))
        THEN
            PERFORM whodunit.enable_audit(c.objid::regclass);
        END IF;
    END LOOP;
END $$;

-- DROP TABLE / DROP SCHEMA: the rows are gone by the time sql_drop fires, so save the
-- rows of every audited table the command may drop now; on_sql_drop keeps the saved
-- rows of the tables really dropped and removes the others.
CREATE FUNCTION whodunit.on_ddl_start() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
DECLARE
    q       text := current_query();
    t       whodunit.audited_table;
    sid     bigint;
    s       record;
    pending jsonb := '{}';
BEGIN
    -- DROP SCHEMA whodunit also drops these event triggers, so on_sql_drop would never
    -- see it: refuse it here (a heuristic on the text, as nothing else is known yet).
    IF TG_TAG = 'DROP SCHEMA' AND q ~* '\mwhodunit\M'
       AND current_setting('whodunit.maintenance', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'the whodunit schema is dropped by ''whodunit uninstall --drop-trail'' only'
            USING ERRCODE = 'WD002';
    END IF;
    FOR t IN
        SELECT a.* FROM whodunit.audited_table a
        WHERE (TG_TAG = 'DROP TABLE' AND q ~* ('\m' || whodunit.regex_escape(a.table_name) || '\M'))
           OR (TG_TAG = 'DROP SCHEMA' AND q ~* ('\m' || whodunit.regex_escape(a.schema_name) || '\M'))
    LOOP
        sid := nextval('whodunit.statement_id_seq');
        s := whodunit.snapshot_rows(sid, t.relid::regclass, t.key_columns);
        pending := pending || jsonb_build_object(t.relid::text, jsonb_build_array(sid, s.total, s.saved));
    END LOOP;
    PERFORM set_config('whodunit.pending_drop', pending::text, true);
END $$;

CREATE FUNCTION whodunit.regex_escape(p text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(p, '([.^$*+?()\[\]{}|\\-])', '\\\1', 'g')
$$;

CREATE FUNCTION whodunit.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, whodunit, pg_temp
AS $$
DECLARE
    -- Any session can set this setting; on_ddl_start rewrites it for the two commands
    -- that use it, and rows are only ever removed for statements never recorded.
    pending jsonb := CASE WHEN TG_TAG IN ('DROP TABLE', 'DROP SCHEMA')
                     THEN coalesce(nullif(current_setting('whodunit.pending_drop', true), ''), '{}')
                     ELSE '{}' END;
    d       record;
    p       jsonb;
    g       record;
    kept    bigint[] := '{}';
BEGIN
    PERFORM set_config('whodunit.pending_drop', '', true);
    IF whodunit.in_admin_call() THEN
        RETURN;
    END IF;
    FOR d IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        IF (d.schema_name = 'whodunit' OR (d.object_type = 'schema' AND d.object_name = 'whodunit'))
           AND current_setting('whodunit.maintenance', true) IS DISTINCT FROM 'on' THEN
            RAISE EXCEPTION 'whodunit objects are dropped by ''whodunit uninstall'' only (%)',
                d.object_identity USING ERRCODE = 'WD002';
        END IF;
        CONTINUE WHEN d.schema_name LIKE 'pg\_temp%' OR d.schema_name = 'whodunit'
                   OR NOT (d.original OR d.object_type = 'table');
        IF d.object_type = 'table' THEN
            SELECT * INTO g FROM whodunit.guard
            WHERE schema_name = d.schema_name AND table_name = d.object_name AND no_drop;
            IF FOUND AND NOT whodunit.guard_allowed(d.schema_name, d.object_name) THEN
                PERFORM whodunit.refuse('no_drop', d.schema_name, d.object_name, TG_TAG);
            END IF;
        END IF;
        p := pending -> d.objid::text;
        IF d.object_type = 'table' AND p IS NOT NULL THEN
            PERFORM whodunit.record_statement((p ->> 0)::bigint, 'DDL', d.schema_name,
                d.object_name, (p ->> 1)::bigint, (p ->> 2)::bigint, TG_TAG, d.object_type,
                d.object_identity, NULL);
            kept := kept || (p ->> 0)::bigint;
            PERFORM pg_notify('whodunit', (p ->> 0));
        ELSE
            PERFORM whodunit.record_statement(nextval('whodunit.statement_id_seq'), 'DDL',
                d.schema_name, CASE WHEN d.object_type = 'table' THEN d.object_name END,
                0, NULL, TG_TAG, d.object_type, d.object_identity, NULL);
            IF d.object_type = 'table' OR d.original THEN
                PERFORM pg_notify('whodunit', currval('whodunit.statement_id_seq')::text);
            END IF;
        END IF;
        IF d.object_type = 'table' AND EXISTS (SELECT FROM whodunit.audited_table WHERE relid = d.objid) THEN
            DELETE FROM whodunit.audited_table WHERE relid = d.objid;
            PERFORM whodunit.drop_capture_function(d.objid);
        END IF;
    END LOOP;
    -- Saved rows of tables the command did not drop after all (the name only appeared
    -- in its text) are removed again, within this transaction.
    IF EXISTS (SELECT FROM jsonb_each(pending) e WHERE NOT ((e.value ->> 0)::bigint = ANY (kept))) THEN
        PERFORM set_config('whodunit.maintenance', 'on', true);
        DELETE FROM whodunit.row_change rc
        WHERE rc.statement_id IN (SELECT (e.value ->> 0)::bigint FROM jsonb_each(pending) e)
          AND NOT (rc.statement_id = ANY (kept))
          AND NOT EXISTS (SELECT FROM whodunit.statement s WHERE s.id = rc.statement_id);
        PERFORM set_config('whodunit.maintenance', 'off', true);
    END IF;
END $$;

REVOKE ALL ON FUNCTION whodunit.enable_audit(regclass), whodunit.disable_audit(regclass),
    whodunit.drop_capture_triggers(regclass), whodunit.drop_capture_function(oid), whodunit.configure(text, text),
    whodunit.set_guard(regclass, bigint, boolean, boolean) FROM PUBLIC;

-- The event triggers themselves are (re)made by every install: sql/event_triggers.sql.

INSERT INTO whodunit.meta (key, value) VALUES ('schema_version', '1')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
