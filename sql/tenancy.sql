-- Tenant isolation and the least-privilege roles (docs/operations.md, "Tenants and roles").

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
    tables text := (SELECT string_agg(i.table_name::text, ', ') FROM billhook.tenant_isolation() AS i);
BEGIN
    -- Every table at once, and none held while waiting: a round of the worker holds some of them
    -- and asks for others, so DDL taking them one by one could deadlock with it. Ten seconds at
    -- most, then 55P03.
    PERFORM billhook.lock_without_queueing(format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tables),
                                           'apply tenant isolation', 10);
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
                                                    'headers', 'signing_key', 'previous_signing_key'];
    managed_webhook_columns constant text := 'url, enabled_events, enabled, disabled_at, disabled_reason, headers, '
        'retry_schedule, request_timeout, max_in_flight, max_requests_per_second, ordering, payload_format, '
        'payload, filter, signature, signing_key, previous_signing_key, previous_key_expires_at, '
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
    -- Every column but the id: an id chosen ahead of its sequence would make another
    -- administration's next insert fail. Table-wide INSERT and UPDATE an earlier version granted
    -- go first.
    FOREACH table_name IN ARRAY documents || ARRAY['webhooks'] LOOP
        EXECUTE format('REVOKE INSERT, UPDATE ON billhook.%I FROM billhook_app', table_name);
        EXECUTE format('GRANT INSERT (%s) ON billhook.%I TO billhook_app',
                       (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute AS a
                        WHERE a.attrelid = format('billhook.%I', table_name)::regclass AND a.attnum > 0
                          AND NOT a.attisdropped AND a.attname <> 'id'), table_name);
    END LOOP;
    FOREACH table_name IN ARRAY documents LOOP
        EXECUTE format('GRANT SELECT ON billhook.%I TO billhook_reader', table_name);
        EXECUTE format('GRANT UPDATE (%s), DELETE ON billhook.%I TO billhook_app',
                       (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute AS a
                        WHERE a.attrelid = format('billhook.%I', table_name)::regclass AND a.attnum > 0
                          AND NOT a.attisdropped AND a.attname <> 'id'), table_name);
        EXECUTE format('GRANT USAGE ON SEQUENCE %s TO billhook_app',
                       pg_get_serial_sequence(format('billhook.%I', table_name), 'id'));
    END LOOP;
    GRANT SELECT, DELETE ON billhook.webhooks TO billhook_app;
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
