-- billhook 0.7.0 → 0.8.0 (ALTER EXTENSION billhook UPDATE): tenant isolation with row-level
-- security (billhook.administration_id, billhook.enable_tenant_isolation, the views keeping to the
-- caller's administration), the roles billhook_app and billhook_reader (billhook.create_roles),
-- and billhook.workers() for the workers of billhook.databases.
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.8.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

-- Every configured database's worker (billhook.databases).
CREATE FUNCTION billhook.workers() RETURNS TABLE (
    "database" text,
    "running" bool,
    "pid" int,
    "started_at" timestamp with time zone,
    "starts" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'workers_wrapper';

-- The administration a session works in: billhook.administration_id, which the application sets
-- per session or per transaction (SET LOCAL). NULL when it is not set; 22023 naming it when it is
-- not an id.
CREATE FUNCTION billhook.current_administration_id() RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    setting text := nullif(btrim(current_setting('billhook.administration_id', true)), '');
BEGIN
    IF setting !~ '^[0-9]{1,18}$' THEN
        RAISE EXCEPTION 'invalid billhook.administration_id "%"', setting
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Set it to the id of an administration (billhook.administrations), or to '''' for none.';
    END IF;
    RETURN setting::bigint;
END
$$;

-- The default of every administration_id column: the session's administration, else 1.
CREATE FUNCTION billhook.default_administration_id() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE RETURN coalesce(billhook.current_administration_id(), 1);

ALTER TABLE billhook.customers ALTER COLUMN administration_id SET DEFAULT billhook.default_administration_id();
ALTER TABLE billhook.invoices ALTER COLUMN administration_id SET DEFAULT billhook.default_administration_id();
ALTER TABLE billhook.invoice_lines ALTER COLUMN administration_id SET DEFAULT billhook.default_administration_id();
ALTER TABLE billhook.quotations ALTER COLUMN administration_id SET DEFAULT billhook.default_administration_id();
ALTER TABLE billhook.quotation_lines ALTER COLUMN administration_id SET DEFAULT billhook.default_administration_id();
ALTER TABLE billhook.expenses ALTER COLUMN administration_id SET DEFAULT billhook.default_administration_id();
ALTER TABLE billhook.recurring_invoices ALTER COLUMN administration_id SET DEFAULT billhook.default_administration_id();
ALTER TABLE billhook.recurring_invoice_lines ALTER COLUMN administration_id SET DEFAULT billhook.default_administration_id();
ALTER TABLE billhook.webhooks ALTER COLUMN administration_id SET DEFAULT billhook.default_administration_id();
COMMENT ON TABLE billhook.administrations IS
    'Tenants. Administration 1 is created with the extension and is the default of every administration_id column when billhook.administration_id is not set.';

-- Tenant isolation (billhook.enable_tenant_isolation, sql/tenancy.sql) filters rows by these.
-- The administration of a session under tenant isolation; 42501 when it has none, so that a
-- session which forgot to set it fails rather than seeing nothing.
CREATE FUNCTION billhook.isolated_administration_id() RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    administration_id bigint := billhook.current_administration_id();
BEGIN
    IF administration_id IS NULL THEN
        RAISE EXCEPTION 'billhook.administration_id is not set'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Tenant isolation is on: SET billhook.administration_id (SET LOCAL for one transaction) to your administration''s id.';
    END IF;
    RETURN administration_id;
END
$$;

-- True when tenant isolation restricts the current role: it is on and the role is neither a
-- superuser, nor the tables' owner, nor BYPASSRLS. The views run with their owner's rights, which
-- bypass row-level security, so they filter by this themselves.
CREATE FUNCTION billhook.tenant_isolation_applies() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT row_security_active('billhook.webhooks') $$;

-- The webhooks of the session's administration: the tenant of a delivery, its attempts and
-- counters. Definer's rights, so that reading those needs no rights on the webhooks' secrets.
CREATE FUNCTION billhook.isolated_webhook_ids() RETURNS bigint[]
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(w.id), '{}') FROM billhook.webhooks AS w
    WHERE w.administration_id = billhook.isolated_administration_id()
$$;

-- Unless verify is false, the URL must answer a signed webhook.verification push with HTTP 200
-- (Moneybird's registration check); otherwise 22023 and nothing is saved. administration_id NULL:
-- the session's (billhook.administration_id), else 1.
CREATE OR REPLACE FUNCTION billhook.create_webhook(
    url text,
    enabled_events text[] DEFAULT NULL,
    administration_id bigint DEFAULT NULL,
    enabled boolean DEFAULT true,
    verify boolean DEFAULT true,
    headers jsonb DEFAULT '{}',
    retry_schedule text DEFAULT NULL,
    request_timeout interval DEFAULT NULL,
    max_in_flight integer DEFAULT NULL,
    max_requests_per_second double precision DEFAULT NULL,
    ordering text DEFAULT 'none',
    payload_format text DEFAULT 'billhook'
) RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    created billhook.webhooks;
BEGIN
    INSERT INTO billhook.webhooks (url, enabled_events, administration_id, enabled, headers, retry_schedule,
                                   request_timeout, max_in_flight, max_requests_per_second, ordering,
                                   payload_format)
    VALUES (create_webhook.url, coalesce(create_webhook.enabled_events, '{}'),
            coalesce(create_webhook.administration_id, billhook.default_administration_id()), create_webhook.enabled,
            coalesce(create_webhook.headers, '{}'),
            create_webhook.retry_schedule, create_webhook.request_timeout, create_webhook.max_in_flight,
            create_webhook.max_requests_per_second, coalesce(create_webhook.ordering, 'none'),
            coalesce(create_webhook.payload_format, 'billhook'))
    RETURNING * INTO created;
    IF verify THEN
        PERFORM billhook.verify_endpoint(created.id, created.administration_id, created.url, created.token,
                                         created.signing_secret, created.enabled_events, created.headers,
                                         billhook.json_time(clock_timestamp()));
    END IF;
    RETURN created;
END
$$;
COMMENT ON FUNCTION billhook.create_webhook(text, text[], bigint, boolean, boolean, jsonb, text, interval, integer,
                                     double precision, text, text) IS
    'Registers a webhook after checking that its URL answers 200; returns it with its token and signing secret.';

-- The views run with their owner's rights (reading the secrets they leave out), so they keep to
-- the caller's administration under tenant isolation themselves; security_barrier keeps a
-- caller's own functions from seeing the rows they leave out.
CREATE OR REPLACE VIEW billhook.webhook_overview WITH (security_barrier) AS
SELECT w.id, w.administration_id, billhook.redact_url(w.url) AS url, w.enabled, w.enabled_events, w.subscribed_events,
       w.last_http_status, w.last_http_body,
       count(d.id) FILTER (WHERE d.status = 'pending') AS pending_deliveries,
       count(d.id) FILTER (WHERE d.status = 'succeeded') AS succeeded_deliveries,
       count(d.id) FILTER (WHERE d.status = 'failed') AS failed_deliveries,
       w.created_at, w.updated_at,
       ARRAY(SELECT name FROM jsonb_object_keys(w.headers) AS h(name) ORDER BY lower(name)) AS header_names,
       w.retry_schedule, w.request_timeout, w.max_in_flight, w.max_requests_per_second, w.ordering,
       w.payload_format, w.exact_events
FROM billhook.webhooks AS w
LEFT JOIN billhook.deliveries AS d ON d.webhook_id = w.id
WHERE NOT (SELECT billhook.tenant_isolation_applies())
   OR w.administration_id = (SELECT billhook.isolated_administration_id())
GROUP BY w.id;
COMMENT ON VIEW billhook.webhook_overview IS
    'Webhooks without their token, secret, URL credentials and header values, with delivery counts.';

-- health: healthy, failing (its last attempts failed), auto_disabled (billhook disabled it; its
-- deliveries are held) or disabled (by hand). earliest_disable_at: when billhook disables a failing
-- webhook at the soonest, if it has billhook.disable_after_failures failed attempts in a row by then.
CREATE OR REPLACE VIEW billhook.webhook_health WITH (security_barrier) AS
SELECT w.id, w.administration_id, billhook.redact_url(w.url) AS url,
       CASE WHEN w.enabled AND w.consecutive_failures > 0 THEN 'failing'
            WHEN w.enabled THEN 'healthy'
            WHEN w.disabled_at IS NOT NULL THEN 'auto_disabled'
            ELSE 'disabled' END AS health,
       w.enabled, w.consecutive_failures, w.failing_since, w.last_success_at, w.last_http_status,
       w.disabled_at, w.disabled_reason,
       (SELECT count(*) FROM billhook.deliveries AS d WHERE d.webhook_id = w.id AND d.status = 'pending')
           AS pending_deliveries,
       CASE WHEN w.enabled AND w.failing_since IS NOT NULL AND disable_after > interval '0'
            THEN greatest(w.failing_since + disable_after, now()) END AS earliest_disable_at
FROM billhook.webhooks AS w,
     LATERAL (SELECT current_setting('billhook.disable_after', true)::interval AS disable_after) AS setting
WHERE NOT (SELECT billhook.tenant_isolation_applies())
   OR w.administration_id = (SELECT billhook.isolated_administration_id());
COMMENT ON VIEW billhook.webhook_health IS
    'Each webhook''s health: its failing streak, last success, and whether billhook disabled it and why.';

CREATE OR REPLACE VIEW billhook.delivery_status WITH (security_barrier) AS
SELECT d.id, d.webhook_id, billhook.redact_url(w.url) AS url, d.event_id, e.event_type, e.entity_type, e.entity_id, d.status,
       d.attempts, d.next_attempt_at, d.last_attempt_at, d.last_http_status, d.last_error,
       d.last_duration_ms, d.delivered_at, d.delivered_at - e.occurred_at AS latency, d.idempotency_key
FROM billhook.deliveries AS d
JOIN billhook.events AS e ON e.id = d.event_id
JOIN billhook.webhooks AS w ON w.id = d.webhook_id
WHERE NOT (SELECT billhook.tenant_isolation_applies())
   OR w.administration_id = (SELECT billhook.isolated_administration_id());
COMMENT ON VIEW billhook.delivery_status IS 'Deliveries with their event and webhook, for reporting.';

-- Tenant isolation and the least-privilege roles (README, "Tenants and roles").

-- The tables tenant isolation covers and the row each role under it may see and write: one of
-- the session's administration (billhook.administration_id), by the table's administration_id, or
-- through its webhook. enabled: the table has row-level security on and billhook's policy.
CREATE FUNCTION billhook.tenant_isolation()
RETURNS TABLE (table_name regclass, row_filter text, enabled boolean)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.table_name,
           CASE WHEN t.table_name = 'billhook.administrations'::regclass
                THEN 'id = (SELECT billhook.isolated_administration_id())'
                WHEN EXISTS (SELECT FROM pg_attribute AS a
                             WHERE a.attrelid = t.table_name AND a.attname = 'administration_id')
                THEN 'administration_id = (SELECT billhook.isolated_administration_id())'
                ELSE 'webhook_id = ANY ((SELECT billhook.isolated_webhook_ids())::bigint[])' END,
           c.relrowsecurity AND EXISTS (SELECT FROM pg_policy AS p
                                        WHERE p.polrelid = t.table_name AND p.polname = 'tenant_isolation')
    FROM unnest('{billhook.administrations, billhook.customers, billhook.invoices, billhook.invoice_lines,
                  billhook.quotations, billhook.quotation_lines, billhook.expenses, billhook.recurring_invoices,
                  billhook.recurring_invoice_lines, billhook.webhooks, billhook.webhook_health_log,
                  billhook.events, billhook.deliveries, billhook.delivery_attempts,
                  billhook.delivery_counters}'::regclass[]) WITH ORDINALITY AS t (table_name, position)
    JOIN pg_class AS c ON c.oid = t.table_name
    ORDER BY t.position
$$;

-- Whether tenant isolation is on, kept as a row so that pg_dump keeps it: pg_dump leaves out the
-- policies of an extension's tables, and restoring the row (replica session or not) puts them
-- back through the trigger below.
CREATE TABLE billhook.tenant_isolation_settings (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    enabled_at  timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('billhook.tenant_isolation_settings', '');

-- Row-level security and the policy tenant_isolation (for reading and writing alike) on every
-- table of billhook.tenant_isolation() while the row exists; neither once it is gone.
-- (client_min_messages: DROP POLICY IF EXISTS is not news.)
CREATE FUNCTION billhook.apply_tenant_isolation() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM billhook.tenant_isolation() LOOP
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %s', t.table_name);
        IF TG_OP = 'DELETE' THEN
            EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', t.table_name);
        ELSE
            EXECUTE format('CREATE POLICY tenant_isolation ON %s USING (%s)', t.table_name, t.row_filter);
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.table_name);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
CREATE TRIGGER apply_tenant_isolation AFTER INSERT OR UPDATE OR DELETE ON billhook.tenant_isolation_settings
    FOR EACH ROW EXECUTE FUNCTION billhook.apply_tenant_isolation();
ALTER TABLE billhook.tenant_isolation_settings ENABLE ALWAYS TRIGGER apply_tenant_isolation;

-- Turns tenant isolation on: a role under it sees and writes only the rows of its session's
-- administration. Superusers, the tables' owner and BYPASSRLS roles (the worker among them) keep
-- seeing everything. Returns the tables; safe to run again.
CREATE FUNCTION billhook.enable_tenant_isolation() RETURNS SETOF regclass
LANGUAGE sql AS $$
    INSERT INTO billhook.tenant_isolation_settings DEFAULT VALUES
    ON CONFLICT (singleton) DO UPDATE SET enabled_at = excluded.enabled_at;
    SELECT table_name FROM billhook.tenant_isolation();
$$;

CREATE FUNCTION billhook.disable_tenant_isolation() RETURNS SETOF regclass
LANGUAGE sql AS $$
    DELETE FROM billhook.tenant_isolation_settings;
    SELECT table_name FROM billhook.tenant_isolation();
$$;

-- The roles an application and its analysts are granted (GRANT billhook_app TO <login role>):
-- billhook_reader reads documents, events, deliveries, attempts, the reporting views and the
-- webhooks without their URL, token, secrets and headers; billhook_app is a reader that also
-- writes documents and manages webhooks through the API (it reads its webhooks' secrets: it hands
-- them to the receivers). Creates the roles if the cluster has none yet and grants them this
-- database's objects; run it again after ALTER EXTENSION billhook UPDATE, for new columns.
CREATE FUNCTION billhook.create_roles() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    documents constant text[] := ARRAY['customers', 'invoices', 'invoice_lines', 'quotations', 'quotation_lines',
                                       'expenses', 'recurring_invoices', 'recurring_invoice_lines'];
    secret_webhook_columns constant name[] := ARRAY['url', 'token', 'signing_secret', 'previous_signing_secret',
                                                    'headers'];
    managed_webhook_columns constant text := 'url, enabled_events, enabled, disabled_at, disabled_reason, headers, '
        'retry_schedule, request_timeout, max_in_flight, max_requests_per_second, ordering, payload_format, '
        'token, signing_secret, previous_signing_secret, previous_secret_expires_at';
    table_name text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'billhook_reader') THEN
        CREATE ROLE billhook_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'billhook_app') THEN
        CREATE ROLE billhook_app NOLOGIN;
    END IF;
    GRANT billhook_reader TO billhook_app;
    GRANT USAGE ON SCHEMA billhook TO billhook_reader;
    GRANT SELECT ON billhook.administrations, billhook.events, billhook.deliveries, billhook.delivery_attempts,
        billhook.delivery_counters, billhook.webhook_health_log, billhook.moneybird_events,
        billhook.webhook_overview, billhook.webhook_health, billhook.delivery_status TO billhook_reader;
    EXECUTE format('GRANT SELECT (%s) ON billhook.webhooks TO billhook_reader',
                   (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute AS a
                    WHERE a.attrelid = 'billhook.webhooks'::regclass AND a.attnum > 0 AND NOT a.attisdropped
                      AND a.attname <> ALL (secret_webhook_columns)));
    FOREACH table_name IN ARRAY documents LOOP
        EXECUTE format('GRANT SELECT ON billhook.%I TO billhook_reader', table_name);
        EXECUTE format('GRANT INSERT, UPDATE, DELETE ON billhook.%I TO billhook_app', table_name);
        EXECUTE format('GRANT USAGE ON SEQUENCE %s TO billhook_app',
                       pg_get_serial_sequence(format('billhook.%I', table_name), 'id'));
    END LOOP;
    GRANT SELECT, INSERT, DELETE ON billhook.webhooks TO billhook_app;
    EXECUTE format('GRANT UPDATE (%s) ON billhook.webhooks TO billhook_app', managed_webhook_columns);
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO billhook_app', pg_get_serial_sequence('billhook.webhooks', 'id'));
    -- redeliver and replay.
    GRANT UPDATE (status, attempts, next_attempt_at) ON billhook.deliveries TO billhook_app;
    GRANT EXECUTE ON FUNCTION billhook.verify_endpoint(bigint, bigint, text, text, text, text[], jsonb, text)
        TO billhook_app;
END
$$;

REVOKE ALL ON FUNCTION billhook.enable_tenant_isolation(), billhook.disable_tenant_isolation(),
    billhook.apply_tenant_isolation(), billhook.create_roles() FROM PUBLIC;
