-- billhook 0.11.0 → 0.12.0 (ALTER EXTENSION billhook UPDATE): fault isolation, least privilege and
-- tenant integrity (see CHANGELOG.md).
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.12.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

-- Webhook settings: max_requests_per_second is at least 0.001 (check_webhook_settings, in the
-- library). A lower rate made the worker's claim compute a lease no timestamp can hold; such
-- webhooks get the lowest rate allowed, and the DBA a NOTICE naming them.
DO $$
DECLARE
    raised bigint[];
BEGIN
    WITH slow AS (
        UPDATE billhook.webhooks SET max_requests_per_second = 0.001
        WHERE max_requests_per_second < 0.001 OR max_requests_per_second = 'NaN'
        RETURNING id
    )
    SELECT array_agg(id ORDER BY id) INTO raised FROM slow;
    IF raised IS NOT NULL THEN
        RAISE NOTICE 'billhook: webhooks % had max_requests_per_second below 0.001; now 0.001', raised;
    END IF;
END
$$;

-- Tenant integrity: every reference between tenant rows is a composite foreign key (id,
-- administration_id), so no row points into another administration (foreign keys are checked
-- without row-level security). A reference 0.11.0 let cross administrations stops the update
-- (23503) with the rows and the query that finds them: billhook's own functions never wrote one,
-- so each is a tenant's doing or an application's bug, and which side is wrong (the reference, or
-- the row's administration) is for the DBA to decide, not to be erased unseen. The update is one
-- transaction: until then 0.11.0 stays installed and working.
DO $$
DECLARE
    finder text;
    crossing bigint;
    listed text;
BEGIN
    SELECT string_agg(format(
               'SELECT %1$L AS table_name, r.id, r.administration_id, %2$L AS column_name, r.%2$I AS referenced_id,'
               ' t.administration_id AS referenced_administration_id'
               ' FROM billhook.%1$I AS r JOIN billhook.%3$I AS t ON t.id = r.%2$I'
               ' WHERE t.administration_id <> r.administration_id',
               v.table_name, v.column_name, v.referenced_table),
           ' UNION ALL ')
    INTO finder
    FROM (VALUES ('quotations', 'invoice_id', 'invoices'),
                 ('recurring_invoices', 'last_invoice_id', 'invoices'),
                 ('invoices', 'recurring_invoice_id', 'recurring_invoices')) AS v(table_name, column_name, referenced_table);
    EXECUTE format('SELECT count(*), string_agg(format(''billhook.%%s %%s (administration %%s): %%s %%s is administration %%s''''s'','
                   ' table_name, id, administration_id, column_name, referenced_id, referenced_administration_id), E''\n'''
                   ' ORDER BY table_name, id, column_name) FILTER (WHERE n <= 20)'
                   ' FROM (SELECT f.*, row_number() OVER (ORDER BY table_name, id, column_name) AS n FROM (%s) AS f) AS numbered',
                   finder)
    INTO crossing, listed;
    IF crossing > 0 THEN
        RAISE EXCEPTION '% row(s) reference a row of another administration, which billhook 0.12.0 refuses', crossing
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = listed || CASE WHEN crossing > 20 THEN format(E'\n… and %s more', crossing - 20) ELSE '' END,
                  HINT = 'Set each reference to NULL or to a row of its own administration (or move the row), then run '
                         'ALTER EXTENSION billhook UPDATE again. They all are: ' || finder;
    END IF;
END
$$;
-- The health log is billhook's own record of its webhook, written with the webhook's
-- administration: rows of a webhook an owner has since moved to another administration follow it.
UPDATE billhook.webhook_health_log AS l SET administration_id = w.administration_id
FROM billhook.webhooks AS w
WHERE w.id = l.webhook_id AND w.administration_id <> l.administration_id;
ALTER TABLE billhook.webhooks ADD CONSTRAINT webhooks_id_administration_id_key UNIQUE (id, administration_id);
ALTER TABLE billhook.quotations DROP CONSTRAINT quotations_invoice_id_fkey,
    ADD CONSTRAINT quotations_invoice_id_administration_id_fkey FOREIGN KEY (invoice_id, administration_id)
        REFERENCES billhook.invoices (id, administration_id) ON DELETE SET NULL (invoice_id);
ALTER TABLE billhook.recurring_invoices DROP CONSTRAINT recurring_invoices_last_invoice_id_fkey,
    ADD CONSTRAINT recurring_invoices_last_invoice_id_administration_id_fkey FOREIGN KEY (last_invoice_id, administration_id)
        REFERENCES billhook.invoices (id, administration_id) ON DELETE SET NULL (last_invoice_id);
ALTER TABLE billhook.invoices DROP CONSTRAINT invoices_recurring_invoice_id_fkey,
    ADD CONSTRAINT invoices_recurring_invoice_id_administration_id_fkey FOREIGN KEY (recurring_invoice_id, administration_id)
        REFERENCES billhook.recurring_invoices (id, administration_id) ON DELETE SET NULL (recurring_invoice_id);
ALTER TABLE billhook.webhook_health_log DROP CONSTRAINT webhook_health_log_webhook_id_fkey,
    ADD CONSTRAINT webhook_health_log_webhook_id_administration_id_fkey FOREIGN KEY (webhook_id, administration_id)
        REFERENCES billhook.webhooks (id, administration_id) ON DELETE CASCADE ON UPDATE CASCADE;
COMMENT ON CONSTRAINT webhooks_id_administration_id_key ON billhook.webhooks IS
    'The key rows of an administration refer to its webhooks by, so that they cannot refer to another''s.';
COMMENT ON CONSTRAINT quotations_invoice_id_administration_id_fkey ON billhook.quotations IS
    'The invoice is of the quotation''s own administration; deleting it clears invoice_id.';
COMMENT ON CONSTRAINT recurring_invoices_last_invoice_id_administration_id_fkey ON billhook.recurring_invoices IS
    'The last generated invoice is of the schedule''s own administration; deleting it clears last_invoice_id.';
COMMENT ON CONSTRAINT invoices_recurring_invoice_id_administration_id_fkey ON billhook.invoices IS
    'An invoice names a schedule of its own administration only, so no other administration can take one of its periods; deleting the schedule clears recurring_invoice_id.';
COMMENT ON CONSTRAINT webhook_health_log_webhook_id_administration_id_fkey ON billhook.webhook_health_log IS
    'A webhook''s log is of the webhook''s administration, and follows it to another one.';

-- Values the worker computes from stay in range whatever an application writes: CHECKs on
-- deliveries (attempts, next_attempt_at) and on webhooks' health columns. Rows outside them
-- (written by hand) are brought inside first: attempts clamped, infinite due times due now,
-- infinite health times cleared.
UPDATE billhook.deliveries SET attempts = least(greatest(attempts, 0), 1000000)
WHERE attempts NOT BETWEEN 0 AND 1000000;
UPDATE billhook.deliveries SET next_attempt_at = now() WHERE NOT isfinite(next_attempt_at);
ALTER TABLE billhook.deliveries
    ADD CONSTRAINT deliveries_attempts_check CHECK (attempts BETWEEN 0 AND 1000000),
    ADD CONSTRAINT deliveries_next_attempt_at_check CHECK (isfinite(next_attempt_at));
UPDATE billhook.webhooks
SET consecutive_failures = greatest(consecutive_failures, 0),
    failing_since = CASE WHEN isfinite(failing_since) THEN failing_since END,
    last_success_at = CASE WHEN isfinite(last_success_at) THEN last_success_at END,
    disabled_at = CASE WHEN isfinite(disabled_at) THEN disabled_at END,
    created_at = CASE WHEN isfinite(created_at) THEN created_at ELSE now() END
WHERE consecutive_failures < 0 OR NOT isfinite(failing_since) OR NOT isfinite(last_success_at)
   OR NOT isfinite(disabled_at) OR NOT isfinite(created_at);
ALTER TABLE billhook.webhooks ADD CONSTRAINT webhooks_health_check
    CHECK (consecutive_failures >= 0 AND isfinite(failing_since) AND isfinite(last_success_at)
           AND isfinite(disabled_at) AND isfinite(created_at));

-- Outside UTF8 the worker cannot send what it reads; a new install refuses such a database.
DO $$
BEGIN
    IF pg_catalog.current_setting('server_encoding') <> 'UTF8' THEN
        RAISE WARNING 'billhook needs a UTF8 database; this one is %: text the worker cannot read as UTF8 '
                      'quarantines its webhook or delivery', pg_catalog.current_setting('server_encoding');
    END IF;
END
$$;

-- Erasure reaches every copy; restored events get their fan-out (issue 29, points 4 and 6).
-- Erasure: an entity's JSON nested in other entities' events (billhook.nested_entities) is
-- replaced with the same {"id", "erased_at"} as its own events, and the response bodies of the
-- pushes of those events are blanked too. Entities erased under 0.11.0 are erased again below, so
-- that their nested copies go as well (their own events keep the time of the first erasure).
CREATE FUNCTION billhook.nested_entities() RETURNS TABLE (entity_type text, path text[], nested_type text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    VALUES ('Invoice', '{customer}'::text[], 'Customer'),
           ('Quotation', '{customer}', 'Customer'),
           ('RecurringInvoice', '{customer}', 'Customer')
$$;
COMMENT ON FUNCTION billhook.nested_entities() IS
    'Where an entity''s JSON nests another entity''s (kind, path of keys, nested kind): the copies billhook.erase_entity reaches.';

CREATE FUNCTION billhook.erasure_marker(entity jsonb, entity_id bigint) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN jsonb_build_object('id', entity_id::text, 'erased_at',
    CASE WHEN entity - 'id' - 'erased_at' = '{}'
              AND entity->>'erased_at' ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$'
         THEN entity->'erased_at'
         ELSE to_jsonb(billhook.json_time(now())) END);
COMMENT ON FUNCTION billhook.erasure_marker(jsonb, bigint) IS
    'What billhook.erase_entity leaves of an entity''s JSON: {"id", "erased_at"} (an earlier erasure keeps its time).';

CREATE OR REPLACE FUNCTION billhook.erase_entity(entity_type text, entity_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    only_administration bigint;
    erased bigint;
    -- The events holding the entity's JSON: its own and those nesting it.
    holders bigint[];
    place record;
BEGIN
    IF entity_id IS NULL OR NOT (
           entity_type IN (SELECT t.entity_type FROM billhook.event_tables() AS t)
           OR entity_type IN (SELECT t.entity_type FROM billhook.tracked_tables AS t)) THEN
        RAISE EXCEPTION 'invalid entity %/%', coalesce(entity_type, 'NULL'), coalesce(entity_id::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Name an entity type of billhook.events (Customer, Invoice, Quotation, Expense, '
                         'RecurringInvoice or a tracked table''s) and an id.';
    END IF;
    IF EXISTS (SELECT FROM billhook.tenant_isolation_settings)
       AND NOT EXISTS (SELECT FROM pg_roles AS r
                       WHERE r.rolname = session_user
                         AND (r.rolsuper OR r.rolbypassrls
                              OR r.oid = (SELECT c.relowner FROM pg_class AS c WHERE c.oid = 'billhook.events'::regclass)))
    THEN
        only_administration := billhook.isolated_administration_id();
    END IF;
    WITH own AS (
        UPDATE billhook.events AS e SET entity = billhook.erasure_marker(e.entity, e.entity_id)
        WHERE e.entity_type = erase_entity.entity_type AND e.entity_id = erase_entity.entity_id
          AND (only_administration IS NULL OR e.administration_id = only_administration)
        RETURNING e.id
    )
    SELECT count(*), coalesce(array_agg(own.id), '{}') INTO erased, holders FROM own;

    -- Every kind and path where the entity's kind is nested, through kinds nested in others.
    FOR place IN
        WITH RECURSIVE nesting (kind, path) AS (
            SELECT n.entity_type, n.path FROM billhook.nested_entities() AS n
            WHERE n.nested_type = erase_entity.entity_type
            UNION
            SELECT n.entity_type, n.path || nesting.path
            FROM nesting JOIN billhook.nested_entities() AS n ON n.nested_type = nesting.kind
            -- A kind nested in itself, however indirectly, would nest without end.
            WHERE cardinality(nesting.path) < 32
        )
        SELECT nesting.kind, nesting.path FROM nesting
    LOOP
        WITH nesting_events AS (
            UPDATE billhook.events AS e
            SET entity = jsonb_set(e.entity, place.path,
                                   billhook.erasure_marker(e.entity #> place.path, erase_entity.entity_id))
            WHERE e.entity_type = place.kind
              AND e.entity #>> (place.path || '{id}'::text[]) = erase_entity.entity_id::text
              AND (only_administration IS NULL OR e.administration_id = only_administration)
            RETURNING e.id
        )
        SELECT holders || array_agg(n.id) INTO holders FROM nesting_events AS n;
    END LOOP;

    WITH pushes AS (
        SELECT d.id, d.webhook_id FROM billhook.deliveries AS d WHERE d.event_id = ANY (holders)
    ), erased_webhook_bodies AS (
        -- A webhook shows its last response: blanked when it answered one of these pushes. The
        -- join reads the attempts as they were: every part of the statement sees the same snapshot.
        UPDATE billhook.webhooks AS w SET last_http_body = NULL
        FROM pushes AS p JOIN billhook.delivery_attempts AS a ON a.delivery_id = p.id
        WHERE w.id = p.webhook_id AND w.last_http_body = a.response_body
    ), erased_deliveries AS (
        UPDATE billhook.deliveries AS d SET last_http_body = NULL
        FROM pushes AS p WHERE d.id = p.id AND d.last_http_body IS NOT NULL
    )
    UPDATE billhook.delivery_attempts AS a SET response_body = NULL
    FROM pushes AS p WHERE a.delivery_id = p.id AND a.response_body IS NOT NULL;
    RETURN erased;
END
$$;

-- Restore: fan_out_state is dumped (progress and key namespace); a restored event the dumping
-- cluster's fan-out had not passed is owed its deliveries here (billhook.fan_out_owed, created
-- below), under the keys it would have had, whichever of events, progress and webhooks a restore
-- loads last.
ALTER TABLE billhook.fan_out_state
    ADD COLUMN restored_done pg_snapshot,
    ADD COLUMN restored_pass pg_snapshot,
    ADD COLUMN restored_after_transaction_id xid8,
    ADD COLUMN restored_after_event_id bigint;
COMMENT ON COLUMN billhook.fan_out_state.restored_done IS
    'restored_*: where the fan-out of the cluster this database was restored from stood when it was dumped (its done, pass, after_*); see billhook.mark_event_restored.';

CREATE FUNCTION billhook.fan_out_passed(transaction_id xid8, event_id bigint, done pg_snapshot, pass pg_snapshot,
                                        after_transaction_id xid8, after_event_id bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg_visible_in_snapshot(transaction_id, done)
    OR coalesce(pg_visible_in_snapshot(transaction_id, pass)
                AND (transaction_id, event_id) <= (after_transaction_id, after_event_id), false);
COMMENT ON FUNCTION billhook.fan_out_passed(xid8, bigint, pg_snapshot, pg_snapshot, xid8, bigint) IS
    'Whether a fan-out standing at (done, pass, after_*) had made the deliveries of the event (transaction_id, id).';

CREATE TABLE billhook.restored_events (
    event_id       bigint PRIMARY KEY REFERENCES billhook.events ON DELETE CASCADE,
    transaction_id xid8
);
COMMENT ON TABLE billhook.restored_events IS
    'Restored events: awaiting their dump''s fan-out progress (with their dumped transaction id), or judged not fanned out by it (no transaction id), their deliveries owed to every webhook restored.';

-- The webhooks an event goes to, as the fan-out chooses them before filters (billhook.fan_out):
-- its administration's webhooks that are enabled (or held by billhook), subscribe to its type and
-- existed when it occurred.
CREATE FUNCTION billhook.subscribers(administration_id bigint, event_type text, occurred_at timestamptz)
RETURNS TABLE (webhook_id bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT w.id FROM billhook.webhooks AS w
    WHERE w.administration_id = subscribers.administration_id AND (w.enabled OR w.disabled_at IS NOT NULL)
      AND subscribers.event_type = ANY (w.subscribed_events) AND w.created_at <= subscribers.occurred_at
$$;
COMMENT ON FUNCTION billhook.subscribers(bigint, text, timestamptz) IS
    'The webhooks an event of this administration, type and time goes to, before filters: enabled (or held by billhook), subscribed, existing when it occurred.';

-- A webhook restored (in a replica session) after events its dump had not fanned out is owed their
-- deliveries too.
CREATE FUNCTION billhook.owe_restored_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT a.backend_type FROM pg_stat_get_activity(pg_backend_pid()) AS a) = 'logical replication worker' THEN
        RETURN NULL;
    END IF;
    -- Waits for events and progress being restored in other sessions (a parallel restore), whose
    -- judgments this one must see, and holds them back until this commits.
    LOCK TABLE billhook.restored_events IN SHARE ROW EXCLUSIVE MODE;
    INSERT INTO billhook.fan_out_owed (event_id, webhook_id)
    SELECT e.id, NEW.id
    FROM billhook.restored_events AS r JOIN billhook.events AS e ON e.id = r.event_id
    WHERE r.transaction_id IS NULL
      AND NEW.id IN (SELECT s.webhook_id FROM billhook.subscribers(e.administration_id, e.event_type, e.occurred_at) AS s)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        PERFORM billhook.wake_worker_at_commit();
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER owe_restored_events AFTER INSERT ON billhook.webhooks
    FOR EACH ROW EXECUTE FUNCTION billhook.owe_restored_events();
ALTER TABLE billhook.webhooks ENABLE REPLICA TRIGGER owe_restored_events;
REVOKE ALL ON FUNCTION billhook.owe_restored_events() FROM PUBLIC;

CREATE OR REPLACE FUNCTION billhook.mark_event_restored() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dumped billhook.fan_out_state;
    dumped_transaction_id xid8 := NEW.transaction_id;
BEGIN
    NEW.transaction_id := '0';
    IF (SELECT a.backend_type FROM pg_stat_get_activity(pg_backend_pid()) AS a) = 'logical replication worker' THEN
        RETURN NEW;
    END IF;
    LOCK TABLE billhook.restored_events IN ROW EXCLUSIVE MODE;
    SELECT * INTO STRICT dumped FROM billhook.fan_out_state;
    IF dumped.restored_done IS NULL THEN
        INSERT INTO billhook.restored_events (event_id, transaction_id) VALUES (NEW.id, dumped_transaction_id);
    ELSIF NOT billhook.fan_out_passed(dumped_transaction_id, NEW.id, dumped.restored_done, dumped.restored_pass,
                                      dumped.restored_after_transaction_id, dumped.restored_after_event_id) THEN
        INSERT INTO billhook.restored_events (event_id, transaction_id) VALUES (NEW.id, NULL);
        INSERT INTO billhook.fan_out_owed (event_id, webhook_id)
        SELECT NEW.id, s.webhook_id
        FROM billhook.subscribers(NEW.administration_id, NEW.event_type, NEW.occurred_at) AS s
        ON CONFLICT DO NOTHING;
        PERFORM billhook.wake_worker_at_commit();
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION billhook.restore_fan_out_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Waits for events being restored in other sessions, and holds back new ones until this commits.
    LOCK TABLE billhook.restored_events IN SHARE ROW EXCLUSIVE MODE;
    UPDATE billhook.fan_out_state
    SET key_namespace = NEW.key_namespace, restored_done = NEW.done, restored_pass = NEW.pass,
        restored_after_transaction_id = NEW.after_transaction_id, restored_after_event_id = NEW.after_event_id;
    -- Those it had passed need nothing more; the others are owed their deliveries.
    DELETE FROM billhook.restored_events AS r
    WHERE r.transaction_id IS NOT NULL
      AND billhook.fan_out_passed(r.transaction_id, r.event_id, NEW.done, NEW.pass, NEW.after_transaction_id,
                                  NEW.after_event_id);
    WITH judged AS (
        UPDATE billhook.restored_events AS r SET transaction_id = NULL
        WHERE r.transaction_id IS NOT NULL
        RETURNING r.event_id
    )
    INSERT INTO billhook.fan_out_owed (event_id, webhook_id)
    SELECT e.id, s.webhook_id
    FROM judged AS j JOIN billhook.events AS e ON e.id = j.event_id
    CROSS JOIN LATERAL billhook.subscribers(e.administration_id, e.event_type, e.occurred_at) AS s
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        PERFORM billhook.wake_worker_at_commit();
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER restore_fan_out_state BEFORE INSERT ON billhook.fan_out_state
    FOR EACH ROW EXECUTE FUNCTION billhook.restore_fan_out_state();
ALTER TABLE billhook.fan_out_state ENABLE REPLICA TRIGGER restore_fan_out_state;
REVOKE ALL ON FUNCTION billhook.restore_fan_out_state() FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('billhook.fan_out_state', '');
CREATE OR REPLACE FUNCTION billhook.purge(older_than interval, max_rows integer DEFAULT 1000,
                               OUT deliveries bigint, OUT events bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fanned_out pg_snapshot;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' OR max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'invalid purge(%, %)', coalesce(older_than::text, 'NULL'), coalesce(max_rows::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'older_than is an interval of zero or more, max_rows a positive number.';
    END IF;
    WITH old AS (
        SELECT d.id FROM billhook.deliveries AS d
        WHERE d.status = 'succeeded' AND d.delivered_at < now() - older_than
        ORDER BY d.delivered_at LIMIT max_rows
        FOR UPDATE SKIP LOCKED)
    DELETE FROM billhook.deliveries AS d USING old
    WHERE d.id = old.id AND d.status = 'succeeded' AND d.delivered_at < now() - older_than;
    GET DIAGNOSTICS deliveries = ROW_COUNT;

    -- Every event visible in `done` has had its fan-out (see fan_out_state), except one whose
    -- deliveries are owed (billhook.fan_out_owed) and a restored one still waiting to learn whether
    -- it had (billhook.restored_events).
    SELECT s.done INTO STRICT fanned_out FROM billhook.fan_out_state AS s;
    WITH old AS (
        SELECT e.id FROM billhook.events AS e
        WHERE e.occurred_at < now() - older_than
          AND pg_visible_in_snapshot(e.transaction_id, fanned_out)
          AND NOT EXISTS (SELECT 1 FROM billhook.deliveries AS d WHERE d.event_id = e.id)
          AND NOT EXISTS (SELECT 1 FROM billhook.restored_events AS r
                          WHERE r.event_id = e.id AND r.transaction_id IS NOT NULL)
          AND NOT EXISTS (SELECT 1 FROM billhook.fan_out_owed AS o WHERE o.event_id = e.id)
        ORDER BY e.occurred_at LIMIT max_rows
        FOR UPDATE SKIP LOCKED)
    DELETE FROM billhook.events AS e USING old WHERE e.id = old.id;
    GET DIAGNOSTICS events = ROW_COUNT;
END
$$;

-- Entities erased under 0.11.0 left their copies nested in other entities' events: they go now.
SELECT count(billhook.erase_entity(erased.entity_type, erased.entity_id))
FROM (SELECT DISTINCT e.entity_type, e.entity_id FROM billhook.events AS e
      WHERE e.entity_type IN (SELECT n.nested_type FROM billhook.nested_entities() AS n)
        AND billhook.erasure_marker(e.entity, e.entity_id) = e.entity) AS erased;

-- The claim budgets entities by their size as read, not as stored (compressed): an entity that
-- compresses well no longer lets one claim read GBs.
CREATE FUNCTION billhook.detoasted_size("value" jsonb) RETURNS bigint
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'detoasted_size_wrapper';
COMMENT ON FUNCTION billhook.detoasted_size(jsonb) IS
    'The bytes a jsonb value takes once read (pg_column_size: as stored, compressed), from its header without reading it; the worker''s claim budgets entities by it.';

-- Readers see a webhook URL's scheme, host and port only (billhook.redact_url, in the library):
-- its path or query is often its secret. Operational events written before show more of it.
COMMENT ON FUNCTION billhook.redact_url(text) IS
    'A webhook URL as the views and operational events show it: scheme, host and port, with credentials, path and query each shown as ***. A URL''s path or query is often its secret; billhook_reader may not read webhooks.url.';
UPDATE billhook.events AS e
SET entity = jsonb_set(e.entity, '{url}', to_jsonb(billhook.redact_url(e.entity->>'url')))
FROM billhook.event_types AS t
WHERE t.name = e.event_type AND t.category = 'operations' AND e.entity_type = 'Webhook'
  AND jsonb_typeof(e.entity->'url') = 'string';

-- No tenant's schedule stops the scheduler's sweep for the others: line amounts and prices are
-- below 10^15 in magnitude (an overflow in a total stopped every sweep), failed_attempts is not
-- negative and saturates, and a failure that cannot be recorded deactivates its schedule instead
-- of ending the sweep. The new checks are added unvalidated, then validated below: a row outside
-- one stops the update, naming the check and how to find the row (a row kept outside would fail
-- every later UPDATE of it, and the restore of every dump).
ALTER TABLE billhook.invoice_lines
    ADD CONSTRAINT invoice_lines_amount_check CHECK (abs(amount) < 1e15) NOT VALID,
    ADD CONSTRAINT invoice_lines_price_check CHECK (abs(price) < 1e15) NOT VALID;
ALTER TABLE billhook.quotation_lines
    ADD CONSTRAINT quotation_lines_amount_check CHECK (abs(amount) < 1e15) NOT VALID,
    ADD CONSTRAINT quotation_lines_price_check CHECK (abs(price) < 1e15) NOT VALID;
ALTER TABLE billhook.recurring_invoice_lines
    ADD CONSTRAINT recurring_invoice_lines_amount_check CHECK (abs(amount) < 1e15) NOT VALID,
    ADD CONSTRAINT recurring_invoice_lines_price_check CHECK (abs(price) < 1e15) NOT VALID;
-- An event's entity is at most 64 MiB as read (billhook.detoasted_size, created above).
-- Whether an entity fits in an event: 64 MiB at most, as read. The worker holds an entity three
-- times over as it builds a push (its text, the body, the request): one row must not cost it
-- gigabytes or pass the 1 GB of a text value.
CREATE FUNCTION billhook.fits_in_an_event(entity jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN billhook.detoasted_size(entity) <= 67108864;
COMMENT ON FUNCTION billhook.fits_in_an_event(jsonb) IS
    'Whether an entity fits in an event: 64 MiB at most, as read (billhook.detoasted_size).';

ALTER TABLE billhook.events
    ADD CONSTRAINT events_entity_size_check CHECK (billhook.fits_in_an_event(entity)) NOT VALID;
-- The entity, when it fits in an event (billhook.fits_in_an_event); 54000 naming it otherwise, for
-- the sweep to set its document apart rather than fail at its commit for everyone.
CREATE FUNCTION billhook.fitting_entity(entity_type text, entity_id bigint, entity jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF NOT billhook.fits_in_an_event(entity) THEN
        RAISE EXCEPTION '% % would be beyond the 64 MiB an event may carry (% bytes)', entity_type, entity_id,
            billhook.detoasted_size(entity)
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN entity;
END
$$;
COMMENT ON FUNCTION billhook.fitting_entity(text, bigint, jsonb) IS
    'The entity when it fits in an event (64 MiB); 54000 naming it otherwise.';

-- Ids are positive, as the push schemas say.
ALTER TABLE billhook.administrations ADD CONSTRAINT administrations_id_check CHECK (id > 0) NOT VALID;
ALTER TABLE billhook.customers ADD CONSTRAINT customers_id_check CHECK (id > 0) NOT VALID;
ALTER TABLE billhook.invoices ADD CONSTRAINT invoices_id_check CHECK (id > 0) NOT VALID;
ALTER TABLE billhook.invoice_lines ADD CONSTRAINT invoice_lines_id_check CHECK (id > 0) NOT VALID;
ALTER TABLE billhook.quotations ADD CONSTRAINT quotations_id_check CHECK (id > 0) NOT VALID;
ALTER TABLE billhook.quotation_lines ADD CONSTRAINT quotation_lines_id_check CHECK (id > 0) NOT VALID;
ALTER TABLE billhook.expenses ADD CONSTRAINT expenses_id_check CHECK (id > 0) NOT VALID;
ALTER TABLE billhook.recurring_invoices ADD CONSTRAINT recurring_invoices_id_check CHECK (id > 0) NOT VALID;
ALTER TABLE billhook.recurring_invoice_lines ADD CONSTRAINT recurring_invoice_lines_id_check CHECK (id > 0) NOT VALID;
ALTER TABLE billhook.webhooks ADD CONSTRAINT webhooks_id_check CHECK (id > 0) NOT VALID;
UPDATE billhook.recurring_invoices SET failed_attempts = 0 WHERE failed_attempts < 0;
ALTER TABLE billhook.recurring_invoices
    ADD CONSTRAINT recurring_invoices_failed_attempts_check CHECK (failed_attempts >= 0);
-- Every date and time of an administration or document is within the years 1 to 9999: entities
-- and the push schemas write them as YYYY-MM-DD and YYYY-MM-DDTHH:MM:SS.ffffffZ, which an infinity
-- or a year of five digits would break. One check per column, <table>_<column>_in_range, NOT
-- VALID here: validated below with the others, after infinite values (legal in 0.11.0: an end date
-- 'infinity', say) are brought to the ends of that range, in a replica session so that the
-- documents' triggers do not take it for a change to push.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT t.relname, a.attname, a.atttypid = 'pg_catalog.date'::pg_catalog.regtype AS is_date
        FROM pg_catalog.pg_attribute AS a JOIN pg_catalog.pg_class AS t ON t.oid = a.attrelid
        WHERE t.relnamespace = 'billhook'::pg_catalog.regnamespace AND a.attnum > 0 AND NOT a.attisdropped
          AND t.relname IN ('administrations', 'customers', 'invoices', 'invoice_lines', 'quotations',
                            'quotation_lines', 'expenses', 'recurring_invoices', 'recurring_invoice_lines')
          AND a.atttypid IN ('pg_catalog.date'::pg_catalog.regtype, 'pg_catalog.timestamptz'::pg_catalog.regtype)
        ORDER BY t.relname, a.attnum
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE billhook.%I ADD CONSTRAINT %I CHECK (%I BETWEEN %L AND %L) NOT VALID',
                                  col.relname, col.relname || '_' || col.attname || '_in_range', col.attname,
                                  CASE WHEN col.is_date THEN '0001-01-01' ELSE '0001-01-01 00:00:00+00' END,
                                  CASE WHEN col.is_date THEN '9999-12-31' ELSE '9999-12-31 23:59:59.999999+00' END);
    END LOOP;
END
$$;

DO $$
DECLARE
    col record;
    role_before text := pg_catalog.current_setting('session_replication_role');
BEGIN
    PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
    FOR col IN
        SELECT t.relname, a.attname, pg_catalog.format_type(a.atttypid, NULL) AS type_name
        FROM pg_catalog.pg_constraint AS c JOIN pg_catalog.pg_class AS t ON t.oid = c.conrelid
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE t.relnamespace = 'billhook'::pg_catalog.regnamespace AND c.conname LIKE '%\_in\_range'
          AND NOT c.convalidated
    LOOP
        EXECUTE pg_catalog.format('UPDATE billhook.%I SET %I = CASE WHEN %I > ''9999-12-31'' THEN %L::%s ELSE %L::%s END'
                                  ' WHERE %I IN (''infinity'', ''-infinity'')',
                                  col.relname, col.attname, col.attname,
                                  '9999-12-31 23:59:59.999999+00', col.type_name,
                                  '0001-01-01 00:00:00+00', col.type_name, col.attname);
    END LOOP;
    PERFORM pg_catalog.set_config('session_replication_role', role_before, true);
END
$$;
DO $$
DECLARE
    checked record;
BEGIN
    FOR checked IN
        SELECT 'billhook.' || pg_catalog.quote_ident(t.relname) AS table_name, c.conname,
               pg_catalog.pg_get_expr(c.conbin, c.conrelid) AS expression
        FROM pg_catalog.pg_constraint AS c JOIN pg_catalog.pg_class AS t ON t.oid = c.conrelid
        WHERE t.relnamespace = 'billhook'::regnamespace AND c.contype = 'c' AND NOT c.convalidated
          AND (c.conname ~ '_(in_range|id_check|amount_check|price_check)$' OR c.conname = 'events_entity_size_check')
        ORDER BY 1, 2
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', checked.table_name, checked.conname);
        EXCEPTION WHEN check_violation THEN
            RAISE EXCEPTION 'billhook 0.12.0: rows of % break its check %', checked.table_name, checked.conname
                USING ERRCODE = 'check_violation',
                      HINT = 'Find them with SELECT * FROM ' || checked.table_name || ' WHERE NOT ('
                             || checked.expression || '); correct or delete them, then run ALTER EXTENSION billhook'
                             || ' UPDATE again. Until then 0.11.0 stays installed and working.';
        END;
    END LOOP;
END
$$;
CREATE OR REPLACE FUNCTION billhook.run_schedules(as_of timestamptz DEFAULT now(), max_invoices integer DEFAULT 100,
                                       max_changes integer DEFAULT 1000)
RETURNS TABLE (action text, entity_type text, entity_id bigint, detail text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    due record;
    schedule billhook.recurring_invoices;
    period date;
    created billhook.invoices;
    failure text;
    unrecorded text;
    entity jsonb;
    transient text;
    generated integer := 0;
    max_failures integer := current_setting('billhook.recurring_max_failures')::integer;
BEGIN
    IF as_of IS NULL OR max_invoices IS NULL OR max_invoices < 0 OR max_changes IS NULL OR max_changes < 0 THEN
        RAISE EXCEPTION 'invalid run_schedules(%, %, %)', as_of, max_invoices, max_changes
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'as_of is a time, max_invoices and max_changes zero or more.';
    END IF;

    -- Documents whose entity would not fit in an event are left as they are (reported as skipped):
    -- the sweep's events are written at its commit, which one of them would fail for everyone.
    RETURN QUERY
    SELECT 'skipped', 'Invoice', i.id, 'its entity would be beyond the 64 MiB an event may carry'
    FROM billhook.invoices AS i
    JOIN billhook.administrations AS a ON a.id = i.administration_id
    WHERE i.state IN ('open', 'reminded') AND i.due_date < (as_of AT TIME ZONE a.time_zone)::date
      AND NOT billhook.fits_in_an_event(billhook.invoice_json(i.id))
    ORDER BY i.id LIMIT max_changes;
    RETURN QUERY
    WITH overdue AS (
        SELECT i.id FROM billhook.invoices AS i
        JOIN billhook.administrations AS a ON a.id = i.administration_id
        WHERE i.state IN ('open', 'reminded') AND i.due_date < (as_of AT TIME ZONE a.time_zone)::date
          AND billhook.fits_in_an_event(billhook.invoice_json(i.id))
        ORDER BY i.id LIMIT max_changes
        FOR UPDATE OF i SKIP LOCKED
    ), late AS (
        UPDATE billhook.invoices AS i SET state = 'late'
        FROM overdue WHERE i.id = overdue.id
        RETURNING i.id, i.due_date)
    SELECT 'overdue', 'Invoice', late.id, 'due ' || late.due_date FROM late ORDER BY late.id;

    RETURN QUERY
    SELECT 'skipped', 'Quotation', q.id, 'its entity would be beyond the 64 MiB an event may carry'
    FROM billhook.quotations AS q
    JOIN billhook.administrations AS a ON a.id = q.administration_id
    WHERE q.state = 'open' AND q.valid_until < (as_of AT TIME ZONE a.time_zone)::date
      AND NOT billhook.fits_in_an_event(billhook.quotation_json(q.id))
    ORDER BY q.id LIMIT max_changes;
    RETURN QUERY
    WITH past_validity AS (
        SELECT q.id FROM billhook.quotations AS q
        JOIN billhook.administrations AS a ON a.id = q.administration_id
        WHERE q.state = 'open' AND q.valid_until < (as_of AT TIME ZONE a.time_zone)::date
          AND billhook.fits_in_an_event(billhook.quotation_json(q.id))
        ORDER BY q.id LIMIT max_changes
        FOR UPDATE OF q SKIP LOCKED
    ), expired AS (
        UPDATE billhook.quotations AS q SET state = 'expired'
        FROM past_validity WHERE q.id = past_validity.id
        RETURNING q.id, q.valid_until)
    SELECT 'expired', 'Quotation', expired.id, 'valid until ' || expired.valid_until FROM expired ORDER BY expired.id;

    FOR due IN
        SELECT r.id, (as_of AT TIME ZONE a.time_zone)::date AS today
        FROM billhook.recurring_invoices AS r
        JOIN billhook.administrations AS a ON a.id = r.administration_id
        WHERE r.active AND coalesce(r.next_date, r.start_date) <= (as_of AT TIME ZONE a.time_zone)::date
        ORDER BY coalesce(r.next_date, r.start_date), r.id
        FOR UPDATE OF r SKIP LOCKED
    LOOP
        LOOP
            SELECT * INTO schedule FROM billhook.recurring_invoices AS r WHERE r.id = due.id;
            period := coalesce(schedule.next_date, schedule.start_date);
            EXIT WHEN NOT schedule.active OR period > due.today OR generated >= max_invoices;

            failure := NULL;
            transient := NULL;
            BEGIN
                created := billhook.generate_recurring_invoice(schedule, period);
                IF created.id IS NOT NULL AND NOT billhook.fits_in_an_event(billhook.invoice_json(created.id)) THEN
                    RAISE EXCEPTION 'invoice % would be beyond the 64 MiB an event may carry', created.id
                        USING ERRCODE = 'program_limit_exceeded';
                END IF;
                UPDATE billhook.recurring_invoices AS r
                SET occurrences = r.occurrences + 1,
                    next_date = billhook.period_date(r.start_date, r.frequency, r.frequency_interval, r.occurrences + 1),
                    failed_attempts = 0,
                    last_error = NULL,
                    last_invoice_id = coalesce(created.id, r.last_invoice_id)
                WHERE r.id = schedule.id
                RETURNING * INTO schedule;
                IF created.id IS NOT NULL THEN
                    PERFORM billhook.emit_event('RecurringInvoice', schedule.id, 'recurring_invoice.generated',
                                                billhook.fitting_entity('RecurringInvoice', schedule.id,
                                                                        billhook.recurring_invoice_json(schedule.id)));
                    generated := generated + 1;
                END IF;
            EXCEPTION
                -- Contention, not a fault of the schedule: try again next sweep, uncounted.
                WHEN serialization_failure OR deadlock_detected OR lock_not_available THEN
                    GET STACKED DIAGNOSTICS transient = MESSAGE_TEXT;
                WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT;
            END;

            IF transient IS NOT NULL THEN
                RETURN QUERY SELECT 'deferred', 'RecurringInvoice', schedule.id, format('%s: %s', period, transient);
                EXIT;
            END IF;
            IF failure IS NOT NULL THEN
                -- Recording the failure may fail too (the schedule's JSON is what failed, say): the
                -- schedule is then deactivated with both reasons, and the sweep goes on to the next.
                BEGIN
                    UPDATE billhook.recurring_invoices AS r
                    SET failed_attempts = least(r.failed_attempts, 2147483646) + 1,
                        last_error = failure,
                        active = least(r.failed_attempts, 2147483646) + 1 < max_failures
                    WHERE r.id = schedule.id;
                    PERFORM billhook.emit_event('RecurringInvoice', schedule.id, 'recurring_invoice.failed',
                                                billhook.fitting_entity('RecurringInvoice', schedule.id,
                                                                        billhook.recurring_invoice_json(schedule.id)));
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS unrecorded = MESSAGE_TEXT;
                    failure := format('%s; the failure could not be recorded: %s', failure, unrecorded);
                    UPDATE billhook.recurring_invoices AS r SET active = false, last_error = failure
                    WHERE r.id = schedule.id;
                    RETURN QUERY SELECT 'failed', 'RecurringInvoice', schedule.id, format('%s: %s', period, failure);
                    EXIT;
                END;
                RETURN QUERY SELECT 'failed', 'RecurringInvoice', schedule.id, format('%s: %s', period, failure);
                EXIT;
            END IF;
            IF created.id IS NOT NULL THEN
                RETURN QUERY SELECT 'generated', 'RecurringInvoice', schedule.id,
                                    format('invoice %s for %s', created.id, period);
            END IF;

            IF schedule.occurrences >= schedule.max_occurrences OR schedule.next_date > schedule.end_date THEN
                UPDATE billhook.recurring_invoices AS r SET active = false, completed_at = as_of WHERE r.id = schedule.id;
                entity := billhook.recurring_invoice_json(schedule.id);
                IF billhook.fits_in_an_event(entity) THEN
                    PERFORM billhook.emit_event('RecurringInvoice', schedule.id, 'recurring_invoice.completed', entity);
                ELSE
                    RAISE WARNING 'billhook completed recurring invoice % without recurring_invoice.completed: its entity is beyond the 64 MiB an event may carry',
                        schedule.id;
                END IF;
                RETURN QUERY SELECT 'completed', 'RecurringInvoice', schedule.id,
                                    format('%s invoices', schedule.occurrences);
                EXIT;
            END IF;
        END LOOP;
    END LOOP;
END
$$;


-- A filter runs silent (billhook.filter_matches), but a .datetime() template that does not parse
-- raises all the same, for every event that reaches it: each template is tried here.
CREATE OR REPLACE FUNCTION billhook.check_webhook_filter(filter jsonpath) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    template text;
BEGIN
    BEGIN
        PERFORM jsonb_path_match('{}', filter);
    EXCEPTION WHEN singleton_sql_json_item_required THEN
        RAISE EXCEPTION 'invalid filter "%": not a predicate', filter
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A filter is a condition over the push, such as $.entity.currency == "EUR" && $.state == "open"; '
                         'combine conditions with &&, || and !.';
    END;
    FOR template IN
        SELECT m[1] FROM regexp_matches(filter::text, '\.datetime\(("(?:[^"\\]|\\.)*")\)', 'g') AS m
    LOOP
        BEGIN
            PERFORM jsonb_path_query('"2000-01-01"', ('$.datetime(' || template || ')')::jsonpath, '{}', true);
        EXCEPTION WHEN data_exception OR syntax_error THEN
            RAISE EXCEPTION 'invalid filter "%": datetime template %: %', filter, template, SQLERRM
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use a datetime template of PostgreSQL''s to_timestamp, such as "YYYY-MM-DD", or .datetime() alone.';
        END;
    END LOOP;
    RETURN true;
END
$$;

-- A webhook whose filter holds such a template stops the update, which names it: its filter
-- raised for every event reaching it, and every later change of the row would fail its check.
DO $$
DECLARE
    hook record;
BEGIN
    FOR hook IN SELECT w.id, w.filter FROM billhook.webhooks AS w WHERE w.filter IS NOT NULL ORDER BY w.id LOOP
        BEGIN
            PERFORM billhook.check_webhook_filter(hook.filter);
        EXCEPTION WHEN invalid_parameter_value THEN
            RAISE EXCEPTION 'billhook 0.12.0: the filter of webhook % raises for the events it reaches: %', hook.id, SQLERRM
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Correct it with billhook.update_webhook(' || hook.id || ', filter => ...), then run'
                             ' ALTER EXTENSION billhook UPDATE again. Until then 0.11.0 stays installed and working.';
        END;
    END LOOP;
END
$$;

-- A registered event type's schema allows a negative entity_id (a tracked table's ids are its
-- own): the generated column is computed again, row by row (a type whose registration the new
-- rules would refuse keeps its row as it is).
DO $$
DECLARE
    registered text;
BEGIN
    FOR registered IN SELECT t.name FROM billhook.event_types AS t WHERE NOT t.built_in ORDER BY t.name LOOP
        BEGIN
            UPDATE billhook.event_types AS t SET name = t.name WHERE t.name = registered;
        EXCEPTION WHEN invalid_parameter_value OR check_violation THEN
            NULL;
        END;
    END LOOP;
END
$$;

-- billhook_app writes every column of the documents and webhooks but the id (an id chosen ahead of
-- its sequence made another administration's next insert fail); a cluster that has the roles gets
-- its grants again now.
CREATE OR REPLACE FUNCTION billhook.create_roles() RETURNS void
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

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'billhook_app')
       AND EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'billhook_reader') THEN
        PERFORM billhook.create_roles();
    END IF;
END
$$;

-- Tenant isolation's policies are changed with every table locked at once (none held while
-- waiting): taken one by one, they could deadlock with a round of the worker.
CREATE OR REPLACE FUNCTION billhook.apply_tenant_isolation() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    t record;
    tables text := (SELECT string_agg(i.table_name::text, ', ') FROM billhook.tenant_isolation() AS i);
BEGIN
    -- Every table at once, and none held while waiting: a round of the worker holds some of them
    -- and asks for others, so DDL taking them one by one could deadlock with it. Ten seconds at
    -- most, then 55P03.
    FOR attempt IN 1..200 LOOP
        BEGIN
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE NOWAIT', tables);
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = 200 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.05);
        END;
    END LOOP;
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

-- Fault isolation in the fan-out: billhook.fan_out takes a quarantine reason (an event whose
-- fan-out fails is decided webhook by webhook); billhook.delivery_wanted is the decision;
-- billhook.filter_matches matches with jsonb_path_match_tz, silent.
-- Deliveries the fan-out owes: an event's delivery to a webhook another session held locked
-- against the deliveries' foreign key (a DELETE of it, a change of a key column, SELECT ... FOR
-- UPDATE in an open transaction). The fan-out never waits for such a lock, which would hold up
-- every other webhook; each pass makes the owed deliveries whose webhook it can lock now, before
-- any new event's, so they keep their order. No foreign key to webhooks, for the same reason: the
-- debts of a deleted webhook are dropped by the pass.
CREATE TABLE billhook.fan_out_owed (
    event_id   bigint NOT NULL REFERENCES billhook.events (id),
    webhook_id bigint NOT NULL,
    owed_since timestamptz NOT NULL DEFAULT now(),
    -- Restored from a dump, whose webhooks may arrive after it: kept until they do.
    restored   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (webhook_id, event_id)
);
CREATE INDEX ON billhook.fan_out_owed (event_id);
COMMENT ON TABLE billhook.fan_out_owed IS
    'Deliveries billhook.fan_out owes: events whose webhook another session held locked when they were fanned out, or restored before it; made by a later pass.';

-- Debts restored from a dump (in a replica session) are marked: their webhook may not be restored
-- yet, and the fan-out keeps them until it is (it drops the debts of deleted webhooks otherwise).
CREATE FUNCTION billhook.mark_owed_restored() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.restored := true;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION billhook.mark_owed_restored() FROM PUBLIC;
CREATE TRIGGER mark_owed_restored BEFORE INSERT ON billhook.fan_out_owed
    FOR EACH ROW EXECUTE FUNCTION billhook.mark_owed_restored();
ALTER TABLE billhook.fan_out_owed ENABLE REPLICA TRIGGER mark_owed_restored;

SELECT pg_catalog.pg_extension_config_dump('billhook.fan_out_owed', '');

-- BEGIN generated from sql/delivery.sql
CREATE OR REPLACE FUNCTION billhook.filter_matches(filter jsonpath, event_id bigint, administration_id bigint,
                                        entity_type text, entity_id bigint, state text, event_type text,
                                        occurred_at timestamptz, entity jsonb) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN filter IS NULL THEN true
                ELSE coalesce(jsonb_path_match_tz(billhook.filter_document(event_id, administration_id, entity_type,
                                                                           entity_id, state, event_type, occurred_at,
                                                                           entity),
                                                  filter, '{}', true), false) END
$$;

CREATE FUNCTION billhook.delivery_wanted(exact_events text[], filter jsonpath, webhook_id bigint, event_id bigint,
                                         administration_id bigint, entity_type text, entity_id bigint, state text,
                                         previous_state text, event_type text, occurred_at timestamptz, entity jsonb)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (exact_events IS NULL OR event_type = ANY (exact_events)
            OR billhook.moneybird_event(event_type, state, previous_state, entity) = ANY (exact_events))
           AND billhook.filter_matches(filter, event_id, administration_id, entity_type, entity_id, state, event_type,
                                       occurred_at, entity)
           AND NOT billhook.about_webhook(event_type, entity_id, entity, webhook_id)
$$;
COMMENT ON FUNCTION billhook.delivery_wanted(text[], jsonpath, bigint, bigint, bigint, text, bigint, text, text, text,
                                             timestamptz, jsonb) IS
    'Whether a webhook that subscribes to an event''s type takes it (Moneybird names, filter, not about itself).';

-- Whether an error (its SQLSTATE) is one of the moment, nobody's fault: the worker ends its round
-- and tries again rather than set a row apart. The classes worker/isolation.rs calls transient.
CREATE FUNCTION billhook.transient(sqlstate text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN left(sqlstate, 2) IN ('08', '40', '53', '57', '58') OR sqlstate IN ('55P03', '55006');
COMMENT ON FUNCTION billhook.transient(text) IS
    'Whether an error (its SQLSTATE) is one of the moment, which the worker tries again instead of setting a row apart.';

-- One event's delivery to one webhook, decided and written on its own, for the fan-out's slow
-- paths (an event whose fan-out failed as a whole, a debt whose payment failed): a webhook for
-- which that fails gets a failed delivery saying why (reason: the error); when even that cannot
-- be written, none, and a WARNING naming both, rather than hold up every other event. Errors of
-- the moment are raised. Returns the deliveries written (0 or 1).
CREATE FUNCTION billhook.fan_out_one(event_id bigint, webhook_id bigint, key_namespace uuid, reason text)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fault text;
    made integer := 0;
BEGIN
    BEGIN
        INSERT INTO billhook.deliveries (event_id, webhook_id, idempotency_key)
        SELECT e.id, w.id, billhook.delivery_key(fan_out_one.key_namespace, e.id, w.id)
        FROM billhook.events AS e
        JOIN billhook.webhooks AS w
          ON w.id = fan_out_one.webhook_id AND w.administration_id = e.administration_id
         AND (w.enabled OR w.disabled_at IS NOT NULL)
         AND e.event_type = ANY (w.subscribed_events) AND w.created_at <= e.occurred_at
         AND billhook.delivery_wanted(w.exact_events, w.filter, w.id, e.id, e.administration_id, e.entity_type,
                                      e.entity_id, e.state, e.previous_state, e.event_type, e.occurred_at,
                                      e.entity)
        WHERE e.id = fan_out_one.event_id
        ON CONFLICT ON CONSTRAINT deliveries_event_id_webhook_id_key DO NOTHING;
        GET DIAGNOSTICS made = ROW_COUNT;
        RETURN made;
    EXCEPTION WHEN OTHERS THEN
        IF billhook.transient(SQLSTATE) THEN
            RAISE;
        END IF;
        fault := format('%s: %s (SQLSTATE %s)', reason, SQLERRM, SQLSTATE);
    END;
    BEGIN
        INSERT INTO billhook.deliveries (event_id, webhook_id, idempotency_key, status, last_error)
        VALUES (fan_out_one.event_id, fan_out_one.webhook_id,
                billhook.delivery_key(fan_out_one.key_namespace, fan_out_one.event_id, fan_out_one.webhook_id),
                'failed', fault)
        ON CONFLICT ON CONSTRAINT deliveries_event_id_webhook_id_key DO NOTHING;
        GET DIAGNOSTICS made = ROW_COUNT;
    EXCEPTION WHEN OTHERS THEN
        IF billhook.transient(SQLSTATE) THEN
            RAISE;
        END IF;
        RAISE WARNING 'billhook left event % out for webhook %: % and its failed delivery cannot be written either: %',
            fan_out_one.event_id, fan_out_one.webhook_id, fault, SQLERRM;
    END;
    RETURN made;
END
$$;
REVOKE ALL ON FUNCTION billhook.fan_out_one(bigint, bigint, uuid, text) FROM PUBLIC;
COMMENT ON FUNCTION billhook.fan_out_one(bigint, bigint, uuid, text) IS
    'One event''s delivery to one webhook, decided and written on its own (the fan-out''s slow paths); a failed delivery saying why when that fails.';

DROP FUNCTION billhook.fan_out(integer, boolean);
CREATE FUNCTION billhook.fan_out(max_events integer DEFAULT 1000, wait boolean DEFAULT true,
                                 quarantine text DEFAULT NULL, OUT events bigint, OUT deliveries bigint,
                                 OUT owed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    progress billhook.fan_out_state;
    this_pass pg_snapshot;
    -- Where the scan of transactions begun since the last pass starts: after the last event taken.
    from_transaction_id xid8;
    from_event_id bigint;
    last_transaction_id xid8;
    last_event_id bigint;
    batch bigint[];
    -- The webhooks this pass may make deliveries for: those it holds FOR KEY SHARE (what the
    -- deliveries' foreign key takes), taken without waiting.
    held bigint[];
    candidate record;
    debtor record;
    debts bigint[];
    debt bigint;
    made bigint;
BEGIN
    IF max_events IS NULL OR max_events < 1 THEN
        RAISE EXCEPTION 'invalid max_events %', coalesce(max_events::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a positive number of events.';
    END IF;
    IF quarantine IS NOT NULL THEN
        max_events := 1;
    END IF;
    -- One pass at a time; readers of the state are not blocked.
    IF wait IS DISTINCT FROM false THEN
        SELECT * INTO STRICT progress FROM billhook.fan_out_state FOR UPDATE;
    ELSE
        SELECT * INTO progress FROM billhook.fan_out_state FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
    END IF;
    deliveries := 0;

    -- First what earlier passes owe, webhook by webhook where the webhook can be locked now, its
    -- oldest debts first (max_events of them per pass). A payment that fails is made debt by debt
    -- (billhook.fan_out_one), so one bad debt holds up nothing else.
    IF quarantine IS NULL AND EXISTS (SELECT FROM billhook.fan_out_owed) THEN
        -- The debts of webhooks deleted since go (restored ones wait for their webhook's restore).
        DELETE FROM billhook.fan_out_owed AS o
        WHERE NOT o.restored AND NOT EXISTS (SELECT FROM billhook.webhooks AS w WHERE w.id = o.webhook_id);
        FOR debtor IN
            SELECT w.id FROM billhook.webhooks AS w
            WHERE w.id IN (SELECT o.webhook_id FROM billhook.fan_out_owed AS o)
            ORDER BY w.id FOR KEY SHARE OF w SKIP LOCKED
        LOOP
            debts := ARRAY(SELECT o.event_id FROM billhook.fan_out_owed AS o WHERE o.webhook_id = debtor.id
                           ORDER BY o.event_id LIMIT max_events);
            BEGIN
                WITH made AS (
                    INSERT INTO billhook.deliveries (event_id, webhook_id, idempotency_key)
                    SELECT e.id, w.id, billhook.delivery_key(progress.key_namespace, e.id, w.id)
                    FROM billhook.events AS e
                    JOIN billhook.webhooks AS w
                      ON w.id = debtor.id AND w.administration_id = e.administration_id
                     AND (w.enabled OR w.disabled_at IS NOT NULL)
                     AND e.event_type = ANY (w.subscribed_events) AND w.created_at <= e.occurred_at
                     AND billhook.delivery_wanted(w.exact_events, w.filter, w.id, e.id, e.administration_id,
                                                  e.entity_type, e.entity_id, e.state, e.previous_state,
                                                  e.event_type, e.occurred_at, e.entity)
                    WHERE e.id = ANY (debts)
                    ORDER BY e.id
                    ON CONFLICT (event_id, webhook_id) DO NOTHING
                    RETURNING 1
                )
                SELECT count(*) INTO made FROM made;
            EXCEPTION WHEN OTHERS THEN
                IF billhook.transient(SQLSTATE) THEN
                    RAISE;
                END IF;
                made := 0;
                FOREACH debt IN ARRAY debts LOOP
                    made := made + billhook.fan_out_one(debt, debtor.id, progress.key_namespace,
                                                        'billhook could not make this delivery it owed');
                END LOOP;
            END;
            deliveries := deliveries + made;
            DELETE FROM billhook.fan_out_owed AS o WHERE o.webhook_id = debtor.id AND o.event_id = ANY (debts);
        END LOOP;
    END IF;

    -- A new pass takes what has committed by now. The statement below runs on a later snapshot,
    -- which sees all of it.
    this_pass := coalesce(progress.pass, pg_current_snapshot());
    IF progress.after_transaction_id >= pg_snapshot_xmax(progress.done) THEN
        from_transaction_id := progress.after_transaction_id;
        from_event_id := progress.after_event_id;
    ELSE
        from_transaction_id := pg_snapshot_xmax(progress.done);
        from_event_id := 0;
    END IF;

    SELECT array_agg(b.id ORDER BY b.transaction_id, b.id), count(*),
           (array_agg(b.transaction_id ORDER BY b.transaction_id DESC, b.id DESC))[1],
           (array_agg(b.id ORDER BY b.transaction_id DESC, b.id DESC))[1]
    INTO batch, events, last_transaction_id, last_event_id
    FROM (
        -- In progress at the last pass (a long transaction stays there without holding up others) ...
        (SELECT e.id, e.transaction_id
         FROM billhook.events AS e
         WHERE e.transaction_id = ANY (ARRAY(SELECT pg_snapshot_xip(progress.done)))
           AND pg_visible_in_snapshot(e.transaction_id, this_pass)
           AND (e.transaction_id > progress.after_transaction_id
                OR (e.transaction_id = progress.after_transaction_id AND e.id > progress.after_event_id))
         ORDER BY e.transaction_id, e.id LIMIT max_events)
        UNION ALL
        -- ... or begun since.
        (SELECT e.id, e.transaction_id
         FROM billhook.events AS e
         WHERE (e.transaction_id, e.id) > (from_transaction_id, from_event_id)
           AND e.transaction_id < pg_snapshot_xmax(this_pass)
           AND pg_visible_in_snapshot(e.transaction_id, this_pass)
         ORDER BY e.transaction_id, e.id LIMIT max_events)
        ORDER BY transaction_id, id LIMIT max_events
    ) AS b;

    IF events > 0 THEN
        -- The webhooks the batch's events go to: those it can lock, and those it cannot (owed).
        -- A webhook that still has debts is owed again, behind them.
        held := ARRAY(SELECT w.id FROM billhook.webhooks AS w
                      WHERE EXISTS (SELECT FROM billhook.events AS e
                                    WHERE e.id = ANY (batch) AND e.administration_id = w.administration_id
                                      AND e.event_type = ANY (w.subscribed_events))
                        AND (w.enabled OR w.disabled_at IS NOT NULL)
                        AND NOT EXISTS (SELECT FROM billhook.fan_out_owed AS o WHERE o.webhook_id = w.id)
                      ORDER BY w.id FOR KEY SHARE OF w SKIP LOCKED);
        INSERT INTO billhook.fan_out_owed (event_id, webhook_id)
        SELECT e.id, w.id
        FROM billhook.events AS e
        JOIN billhook.webhooks AS w
          ON w.administration_id = e.administration_id AND (w.enabled OR w.disabled_at IS NOT NULL)
         AND e.event_type = ANY (w.subscribed_events) AND w.created_at <= e.occurred_at
        WHERE e.id = ANY (batch) AND w.id <> ALL (held)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS owed = ROW_COUNT;

        IF quarantine IS NULL THEN
            WITH made AS (
                INSERT INTO billhook.deliveries (event_id, webhook_id, idempotency_key)
                SELECT e.id, w.id, billhook.delivery_key(progress.key_namespace, e.id, w.id)
                FROM billhook.events AS e
                JOIN billhook.webhooks AS w
                  ON w.administration_id = e.administration_id AND (w.enabled OR w.disabled_at IS NOT NULL)
                 AND e.event_type = ANY (w.subscribed_events) AND w.created_at <= e.occurred_at
                 AND billhook.delivery_wanted(w.exact_events, w.filter, w.id, e.id, e.administration_id,
                                              e.entity_type, e.entity_id, e.state, e.previous_state, e.event_type,
                                              e.occurred_at, e.entity)
                WHERE e.id = ANY (batch) AND w.id = ANY (held)
                ORDER BY e.id, w.id
                ON CONFLICT (event_id, webhook_id) DO NOTHING
                RETURNING 1
            )
            SELECT count(*) INTO made FROM made;
            deliveries := deliveries + made;
        ELSE
            -- The event's fan-out failed as a whole: it is decided and made webhook by webhook.
            FOR candidate IN
                SELECT w.id
                FROM billhook.events AS e
                JOIN billhook.webhooks AS w
                  ON w.administration_id = e.administration_id AND (w.enabled OR w.disabled_at IS NOT NULL)
                 AND e.event_type = ANY (w.subscribed_events) AND w.created_at <= e.occurred_at
                WHERE e.id = last_event_id AND w.id = ANY (held)
                ORDER BY w.id
            LOOP
                deliveries := deliveries + billhook.fan_out_one(last_event_id, candidate.id, progress.key_namespace,
                                                                quarantine);
            END LOOP;
        END IF;
    END IF;
    -- Debts of a webhook not restored yet (a restore in progress) wait without making the worker
    -- come back for them.
    SELECT count(*) INTO owed FROM billhook.fan_out_owed AS o
    WHERE EXISTS (SELECT FROM billhook.webhooks AS w WHERE w.id = o.webhook_id);

    IF events = max_events THEN
        UPDATE billhook.fan_out_state
        SET pass = this_pass, after_transaction_id = last_transaction_id, after_event_id = last_event_id;
    ELSIF events > 0 OR progress.pass IS NOT NULL THEN
        -- The pass is complete. One that found nothing leaves the progress as it is (no write).
        UPDATE billhook.fan_out_state
        SET done = this_pass, pass = NULL, after_transaction_id = '0', after_event_id = 0;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION billhook.fan_out(integer, boolean, text) FROM PUBLIC;
COMMENT ON FUNCTION billhook.fan_out(integer, boolean, text) IS
    'Creates the deliveries of committed events that have none yet (the worker calls it every round), never waiting for a lock on a webhook: those it owes (billhook.fan_out_owed) are made by a later pass; with a quarantine reason, decides the next event webhook by webhook.';
-- END generated from sql/delivery.sql

-- Comments of the tables, columns and functions that had none (sql/comments.sql: what \d+ and \df+ show).
-- Tables.
COMMENT ON TABLE billhook.customers IS
    'Customers of an administration; their changes are customer.created, .updated and .deleted events.';
COMMENT ON TABLE billhook.invoices IS
    'Sales invoices; changes and states (open, paid, late, ...) become invoice.* events carrying the invoice with its customer and lines.';
COMMENT ON TABLE billhook.invoice_lines IS
    'Lines of an invoice: their changes are changes of the invoice (invoice.updated).';
COMMENT ON TABLE billhook.quotations IS
    'Quotations (estimates); changes and states (open, accepted, expired, converted, ...) become quotation.* events.';
COMMENT ON TABLE billhook.quotation_lines IS
    'Lines of a quotation: their changes are changes of the quotation (quotation.updated).';
COMMENT ON TABLE billhook.expenses IS
    'Purchase invoices and receipts; changes and states become expense.* events.';
COMMENT ON TABLE billhook.recurring_invoices IS
    'Schedules that generate an invoice each period (billhook.run_schedules, the worker''s sweep): recurring_invoice.* events.';
COMMENT ON TABLE billhook.recurring_invoice_lines IS
    'The lines each invoice a recurring invoice generates gets.';
COMMENT ON TABLE billhook.event_types IS
    'The event catalog: built-in events (fixed) and those registered by billhook.register_event_type or billhook.track_table, with their category and the JSON Schema of their pushes.';
COMMENT ON TABLE billhook.moneybird_events IS
    'Moneybird''s event names, each with the billhook events it stands for: a webhook may subscribe by them (payload_format moneybird).';
COMMENT ON TABLE billhook.webhooks IS
    'Endpoints and what they subscribe to, with their settings, secrets and health; managed with billhook.create_webhook and the functions beside it.';
COMMENT ON TABLE billhook.webhook_health_log IS
    'Each change of a webhook''s health: failing, disabled (by billhook or by hand), enabled again, stopped.';
COMMENT ON TABLE billhook.events IS
    'The outbox: one row per entity and event name of each committed transaction, with the entity as of commit; written at commit, never by hand.';
COMMENT ON TABLE billhook.deliveries IS
    'One row per event and webhook it goes to (made by billhook.fan_out): status, attempts, next attempt, last answer, Idempotency-Key.';
COMMENT ON TABLE billhook.fan_out_state IS
    'Where billhook.fan_out stands (transaction snapshots) and this install''s part of every Idempotency-Key; one row, dumped.';
COMMENT ON TABLE billhook.delivery_attempts IS
    'One row per HTTP attempt of a delivery: when, how long, the answer or the error.';
COMMENT ON TABLE billhook.delivery_counters IS
    'Counts of attempts and outcomes per webhook and event type, kept by the worker for billhook.metrics().';
COMMENT ON TABLE billhook.tenant_isolation_settings IS
    'Whether tenant isolation is on (billhook.enable_tenant_isolation); its trigger applies the row-level security policies.';

-- Functions written in Rust (src/functions.rs, src/emit.rs).
COMMENT ON FUNCTION billhook.check_event_type(text, text) IS
    'Whether a name and category can be registered as an event type; raises 22023 naming why not.';
COMMENT ON FUNCTION billhook.check_webhook_choice(text, text) IS
    'Whether value is allowed for a webhook''s option (ordering, payload_format, payload, signature); raises 22023 naming the allowed values.';
COMMENT ON FUNCTION billhook.check_webhook_headers(jsonb, text) IS
    'Whether a webhook''s own headers are allowed (names, values, count, no reserved names); raises 22023 naming the header.';
COMMENT ON FUNCTION billhook.check_webhook_settings(text, double precision, integer, double precision) IS
    'Whether a webhook''s retry schedule, request timeout (ms), max_in_flight and max_requests_per_second are within their bounds; raises 22023 naming the setting.';
COMMENT ON FUNCTION billhook.check_webhook_url(text) IS
    'Whether a URL can be a webhook''s (absolute http or https with a host, at most 2048 characters); raises 22023 naming why not.';
COMMENT ON FUNCTION billhook.delivery_key(uuid, bigint, bigint) IS
    'The Idempotency-Key of an event''s delivery to a webhook, derived from the install''s namespace (fan_out_state.key_namespace).';
COMMENT ON FUNCTION billhook.ed25519_public_key(text) IS
    'The public key (whpk_...) of a webhook''s ed25519 signing key (whsk_...).';
COMMENT ON FUNCTION billhook.emit_event(text, bigint, text, jsonb) IS
    'Queues an event raised by billhook itself (the scheduler) with the given entity; written at commit with the transaction''s other events.';
COMMENT ON FUNCTION billhook.event_catalog() IS
    'The built-in events: name, category, entity type, description.';
COMMENT ON FUNCTION billhook.event_schema(text) IS
    'The JSON Schema of a push of an event type (event_types.schema).';
COMMENT ON FUNCTION billhook.event_tables() IS
    'The tables whose row changes are events of an entity (lines: of their parent), which billhook''s triggers are attached from.';
COMMENT ON FUNCTION billhook.exact_subscription(text[], text) IS
    'The Moneybird names a subscription takes pushes by (NULL when it subscribes by billhook names): webhooks.exact_events.';
COMMENT ON FUNCTION billhook.expand_subscription(text[], text) IS
    'The billhook events a subscription (names, categories, *, Moneybird names) takes in a payload format: webhooks.subscribed_events.';
COMMENT ON FUNCTION billhook.expand_subscription(text[]) IS
    'The billhook events a subscription (names, categories, *, Moneybird names) takes in billhook''s payload format.';
COMMENT ON FUNCTION billhook.generate_signing_key() IS
    'A new ed25519 signing key for a webhook (whsk_ + base64 of a random seed).';
COMMENT ON FUNCTION billhook.generate_signing_secret() IS
    'A new HMAC signing secret for a webhook (whsec_ + base64 of 32 random bytes).';
COMMENT ON FUNCTION billhook.generate_token() IS
    'A new token for a webhook (its id in pushes, as Moneybird''s webhook_token).';
COMMENT ON FUNCTION billhook.is_event_type(text) IS
    'Whether a name is an event type of the catalog (built in or registered).';
COMMENT ON FUNCTION billhook.metrics() IS
    'billhook''s counters, gauges and histograms in Prometheus text format (what the caller may see of them).';
COMMENT ON FUNCTION billhook.moneybird_catalog() IS
    'Moneybird''s event names and the billhook events each stands for (billhook.moneybird_events is filled from it).';
COMMENT ON FUNCTION billhook.moneybird_event(text, text, text, jsonb) IS
    'The Moneybird event name of a billhook event, given its state change and entity (NULL when Moneybird has none).';
COMMENT ON FUNCTION billhook.verify_endpoint(bigint, bigint, text, text, text, text[], jsonb, text) IS
    'The registration check: sends a signed webhook.verification push to a URL and raises 22023 unless it answers 200.';
COMMENT ON FUNCTION billhook.wake_worker_at_commit() IS
    'Wakes the delivery worker when the current transaction commits (deliveries queued by hand, webhooks changed).';
COMMENT ON FUNCTION billhook.worker_status() IS
    'Whether billhook is preloaded and this database''s first worker runs: pid, database, start.';
COMMENT ON FUNCTION billhook.workers() IS
    'Every delivery worker the settings ask for: database, member, whether it runs, pid, start, starts.';
COMMENT ON FUNCTION billhook.capture_deleted_entity() IS
    'Trigger: keeps a deleted entity''s last state for its .deleted event.';
COMMENT ON FUNCTION billhook.capture_deleted_tracked_row() IS
    'Trigger: keeps a tracked table''s deleted row, as JSON, for its .deleted event.';
COMMENT ON FUNCTION billhook.note_webhooks_changed() IS
    'Trigger: tells the worker at commit that the events worth waking it for may have changed.';
COMMENT ON FUNCTION billhook.record_change() IS
    'Trigger on billhook''s documents and their lines: notes the change in the transaction''s change log, whose events are written at commit.';
COMMENT ON FUNCTION billhook.record_tracked_change() IS
    'Trigger on a tracked table: notes the change of its row in the transaction''s change log, whose events are written at commit.';

-- Functions in SQL: documents and their entities (sql/schema.sql, sql/entities.sql, sql/api.sql).
COMMENT ON FUNCTION billhook.check_time_zone(text) IS
    'Whether a name is a time zone PostgreSQL knows; raises 22023 otherwise (administrations.time_zone).';
COMMENT ON FUNCTION billhook.current_administration_id() IS
    'The session''s administration (billhook.administration_id), or NULL when not set.';
COMMENT ON FUNCTION billhook.default_administration_id() IS
    'The administration of new rows: the session''s, else 1.';
COMMENT ON FUNCTION billhook.keep_built_in_event_types() IS
    'Trigger: the built-in event types can be neither changed nor deleted.';
COMMENT ON FUNCTION billhook.keep_event_types() IS
    'Trigger: billhook.event_types cannot be truncated (registered types are deleted one by one).';
COMMENT ON FUNCTION billhook.check_webhook_filter(jsonpath) IS
    'Whether a jsonpath can be a webhook''s filter (a predicate whose .datetime() templates parse); raises 22023 otherwise.';
COMMENT ON FUNCTION billhook.webhook_filter(text) IS
    'A webhook''s filter from text: NULL for '''', 22023 naming a path that does not parse.';
COMMENT ON FUNCTION billhook.keep_subscription() IS
    'Trigger: keeps webhooks.subscribed_events and exact_events as its enabled_events and payload_format say.';
COMMENT ON FUNCTION billhook.reset_webhook_health() IS
    'Trigger: a webhook enabled again starts its health afresh.';
COMMENT ON FUNCTION billhook.log_webhook_health() IS
    'Trigger: writes each change of a webhook''s health to billhook.webhook_health_log.';
COMMENT ON FUNCTION billhook.mark_event_restored() IS
    'Replica trigger: judges an event restored from a dump by the dump''s fan-out progress (see billhook.fan_out_owed).';
COMMENT ON FUNCTION billhook.mark_owed_restored() IS
    'Replica trigger: marks debts restored from a dump, which wait for their webhook''s restore.';
COMMENT ON FUNCTION billhook.owe_restored_events() IS
    'Replica trigger: a webhook restored after events its dump had not fanned out is owed their deliveries.';
COMMENT ON FUNCTION billhook.restore_fan_out_state() IS
    'Replica trigger: takes a dump''s fan-out progress and key namespace, and judges the events restored before it.';
COMMENT ON FUNCTION billhook.touch_updated_at() IS
    'Trigger: sets updated_at when a row changes.';
COMMENT ON FUNCTION billhook.json_time(timestamp with time zone) IS
    'A time as entities and pushes write it: UTC, microseconds, YYYY-MM-DDTHH:MM:SS.ffffffZ.';
COMMENT ON FUNCTION billhook.line_json(bigint, text, numeric, numeric, numeric, integer, timestamp with time zone,
                                       timestamp with time zone) IS
    'A document line as entities carry it, with its total.';
COMMENT ON FUNCTION billhook.document_lines(text, bigint[]) IS
    'The lines of invoices, quotations or recurring invoices (by kind and ids), as entities carry them, with their totals.';
COMMENT ON FUNCTION billhook.discounted(numeric, numeric) IS
    'An amount less a percentage discount, rounded to cents.';
COMMENT ON FUNCTION billhook.customer_object(billhook.customers) IS
    'A customer row as entities carry it.';
COMMENT ON FUNCTION billhook.customer_entities(bigint[]) IS
    'The Customer entities of these ids, as events carry them.';
COMMENT ON FUNCTION billhook.invoice_entities(bigint[]) IS
    'The Invoice entities of these ids (with customer, lines and totals), as events carry them.';
COMMENT ON FUNCTION billhook.quotation_entities(bigint[]) IS
    'The Quotation entities of these ids (with customer, lines and totals), as events carry them.';
COMMENT ON FUNCTION billhook.expense_entities(bigint[]) IS
    'The Expense entities of these ids, as events carry them.';
COMMENT ON FUNCTION billhook.recurring_invoice_entities(bigint[]) IS
    'The RecurringInvoice entities of these ids (with customer and lines), as events carry them.';
COMMENT ON FUNCTION billhook.customer_json(bigint) IS 'A customer''s entity, as its events carry it now.';
COMMENT ON FUNCTION billhook.invoice_json(bigint) IS 'An invoice''s entity, as its events carry it now.';
COMMENT ON FUNCTION billhook.quotation_json(bigint) IS 'A quotation''s entity, as its events carry it now.';
COMMENT ON FUNCTION billhook.expense_json(bigint) IS 'An expense''s entity, as its events carry it now.';
COMMENT ON FUNCTION billhook.recurring_invoice_json(bigint) IS 'A recurring invoice''s entity, as its events carry it now.';
COMMENT ON FUNCTION billhook.entity_json(text, bigint) IS
    'An entity of any of billhook''s kinds (Customer, Invoice, ...), as its events carry it now.';
COMMENT ON FUNCTION billhook.webhook_found(billhook.webhooks, bigint) IS
    'The webhook a function changed, or P0002 naming the id when there was none (or none the caller may see).';
COMMENT ON FUNCTION billhook.register_event_type(text, text, text) IS
    'Registers an event type of the application''s (category.action) in the catalog, so webhooks may subscribe to it.';

-- Functions in SQL: webhooks (sql/api.sql).
COMMENT ON FUNCTION billhook.update_webhook(bigint, text, text[], boolean, jsonb, text, interval, integer,
                                            double precision, text, text, text, text, text) IS
    'Changes a webhook''s URL, subscription or settings (NULL: as it is); a new URL gets the registration check.';
COMMENT ON FUNCTION billhook.enable_webhook(bigint) IS
    'Enables a webhook; one billhook disabled gets its held deliveries sent.';
COMMENT ON FUNCTION billhook.disable_webhook(bigint) IS
    'Disables a webhook: it gets no new deliveries, and its pending ones wait.';
COMMENT ON FUNCTION billhook.reset_webhook_settings(bigint) IS
    'Sets a webhook''s retry schedule, timeout and limits back to the billhook.* settings.';
COMMENT ON FUNCTION billhook.delete_webhook(bigint) IS
    'Deletes a webhook with its deliveries and attempts.';
COMMENT ON FUNCTION billhook.rotate_token(bigint) IS
    'Gives a webhook a new token.';
COMMENT ON FUNCTION billhook.rotation_expiry(interval) IS
    'When a rotated-out secret or key stops signing: its grace from now; 22023 unless the grace is zero or more.';
COMMENT ON FUNCTION billhook.rotate_secret(bigint, interval) IS
    'Gives a webhook a new HMAC signing secret; pushes are signed with the old one too during the grace period.';
COMMENT ON FUNCTION billhook.signing_keys(billhook.webhooks) IS
    'The keys a webhook''s pushes are signed with now, space-separated: its secret and/or key, and the previous ones within their grace.';
COMMENT ON FUNCTION billhook.rotate_signing_key(bigint, interval) IS
    'Gives a webhook a new ed25519 signing key; pushes are signed with the old one too during the grace period.';
COMMENT ON FUNCTION billhook.convert_quotation(bigint) IS
    'Makes an invoice of an accepted quotation (its lines, its customer): quotation.converted, invoice.created.';

-- Functions in SQL: delivery, scheduler, reporting, tracked tables, tenancy.
COMMENT ON FUNCTION billhook.filter_document(bigint, bigint, text, bigint, text, text, timestamp with time zone,
                                             jsonb) IS
    'What a webhook''s filter sees of an event: billhook''s envelope without the webhook''s own fields.';
COMMENT ON FUNCTION billhook.filter_matches(jsonpath, bigint, bigint, text, bigint, text, text,
                                            timestamp with time zone, jsonb) IS
    'Whether a webhook''s filter lets an event through (no filter, or a match; an error while matching is no match).';
COMMENT ON FUNCTION billhook.about_webhook(text, bigint, jsonb, bigint) IS
    'Whether an operational event is about this webhook (a webhook.* event about it, a delivery.exhausted of one of its deliveries): such events never go to it.';
COMMENT ON FUNCTION billhook.emit_operations(bigint[], bigint[], bigint[]) IS
    'Writes the operational events of a worker round (webhook.failing, webhook.disabled, delivery.exhausted); returns how many.';
COMMENT ON FUNCTION billhook.purge(interval, integer) IS
    'One batch of the retention purge: succeeded deliveries older than older_than, then events the fan-out passed with no delivery left.';
COMMENT ON FUNCTION billhook.erase_entity(text, bigint) IS
    'Erases an entity''s personal data wherever billhook keeps it (its events, copies nested in others, stored answers); keeps ids, times and statuses.';
COMMENT ON FUNCTION billhook.redeliver(bigint) IS
    'Sends a delivery again as soon as possible, with the same Idempotency-Key; a failed or succeeded one starts a fresh round of retries.';
COMMENT ON FUNCTION billhook.replay(bigint, timestamp with time zone, timestamp with time zone, boolean) IS
    'Re-queues a webhook''s deliveries of events that occurred in [since, until): the failed ones, or also the succeeded with only_failed => false; returns how many.';
COMMENT ON FUNCTION billhook.period_date(date, text, integer, integer) IS
    'The date of a recurring invoice''s nth period from its start (month ends and leap days kept).';
COMMENT ON FUNCTION billhook.generate_recurring_invoice(billhook.recurring_invoices, date) IS
    'The invoice of one period of a schedule, with its lines; NULL if that period has its invoice already; raises when the schedule cannot make one.';
COMMENT ON FUNCTION billhook.run_schedules(timestamp with time zone, integer, integer) IS
    'The scheduler''s sweep: overdue invoices go late, quotations past validity expire, recurring invoices generate their due periods; one row per change.';
COMMENT ON FUNCTION billhook.check_report_window(timestamp with time zone, timestamp with time zone) IS
    'Raises 22023 unless [since, until) is a window of time (the reports'' argument check).';
COMMENT ON FUNCTION billhook.tracked_column_type(regclass, text, text) IS
    'The type of a column billhook.track_table is given (its id, administration or state column); 42703 when the table has no such column.';
COMMENT ON FUNCTION billhook.track_table(regclass, text, text, text, text, text, jsonb, text[]) IS
    'Turns an application table''s row changes into events of an entity type (<category>.created, .updated, .deleted and state events).';
COMMENT ON FUNCTION billhook.untrack_table(regclass) IS
    'Stops turning a table''s row changes into events (its event types stay registered).';
COMMENT ON FUNCTION billhook.forget_dropped_tables() IS
    'Event trigger: a tracked table that is dropped is no longer tracked.';
COMMENT ON FUNCTION billhook.isolated_administration_id() IS
    'The administration of a session under tenant isolation; 42501 when it has none, so that it fails rather than sees nothing.';
COMMENT ON FUNCTION billhook.tenant_isolation_applies() IS
    'Whether tenant isolation restricts the current role: it is on, and the role is no superuser, owner or BYPASSRLS role.';
COMMENT ON FUNCTION billhook.isolated_webhook_ids() IS
    'The webhooks of the session''s administration: the tenant of a delivery, its attempts and counters.';
COMMENT ON FUNCTION billhook.tenant_isolation() IS
    'Each table with tenant rows: its row filter and whether tenant isolation is on for it.';
COMMENT ON FUNCTION billhook.apply_tenant_isolation() IS
    'Trigger: turns the row-level security policies on or off as billhook.tenant_isolation_settings says.';
COMMENT ON FUNCTION billhook.enable_tenant_isolation() IS
    'Turns on row-level security on every table with tenant rows: a role sees and writes its session''s administration only.';
COMMENT ON FUNCTION billhook.disable_tenant_isolation() IS
    'Turns tenant isolation off.';
COMMENT ON FUNCTION billhook.create_roles() IS
    'Creates billhook_reader and billhook_app (if missing) and grants them this database''s objects; run again after an update.';

-- Columns. Those every table of documents shares are described once, for every table that has them.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT t.relname, a.attname
        FROM pg_catalog.pg_attribute AS a JOIN pg_catalog.pg_class AS t ON t.oid = a.attrelid
        WHERE t.relnamespace = 'billhook'::pg_catalog.regnamespace AND t.relkind = 'r' AND a.attnum > 0
          AND NOT a.attisdropped AND pg_catalog.col_description(t.oid, a.attnum) IS NULL
          AND a.attname IN ('id', 'administration_id', 'created_at', 'updated_at')
        ORDER BY 1, 2
    LOOP
        EXECUTE pg_catalog.format('COMMENT ON COLUMN billhook.%I.%I IS %L', col.relname, col.attname,
            CASE col.attname
                WHEN 'id' THEN 'The row''s id: from its sequence, positive; entities and pushes carry it as a string.'
                WHEN 'administration_id' THEN 'The administration (tenant) the row belongs to; its webhooks are the ones that hear of it.'
                WHEN 'created_at' THEN 'When the row was created.'
                WHEN 'updated_at' THEN 'When the row last changed (kept by a trigger).'
            END);
    END LOOP;
END
$$;

COMMENT ON COLUMN billhook.administrations.name IS 'The administration''s name.';
COMMENT ON COLUMN billhook.administrations.currency IS 'Its default currency (ISO 4217).';
COMMENT ON COLUMN billhook.customers.customer_number IS 'The customer''s number in the administration.';
COMMENT ON COLUMN billhook.customers.company_name IS 'Company name.';
COMMENT ON COLUMN billhook.customers.firstname IS 'First name of the contact.';
COMMENT ON COLUMN billhook.customers.lastname IS 'Last name of the contact.';
COMMENT ON COLUMN billhook.customers.attention IS 'Attention line of the address.';
COMMENT ON COLUMN billhook.customers.address1 IS 'Address, first line.';
COMMENT ON COLUMN billhook.customers.address2 IS 'Address, second line.';
COMMENT ON COLUMN billhook.customers.zipcode IS 'Postal code.';
COMMENT ON COLUMN billhook.customers.city IS 'City.';
COMMENT ON COLUMN billhook.customers.country IS 'Country (ISO 3166-1 alpha-2).';
COMMENT ON COLUMN billhook.customers.email IS 'E-mail address (personal data: billhook.erase_entity blanks it in events).';
COMMENT ON COLUMN billhook.customers.phone IS 'Phone number.';
COMMENT ON COLUMN billhook.customers.tax_number IS 'VAT number.';
COMMENT ON COLUMN billhook.customers.chamber_of_commerce IS 'Chamber of commerce registration number.';
COMMENT ON COLUMN billhook.customers.bank_account IS 'Bank account (IBAN).';
COMMENT ON COLUMN billhook.customers.send_invoices_to_email IS 'Where invoices are sent, when not to email.';

COMMENT ON COLUMN billhook.invoices.customer_id IS 'The customer invoiced (of the same administration).';
COMMENT ON COLUMN billhook.invoices.invoice_number IS 'The invoice''s number, once it has one.';
COMMENT ON COLUMN billhook.invoices.state IS 'draft, scheduled, open, pending_payment, reminded, late, paid, uncollectible or cancelled; changes are invoice.* events.';
COMMENT ON COLUMN billhook.invoices.invoice_date IS 'The invoice''s date.';
COMMENT ON COLUMN billhook.invoices.due_date IS 'When payment is due; an open or reminded invoice past it goes late (billhook.run_schedules).';
COMMENT ON COLUMN billhook.invoices.currency IS 'Currency (ISO 4217).';
COMMENT ON COLUMN billhook.invoices.reference IS 'The customer''s reference.';
COMMENT ON COLUMN billhook.invoices.language IS 'Language of the invoice (ISO 639-1).';
COMMENT ON COLUMN billhook.invoices.payment_conditions IS 'Payment conditions printed on the invoice.';
COMMENT ON COLUMN billhook.invoices.sent_at IS 'When the invoice was sent (invoice.sent).';
COMMENT ON COLUMN billhook.invoices.paid_at IS 'When the invoice was paid (invoice.paid).';
COMMENT ON COLUMN billhook.invoices.recurring_invoice_id IS 'The recurring invoice that generated it, if any (of the same administration).';
COMMENT ON COLUMN billhook.invoice_lines.invoice_id IS 'The invoice the line belongs to.';
COMMENT ON COLUMN billhook.invoice_lines.description IS 'What the line is for.';
COMMENT ON COLUMN billhook.invoice_lines.price IS 'Price per unit, excluding tax (below 10^15 in magnitude).';
COMMENT ON COLUMN billhook.invoice_lines.row_order IS 'The line''s place on the invoice.';

COMMENT ON COLUMN billhook.quotations.customer_id IS 'The customer the quotation is for (of the same administration).';
COMMENT ON COLUMN billhook.quotations.quotation_number IS 'The quotation''s number, once it has one.';
COMMENT ON COLUMN billhook.quotations.state IS 'draft, open, accepted, rejected, expired or billed; changes are quotation.* events.';
COMMENT ON COLUMN billhook.quotations.quotation_date IS 'The quotation''s date.';
COMMENT ON COLUMN billhook.quotations.valid_until IS 'Until when it may be accepted; an open quotation past it expires (billhook.run_schedules).';
COMMENT ON COLUMN billhook.quotations.currency IS 'Currency (ISO 4217).';
COMMENT ON COLUMN billhook.quotations.discount IS 'Percentage off the total of the lines.';
COMMENT ON COLUMN billhook.quotations.reference IS 'The customer''s reference.';
COMMENT ON COLUMN billhook.quotations.language IS 'Language of the quotation (ISO 639-1).';
COMMENT ON COLUMN billhook.quotations.pre_text IS 'Text printed above the lines.';
COMMENT ON COLUMN billhook.quotations.sent_at IS 'When the quotation was sent (quotation.sent).';
COMMENT ON COLUMN billhook.quotations.accepted_at IS 'When the customer accepted it (quotation.accepted).';
COMMENT ON COLUMN billhook.quotation_lines.quotation_id IS 'The quotation the line belongs to.';
COMMENT ON COLUMN billhook.quotation_lines.description IS 'What the line is for.';
COMMENT ON COLUMN billhook.quotation_lines.amount IS 'Quantity (below 10^15 in magnitude).';
COMMENT ON COLUMN billhook.quotation_lines.price IS 'Price per unit, excluding tax (below 10^15 in magnitude).';
COMMENT ON COLUMN billhook.quotation_lines.tax_rate IS 'Tax rate in percent (0 to 100).';
COMMENT ON COLUMN billhook.quotation_lines.row_order IS 'The line''s place on the quotation.';

COMMENT ON COLUMN billhook.expenses.reference IS 'The supplier''s reference (its invoice number, say).';
COMMENT ON COLUMN billhook.expenses.supplier_name IS 'Who the expense is owed to.';
COMMENT ON COLUMN billhook.expenses.description IS 'What the expense is for.';
COMMENT ON COLUMN billhook.expenses.expense_date IS 'The expense''s date.';
COMMENT ON COLUMN billhook.expenses.due_date IS 'When payment is due.';
COMMENT ON COLUMN billhook.expenses.currency IS 'Currency (ISO 4217).';
COMMENT ON COLUMN billhook.expenses.tax_rate IS 'Tax rate in percent (0 to 100).';
COMMENT ON COLUMN billhook.expenses.state IS 'new, approved or paid; changes are expense.* events.';
COMMENT ON COLUMN billhook.expenses.approved_at IS 'When it was approved (expense.approved).';
COMMENT ON COLUMN billhook.expenses.paid_at IS 'When it was paid (expense.paid).';

COMMENT ON COLUMN billhook.recurring_invoices.frequency IS 'weekly, monthly, quarterly, half_yearly or yearly (times frequency_interval).';
COMMENT ON COLUMN billhook.recurring_invoices.start_date IS 'The first period''s date.';
COMMENT ON COLUMN billhook.recurring_invoices.end_date IS 'No period after this date (NULL: none).';
COMMENT ON COLUMN billhook.recurring_invoices.max_occurrences IS 'At most this many invoices (NULL: no limit).';
COMMENT ON COLUMN billhook.recurring_invoices.occurrences IS 'Invoices generated so far.';
COMMENT ON COLUMN billhook.recurring_invoices.active IS 'Whether the sweep generates its periods; false once completed, deactivated by failures, or by hand.';
COMMENT ON COLUMN billhook.recurring_invoices.currency IS 'Currency of the invoices (ISO 4217).';
COMMENT ON COLUMN billhook.recurring_invoices.discount IS 'Percentage off the total of the lines, on each invoice.';
COMMENT ON COLUMN billhook.recurring_invoices.reference IS 'The customer''s reference, on each invoice.';
COMMENT ON COLUMN billhook.recurring_invoices.language IS 'Language of the invoices (ISO 639-1).';
COMMENT ON COLUMN billhook.recurring_invoices.payment_conditions IS 'Payment conditions of the invoices.';
COMMENT ON COLUMN billhook.recurring_invoices.due_days IS 'Days from an invoice''s date to its due date.';
COMMENT ON COLUMN billhook.recurring_invoices.failed_attempts IS 'Periods that failed in a row; billhook.recurring_max_failures of them deactivate the schedule.';
COMMENT ON COLUMN billhook.recurring_invoices.last_error IS 'Why the last period failed (NULL after a success).';
COMMENT ON COLUMN billhook.recurring_invoices.last_invoice_id IS 'The last invoice it generated.';
COMMENT ON COLUMN billhook.recurring_invoices.completed_at IS 'When its last period was generated (recurring_invoice.completed).';
COMMENT ON COLUMN billhook.recurring_invoice_lines.recurring_invoice_id IS 'The recurring invoice the line belongs to.';
COMMENT ON COLUMN billhook.recurring_invoice_lines.description IS 'What the line is for, on each invoice.';
COMMENT ON COLUMN billhook.recurring_invoice_lines.amount IS 'Quantity (below 10^15 in magnitude).';
COMMENT ON COLUMN billhook.recurring_invoice_lines.price IS 'Price per unit, excluding tax (below 10^15 in magnitude).';
COMMENT ON COLUMN billhook.recurring_invoice_lines.tax_rate IS 'Tax rate in percent (0 to 100).';
COMMENT ON COLUMN billhook.recurring_invoice_lines.row_order IS 'The line''s place on each invoice.';

COMMENT ON COLUMN billhook.event_types.name IS 'The event''s name, <category>.<action>.';
COMMENT ON COLUMN billhook.event_types.category IS 'What a subscription by category takes (invoice, customer, operations, ...).';
COMMENT ON COLUMN billhook.event_types.description IS 'What the event means.';
COMMENT ON COLUMN billhook.moneybird_events.position IS 'Order of the names of one event: a push is named by the first whose condition holds.';
COMMENT ON COLUMN billhook.moneybird_events.moneybird_event IS 'Moneybird''s name of the event (sales_invoice_created, ...).';
COMMENT ON COLUMN billhook.moneybird_events.event_type IS 'The billhook event it names.';
COMMENT ON COLUMN billhook.moneybird_events.condition IS 'When the name applies (a state change), if not always.';
COMMENT ON COLUMN billhook.moneybird_events.moneybird_entity_type IS 'Moneybird''s entity type of pushes by this name.';

COMMENT ON COLUMN billhook.webhooks.url IS 'Where pushes go (http or https); may carry credentials as basic auth. billhook_reader may not read it.';
COMMENT ON COLUMN billhook.webhooks.enabled IS 'Whether it gets pushes; false when disabled by hand or by billhook (then disabled_at is set).';
COMMENT ON COLUMN billhook.webhooks.previous_signing_secret IS 'The secret before the last rotation, still signing until previous_secret_expires_at.';
COMMENT ON COLUMN billhook.webhooks.previous_secret_expires_at IS 'When previous_signing_secret stops signing.';
COMMENT ON COLUMN billhook.webhooks.last_http_status IS 'HTTP status of the last answer (NULL: none, a network error).';
COMMENT ON COLUMN billhook.webhooks.last_http_body IS 'The first billhook.max_response_body bytes of the last answer.';
COMMENT ON COLUMN billhook.webhooks.last_success_at IS 'When a push last succeeded.';
COMMENT ON COLUMN billhook.webhooks.disabled_reason IS 'Why billhook disabled it (failing for days, 410 Gone, a setting it cannot use).';
COMMENT ON COLUMN billhook.webhooks.previous_signing_key IS 'The ed25519 key before the last rotation, still signing until previous_key_expires_at.';
COMMENT ON COLUMN billhook.webhooks.previous_key_expires_at IS 'When previous_signing_key stops signing.';
COMMENT ON COLUMN billhook.webhook_health_log.webhook_id IS 'The webhook.';
COMMENT ON COLUMN billhook.webhook_health_log.logged_at IS 'When its health changed.';
COMMENT ON COLUMN billhook.webhook_health_log.change IS 'disabled (by billhook or by hand), enabled or stopped (a hold ended by hand).';
COMMENT ON COLUMN billhook.webhook_health_log.reason IS 'Why, as billhook or the change says.';
COMMENT ON COLUMN billhook.webhook_health_log.consecutive_failures IS 'Failed attempts in a row at that moment.';
COMMENT ON COLUMN billhook.webhook_health_log.failing_since IS 'Since when it was failing at that moment.';

COMMENT ON COLUMN billhook.events.event_type IS 'The event''s name (billhook.event_types).';
COMMENT ON COLUMN billhook.events.entity_type IS 'The kind of entity (Customer, Invoice, ..., or a tracked table''s type).';
COMMENT ON COLUMN billhook.events.entity_id IS 'The entity''s id.';
COMMENT ON COLUMN billhook.events.state IS 'The entity''s state at commit, if it has one.';
COMMENT ON COLUMN billhook.events.occurred_at IS 'When the event was written (at its transaction''s commit).';
COMMENT ON COLUMN billhook.events.transaction_id IS 'The transaction that wrote it, for the fan-out''s snapshots (0: restored, or applied by logical replication).';
COMMENT ON COLUMN billhook.deliveries.event_id IS 'The event delivered.';
COMMENT ON COLUMN billhook.deliveries.webhook_id IS 'The webhook it goes to.';
COMMENT ON COLUMN billhook.deliveries.idempotency_key IS 'The push''s Idempotency-Key and webhook-id, the same on every attempt (billhook.delivery_key).';
COMMENT ON COLUMN billhook.deliveries.status IS 'pending, succeeded or failed (its last retry failed, or it was set apart with last_error saying why).';
COMMENT ON COLUMN billhook.deliveries.attempts IS 'Attempts made (0 .. 1,000,000).';
COMMENT ON COLUMN billhook.deliveries.next_attempt_at IS 'When a pending delivery is due (a finite time).';
COMMENT ON COLUMN billhook.deliveries.last_attempt_at IS 'When the last attempt started.';
COMMENT ON COLUMN billhook.deliveries.last_http_status IS 'HTTP status of the last answer (NULL: none).';
COMMENT ON COLUMN billhook.deliveries.last_error IS 'Why the last attempt failed without an answer, or why billhook set the delivery apart.';
COMMENT ON COLUMN billhook.deliveries.last_duration_ms IS 'How long the last attempt took, in milliseconds.';
COMMENT ON COLUMN billhook.deliveries.delivered_at IS 'When the receiver''s answer of success arrived.';
COMMENT ON COLUMN billhook.deliveries.locked_by IS 'The process id of the worker holding its lease.';
COMMENT ON COLUMN billhook.delivery_attempts.delivery_id IS 'The delivery.';
COMMENT ON COLUMN billhook.delivery_attempts.webhook_id IS 'Its webhook.';
COMMENT ON COLUMN billhook.delivery_attempts.attempt IS 'The attempt''s number (1 for the first).';
COMMENT ON COLUMN billhook.delivery_attempts.attempted_at IS 'When it started.';
COMMENT ON COLUMN billhook.delivery_attempts.duration_ms IS 'How long it took, in milliseconds.';
COMMENT ON COLUMN billhook.delivery_attempts.http_status IS 'HTTP status of the answer (NULL: none).';
COMMENT ON COLUMN billhook.delivery_attempts.response_body IS 'The first billhook.max_response_body bytes of the answer.';
COMMENT ON COLUMN billhook.delivery_attempts.error IS 'Why it failed without an answer (timeout, refused, TLS, ...).';
COMMENT ON COLUMN billhook.delivery_attempts.succeeded IS 'Whether the answer was a success (2xx).';
COMMENT ON COLUMN billhook.delivery_counters.webhook_id IS 'The webhook counted.';
COMMENT ON COLUMN billhook.delivery_counters.counter IS 'What is counted (billhook.metrics() names).';
COMMENT ON COLUMN billhook.delivery_counters.value IS 'The count so far.';

COMMENT ON COLUMN billhook.fan_out_owed.event_id IS 'The event.';
COMMENT ON COLUMN billhook.fan_out_owed.webhook_id IS 'The webhook owed its delivery (no foreign key: it may be locked, deleted or not restored yet).';
COMMENT ON COLUMN billhook.fan_out_owed.owed_since IS 'Since when it is owed.';
COMMENT ON COLUMN billhook.fan_out_owed.restored IS 'Restored from a dump: kept until its webhook is restored too.';
COMMENT ON COLUMN billhook.fan_out_state.singleton IS 'Always true: the table has one row.';
COMMENT ON COLUMN billhook.fan_out_state.done IS 'Every event of a transaction visible in this snapshot has its deliveries.';
COMMENT ON COLUMN billhook.fan_out_state.pass IS 'The snapshot of a pass under way (taken a batch at a time), NULL between passes.';
COMMENT ON COLUMN billhook.fan_out_state.after_transaction_id IS 'The pass under way''s last event taken: its transaction.';
COMMENT ON COLUMN billhook.fan_out_state.after_event_id IS 'The pass under way''s last event taken: its id.';
COMMENT ON COLUMN billhook.fan_out_state.key_namespace IS 'This install''s part of every Idempotency-Key (a restore keeps the dumped one).';
COMMENT ON COLUMN billhook.fan_out_state.restored_pass IS 'See restored_done.';
COMMENT ON COLUMN billhook.fan_out_state.restored_after_transaction_id IS 'See restored_done.';
COMMENT ON COLUMN billhook.fan_out_state.restored_after_event_id IS 'See restored_done.';
COMMENT ON COLUMN billhook.restored_events.event_id IS 'The restored event.';
COMMENT ON COLUMN billhook.restored_events.transaction_id IS 'Its transaction in the dumping cluster, until judged; NULL: judged not fanned out, owed to every webhook restored.';
COMMENT ON COLUMN billhook.tenant_isolation_settings.singleton IS 'Always true: the table has at most one row.';
COMMENT ON COLUMN billhook.tenant_isolation_settings.enabled_at IS 'When tenant isolation was turned on.';
COMMENT ON COLUMN billhook.tracked_tables.relation IS 'The tracked table.';
COMMENT ON COLUMN billhook.tracked_tables.entity_type IS 'The entity type of its events.';
COMMENT ON COLUMN billhook.tracked_tables.category IS 'The category of its events (<category>.created, ...).';
COMMENT ON COLUMN billhook.tracked_tables.id_column IS 'The column that is the entity''s id.';
COMMENT ON COLUMN billhook.tracked_tables.administration_column IS 'The column naming the administration (NULL: administration 1).';
COMMENT ON COLUMN billhook.tracked_tables.state_column IS 'The column that is the entity''s state, if any.';
COMMENT ON COLUMN billhook.tracked_tables.state_events IS 'State value -> event name: a move into the state emits that event too.';
COMMENT ON COLUMN billhook.tracked_tables.excluded_columns IS 'Columns left out of the entity.';
COMMENT ON COLUMN billhook.tracked_tables.tracked_at IS 'When the table was tracked.';

COMMENT ON COLUMN billhook.webhook_overview.url IS 'The webhook''s URL as readers see it: scheme, host and port (billhook.redact_url).';
COMMENT ON COLUMN billhook.webhook_health.url IS 'The webhook''s URL as readers see it: scheme, host and port (billhook.redact_url).';

-- The views' columns say what the same column of the table they show says.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT v.relname AS view_name, a.attname, pg_catalog.col_description(t.oid, b.attnum) AS description
        FROM pg_catalog.pg_class AS v
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = v.oid AND a.attnum > 0
        JOIN pg_catalog.pg_class AS t ON t.relnamespace = v.relnamespace
         AND t.relname = CASE v.relname WHEN 'delivery_status' THEN 'deliveries' ELSE 'webhooks' END
        JOIN pg_catalog.pg_attribute AS b ON b.attrelid = t.oid AND b.attname = a.attname AND b.attnum > 0
        WHERE v.relnamespace = 'billhook'::pg_catalog.regnamespace AND v.relkind = 'v'
          AND pg_catalog.col_description(v.oid, a.attnum) IS NULL
          AND pg_catalog.col_description(t.oid, b.attnum) IS NOT NULL
        ORDER BY 1, 2
    LOOP
        EXECUTE pg_catalog.format('COMMENT ON COLUMN billhook.%I.%I IS %L', col.view_name, col.attname,
                                  col.description);
    END LOOP;
END
$$;

COMMENT ON COLUMN billhook.delivery_status.url IS 'The webhook''s URL as readers see it: scheme, host and port (billhook.redact_url).';
COMMENT ON COLUMN billhook.delivery_status.event_type IS 'The event''s name.';
COMMENT ON COLUMN billhook.delivery_status.entity_type IS 'The kind of entity the event is about.';
COMMENT ON COLUMN billhook.delivery_status.entity_id IS 'The entity''s id.';
COMMENT ON COLUMN billhook.delivery_status.latency IS 'From the event''s commit to the receiver''s answer of success.';
COMMENT ON COLUMN billhook.webhook_overview.header_names IS 'The names of the webhook''s own headers (their values stay hidden).';
COMMENT ON COLUMN billhook.webhook_overview.pending_deliveries IS 'Its deliveries still pending.';
COMMENT ON COLUMN billhook.webhook_overview.succeeded_deliveries IS 'Its deliveries that succeeded (retention deletes them after billhook.retention).';
COMMENT ON COLUMN billhook.webhook_overview.failed_deliveries IS 'Its deliveries that failed.';
COMMENT ON COLUMN billhook.webhook_health.health IS 'healthy, failing, auto_disabled (by billhook, deliveries held) or disabled (by hand).';
COMMENT ON COLUMN billhook.webhook_health.pending_deliveries IS 'Its deliveries still pending (held, while billhook keeps it disabled).';
COMMENT ON COLUMN billhook.webhook_health.earliest_disable_at IS 'When billhook disables a failing webhook at the earliest, if it keeps failing.';
