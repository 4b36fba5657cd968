-- billhook 0.5.0 → 0.6.0 (ALTER EXTENSION billhook UPDATE): payload formats per webhook
-- (webhooks.payload_format: billhook, moneybird, standard); subscriptions by Moneybird's event and
-- top-level names (webhooks.exact_events, billhook.moneybird_events); events keep the entity's
-- previous state (events.previous_state); invoice entities name the quotation they came from.
-- subscribed_events is no longer a generated column but kept by a trigger, which reads the payload
-- format too.
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.6.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

ALTER TABLE billhook.webhooks ALTER COLUMN subscribed_events DROP EXPRESSION;

CREATE FUNCTION billhook.expand_subscription(enabled_events text[], payload_format text) RETURNS text[]
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'expand_format_subscription_wrapper';

CREATE FUNCTION billhook.exact_subscription(enabled_events text[], payload_format text) RETURNS text[]
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'exact_subscription_wrapper';

CREATE FUNCTION billhook.moneybird_event(event_type text, state text, previous_state text, entity jsonb)
RETURNS text IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'moneybird_event_wrapper';

CREATE FUNCTION billhook.moneybird_catalog()
RETURNS TABLE ("position" integer, moneybird_event text, event_type text, condition text, moneybird_entity_type text)
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'moneybird_catalog_wrapper';

ALTER TABLE billhook.webhooks
    ADD COLUMN payload_format text NOT NULL DEFAULT 'billhook',
    ADD COLUMN exact_events text[],
    ADD CONSTRAINT webhooks_payload_format_check CHECK (billhook.check_webhook_choice('payload_format', payload_format));

CREATE FUNCTION billhook.keep_subscription() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.subscribed_events := billhook.expand_subscription(NEW.enabled_events, NEW.payload_format);
    NEW.exact_events := billhook.exact_subscription(NEW.enabled_events, NEW.payload_format);
    RETURN NEW;
END
$$;
CREATE TRIGGER keep_subscription BEFORE INSERT OR UPDATE OF enabled_events, payload_format, subscribed_events,
    exact_events ON billhook.webhooks FOR EACH ROW EXECUTE FUNCTION billhook.keep_subscription();

DROP TRIGGER note_webhooks_changed ON billhook.webhooks;
CREATE TRIGGER note_webhooks_changed
    AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF enabled, enabled_events, administration_id, payload_format
    ON billhook.webhooks FOR EACH STATEMENT EXECUTE FUNCTION billhook.note_webhooks_changed();

COMMENT ON COLUMN billhook.webhooks.enabled_events IS
    'Event names, category names, Moneybird event or top-level names, or * ; empty means invoice state changes (invoice.sent, .paid, .overdue, .cancelled; for payload_format moneybird: Moneybird''s sales_invoice_state_changed_to_*).';
COMMENT ON COLUMN billhook.webhooks.payload_format IS
    'billhook: billhook''s envelope; moneybird: Moneybird''s envelope, names and entity JSON; standard: the Standard Webhooks type/timestamp/data shape.';
COMMENT ON COLUMN billhook.webhooks.exact_events IS
    'When enabled_events names Moneybird events: the billhook and Moneybird names a push must have (billhook.moneybird_events); NULL: every push of subscribed_events.';

ALTER TABLE billhook.events ADD COLUMN previous_state text;
COMMENT ON COLUMN billhook.events.previous_state IS
    'The entity''s state when the event''s transaction began, if the transaction changed it; NULL otherwise.';

-- Moneybird's names of billhook's events, for webhooks with payload_format 'moneybird' and for
-- subscriptions by Moneybird names: a push is named by the first row (by position) of its event
-- whose condition holds. Filled from the extension's own list (billhook.moneybird_catalog()).
CREATE TABLE billhook.moneybird_events (
    position               integer PRIMARY KEY,
    moneybird_event        text NOT NULL,
    event_type             text NOT NULL REFERENCES billhook.event_types,
    condition              text,
    moneybird_entity_type  text NOT NULL
);
INSERT INTO billhook.moneybird_events
SELECT position, moneybird_event, event_type, condition, moneybird_entity_type FROM billhook.moneybird_catalog();

-- The invoice entity names the quotation it was converted from.
CREATE INDEX ON billhook.quotations (invoice_id);

-- New arguments at the end: calls that name or position the old ones keep working.
DROP FUNCTION billhook.enable_webhook(bigint);
DROP FUNCTION billhook.disable_webhook(bigint);
DROP FUNCTION billhook.update_webhook(bigint, text, text[], boolean, jsonb, text, interval, integer, double precision,
                                      text);
DROP FUNCTION billhook.create_webhook(text, text[], bigint, boolean, boolean, jsonb, text, interval, integer,
                                      double precision, text);

-- Unless verify is false, the URL must answer a signed webhook.verification push with HTTP 200
-- (Moneybird's registration check); otherwise 22023 and nothing is saved.
CREATE FUNCTION billhook.create_webhook(
    url text,
    enabled_events text[] DEFAULT NULL,
    administration_id bigint DEFAULT 1,
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
            create_webhook.administration_id, create_webhook.enabled, coalesce(create_webhook.headers, '{}'),
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

-- NULL arguments leave the column unchanged; pass '{}' as enabled_events to return to the default,
-- '{}' as headers for none; reset_webhook_settings returns to the global settings.
CREATE FUNCTION billhook.update_webhook(
    id bigint,
    url text DEFAULT NULL,
    enabled_events text[] DEFAULT NULL,
    enabled boolean DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    retry_schedule text DEFAULT NULL,
    request_timeout interval DEFAULT NULL,
    max_in_flight integer DEFAULT NULL,
    max_requests_per_second double precision DEFAULT NULL,
    ordering text DEFAULT NULL,
    payload_format text DEFAULT NULL
) RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    changed billhook.webhooks;
BEGIN
    UPDATE billhook.webhooks AS w
    SET url = coalesce(update_webhook.url, w.url),
        enabled_events = coalesce(update_webhook.enabled_events, w.enabled_events),
        enabled = coalesce(update_webhook.enabled, w.enabled),
        -- Enabled or disabled by hand, the webhook is no longer one billhook disabled.
        disabled_at = CASE WHEN update_webhook.enabled IS NULL THEN w.disabled_at END,
        disabled_reason = CASE WHEN update_webhook.enabled IS NULL THEN w.disabled_reason END,
        headers = coalesce(update_webhook.headers, w.headers),
        retry_schedule = coalesce(update_webhook.retry_schedule, w.retry_schedule),
        request_timeout = coalesce(update_webhook.request_timeout, w.request_timeout),
        max_in_flight = coalesce(update_webhook.max_in_flight, w.max_in_flight),
        max_requests_per_second = coalesce(update_webhook.max_requests_per_second, w.max_requests_per_second),
        ordering = coalesce(update_webhook.ordering, w.ordering),
        payload_format = coalesce(update_webhook.payload_format, w.payload_format)
    WHERE w.id = update_webhook.id
    RETURNING w.* INTO changed;
    RETURN billhook.webhook_found(changed, update_webhook.id);
END
$$;

CREATE FUNCTION billhook.enable_webhook(id bigint) RETURNS billhook.webhooks
LANGUAGE sql RETURN billhook.update_webhook(enable_webhook.id, enabled => true);

CREATE FUNCTION billhook.disable_webhook(id bigint) RETURNS billhook.webhooks
LANGUAGE sql RETURN billhook.update_webhook(disable_webhook.id, enabled => false);

CREATE OR REPLACE VIEW billhook.webhook_overview AS
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
GROUP BY w.id;
COMMENT ON VIEW billhook.webhook_overview IS
    'Webhooks without their token, secret, URL credentials and header values, with delivery counts.';

CREATE OR REPLACE FUNCTION billhook.invoice_json(invoice_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'id', i.id::text,
            'administration_id', i.administration_id::text,
            'customer_id', i.customer_id::text,
            'customer', billhook.customer_object(c),
            'invoice_number', i.invoice_number,
            'state', i.state,
            'invoice_date', i.invoice_date,
            'due_date', i.due_date,
            'currency', i.currency,
            'discount', i.discount::text,
            'reference', i.reference,
            'language', i.language,
            'payment_conditions', i.payment_conditions,
            'sent_at', billhook.json_time(i.sent_at),
            'paid_at', billhook.json_time(i.paid_at),
            'recurring_invoice_id', i.recurring_invoice_id::text,
            'quotation_id', (SELECT min(q.id)::text FROM billhook.quotations AS q WHERE q.invoice_id = i.id),
            'created_at', billhook.json_time(i.created_at),
            'updated_at', billhook.json_time(i.updated_at))
            || billhook.lines_and_totals('Invoice', i.id, i.discount)
        FROM billhook.invoices AS i
        JOIN billhook.customers AS c ON c.id = i.customer_id
        WHERE i.id = invoice_json.invoice_id);
END
$$;

-- The fan-out takes the pushes of a subscription by Moneybird names with those names only.
CREATE OR REPLACE FUNCTION billhook.fan_out(max_events integer DEFAULT 1000, wait boolean DEFAULT true,
                                 OUT events bigint, OUT deliveries bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    progress billhook.fan_out_state;
    this_pass pg_snapshot;
    -- Where the scan of transactions begun since the last pass starts: after the last event taken.
    from_transaction_id xid8;
    from_event_id bigint;
    last_transaction_id xid8;
    last_event_id bigint;
BEGIN
    IF max_events IS NULL OR max_events < 1 THEN
        RAISE EXCEPTION 'invalid max_events %', coalesce(max_events::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a positive number of events.';
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

    WITH batch AS (
        -- In progress at the last pass (a long transaction stays there without holding up others) ...
        (SELECT e.id, e.transaction_id, e.administration_id, e.event_type, e.occurred_at, e.state, e.previous_state,
                e.entity
         FROM billhook.events AS e
         WHERE e.transaction_id = ANY (ARRAY(SELECT pg_snapshot_xip(progress.done)))
           AND pg_visible_in_snapshot(e.transaction_id, this_pass)
           AND (e.transaction_id > progress.after_transaction_id
                OR (e.transaction_id = progress.after_transaction_id AND e.id > progress.after_event_id))
         ORDER BY e.transaction_id, e.id LIMIT max_events)
        UNION ALL
        -- ... or begun since.
        (SELECT e.id, e.transaction_id, e.administration_id, e.event_type, e.occurred_at, e.state, e.previous_state,
                e.entity
         FROM billhook.events AS e
         WHERE (e.transaction_id, e.id) > (from_transaction_id, from_event_id)
           AND e.transaction_id < pg_snapshot_xmax(this_pass)
           AND pg_visible_in_snapshot(e.transaction_id, this_pass)
         ORDER BY e.transaction_id, e.id LIMIT max_events)
        ORDER BY transaction_id, id LIMIT max_events
    ), created AS (
        INSERT INTO billhook.deliveries (event_id, webhook_id, idempotency_key)
        SELECT b.id, w.id, billhook.delivery_key(progress.key_namespace, b.id, w.id)
        FROM batch AS b
        JOIN billhook.webhooks AS w
          ON w.administration_id = b.administration_id AND (w.enabled OR w.disabled_at IS NOT NULL)
         AND b.event_type = ANY (w.subscribed_events) AND w.created_at <= b.occurred_at
         -- A subscription by Moneybird names takes the pushes with those names only.
         AND (w.exact_events IS NULL OR b.event_type = ANY (w.exact_events)
              OR billhook.moneybird_event(b.event_type, b.state, b.previous_state, b.entity) = ANY (w.exact_events))
        ORDER BY b.id, w.id
        ON CONFLICT (event_id, webhook_id) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM created),
           last.transaction_id, last.id
    INTO events, deliveries, last_transaction_id, last_event_id
    FROM (SELECT NULL) AS one
    LEFT JOIN (SELECT b.transaction_id, b.id FROM batch AS b ORDER BY b.transaction_id DESC, b.id DESC LIMIT 1) AS last
      ON true;

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
