-- Webhook management and document functions. They run with the caller's rights: grant an
-- application role what it should manage (see docs/operations.md, "Privileges").

-- Raises no_data_found unless the webhook row (from UPDATE/DELETE ... RETURNING INTO) exists.
CREATE FUNCTION billhook.webhook_found(webhook billhook.webhooks, requested_id bigint) RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
BEGIN
    IF webhook.id IS NULL THEN
        RAISE EXCEPTION 'webhook % does not exist', coalesce(requested_id::text, 'NULL')
            USING ERRCODE = 'no_data_found', HINT = 'billhook.webhook_overview lists the existing webhooks.';
    END IF;
    RETURN webhook;
END
$$;

-- Adds an event type to the catalog: webhooks subscribe to it by name, by its category or by `*`
-- (those with `*` take it in at once). The name is `<category>.<action>` in a category of its own;
-- 22023 otherwise, 42710 when the name exists.
CREATE FUNCTION billhook.register_event_type(name text, category text, description text DEFAULT '')
RETURNS billhook.event_types
LANGUAGE plpgsql AS $$
DECLARE
    registered billhook.event_types;
BEGIN
    BEGIN
        INSERT INTO billhook.event_types (name, category, description)
        VALUES (register_event_type.name, register_event_type.category, coalesce(register_event_type.description, ''))
        RETURNING * INTO registered;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'event type "%" exists', register_event_type.name
            USING ERRCODE = 'duplicate_object', HINT = 'billhook.event_types lists the event types.';
    END;
    UPDATE billhook.webhooks AS w SET subscribed_events = NULL WHERE '*' = ANY (w.enabled_events);
    RETURN registered;
END
$$;

-- Unless verify is false, the URL must answer a signed webhook.verification push with HTTP 200
-- (Moneybird's registration check); otherwise 22023 and nothing is saved. administration_id NULL:
-- the session's (billhook.administration_id), else 1.
CREATE FUNCTION billhook.create_webhook(
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
    payload_format text DEFAULT 'billhook',
    payload text DEFAULT 'full',
    filter text DEFAULT NULL,
    signature text DEFAULT 'hmac'
) RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    created billhook.webhooks;
BEGIN
    INSERT INTO billhook.webhooks (url, enabled_events, administration_id, enabled, headers, retry_schedule,
                                   request_timeout, max_in_flight, max_requests_per_second, ordering,
                                   payload_format, payload, filter, signature)
    VALUES (create_webhook.url, coalesce(create_webhook.enabled_events, '{}'),
            coalesce(create_webhook.administration_id, billhook.default_administration_id()), create_webhook.enabled,
            coalesce(create_webhook.headers, '{}'),
            create_webhook.retry_schedule, create_webhook.request_timeout, create_webhook.max_in_flight,
            create_webhook.max_requests_per_second, coalesce(create_webhook.ordering, 'none'),
            coalesce(create_webhook.payload_format, 'billhook'), coalesce(create_webhook.payload, 'full'),
            billhook.webhook_filter(create_webhook.filter), coalesce(create_webhook.signature, 'hmac'))
    RETURNING * INTO created;
    IF verify THEN
        PERFORM billhook.verify_endpoint(created.id, created.administration_id, created.url, created.token,
                                         array_to_string(billhook.signing_keys(created), ' '),
                                         created.enabled_events, created.headers,
                                         billhook.json_time(clock_timestamp()));
    END IF;
    RETURN created;
END
$$;
COMMENT ON FUNCTION billhook.create_webhook(text, text[], bigint, boolean, boolean, jsonb, text, interval, integer,
                                     double precision, text, text, text, text, text) IS
    'Registers a webhook after checking that its URL answers 200; returns it with its token and signing secret.';

-- NULL arguments leave the column unchanged; pass '{}' as enabled_events to return to the default,
-- '{}' as headers for none, '' as filter for none; reset_webhook_settings returns to the global
-- settings.
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
    payload_format text DEFAULT NULL,
    payload text DEFAULT NULL,
    filter text DEFAULT NULL,
    signature text DEFAULT NULL
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
        payload_format = coalesce(update_webhook.payload_format, w.payload_format),
        payload = coalesce(update_webhook.payload, w.payload),
        filter = CASE WHEN update_webhook.filter IS NULL THEN w.filter ELSE billhook.webhook_filter(update_webhook.filter) END,
        signature = coalesce(update_webhook.signature, w.signature)
    WHERE w.id = update_webhook.id
    RETURNING w.* INTO changed;
    RETURN billhook.webhook_found(changed, update_webhook.id);
END
$$;

CREATE FUNCTION billhook.enable_webhook(id bigint) RETURNS billhook.webhooks
LANGUAGE sql RETURN billhook.update_webhook(enable_webhook.id, enabled => true);

CREATE FUNCTION billhook.disable_webhook(id bigint) RETURNS billhook.webhooks
LANGUAGE sql RETURN billhook.update_webhook(disable_webhook.id, enabled => false);

-- The webhook's own settings (retry_schedule, request_timeout, max_in_flight) back to the global
-- ones, and no rate limit.
CREATE FUNCTION billhook.reset_webhook_settings(id bigint) RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    changed billhook.webhooks;
BEGIN
    UPDATE billhook.webhooks AS w
    SET retry_schedule = NULL, request_timeout = NULL, max_in_flight = NULL, max_requests_per_second = NULL
    WHERE w.id = reset_webhook_settings.id
    RETURNING w.* INTO changed;
    RETURN billhook.webhook_found(changed, reset_webhook_settings.id);
END
$$;

-- Deletes the webhook and its deliveries (pending ones are never sent). Returns the deleted row.
CREATE FUNCTION billhook.delete_webhook(id bigint) RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    deleted billhook.webhooks;
BEGIN
    DELETE FROM billhook.webhooks AS w WHERE w.id = delete_webhook.id RETURNING w.* INTO deleted;
    RETURN billhook.webhook_found(deleted, delete_webhook.id);
END
$$;

CREATE FUNCTION billhook.rotate_token(id bigint) RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    changed billhook.webhooks;
BEGIN
    UPDATE billhook.webhooks AS w SET token = billhook.generate_token()
    WHERE w.id = rotate_token.id
    RETURNING w.* INTO changed;
    RETURN billhook.webhook_found(changed, rotate_token.id);
END
$$;

-- When a rotated-out secret or key stops signing: grace from now, which must be zero or more.
CREATE FUNCTION billhook.rotation_expiry(grace interval) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF grace IS NULL OR grace < interval '0' THEN
        RAISE EXCEPTION 'invalid grace period %', coalesce(grace::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use an interval of zero or more, such as ''24 hours''.';
    END IF;
    RETURN now() + grace;
END
$$;

-- The old secret keeps signing (next to the new one) until grace has passed, so receivers can
-- switch without rejecting pushes.
CREATE FUNCTION billhook.rotate_secret(id bigint, grace interval DEFAULT '24 hours') RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    changed billhook.webhooks;
BEGIN
    UPDATE billhook.webhooks AS w
    SET previous_signing_secret = w.signing_secret,
        previous_secret_expires_at = billhook.rotation_expiry(grace),
        signing_secret = billhook.generate_signing_secret()
    WHERE w.id = rotate_secret.id
    RETURNING w.* INTO changed;
    RETURN billhook.webhook_found(changed, rotate_secret.id);
END
$$;

-- The keys a push to the webhook is signed with, as signature chooses, a rotated-out one while its
-- grace lasts: whsec_ secrets (v1) first, then whsk_ keys (v1a).
CREATE FUNCTION billhook.signing_keys(webhook billhook.webhooks) RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT array_remove(ARRAY[
        CASE WHEN webhook.signature IN ('hmac', 'both') THEN webhook.signing_secret END,
        CASE WHEN webhook.signature IN ('hmac', 'both') AND webhook.previous_secret_expires_at > now()
             THEN webhook.previous_signing_secret END,
        CASE WHEN webhook.signature IN ('ed25519', 'both') THEN webhook.signing_key END,
        CASE WHEN webhook.signature IN ('ed25519', 'both') AND webhook.previous_key_expires_at > now()
             THEN webhook.previous_signing_key END], NULL)
$$;

-- A new ed25519 key pair; the old private key keeps signing (next to the new one) until grace has
-- passed, and its public key stays in previous_public_key meanwhile.
CREATE FUNCTION billhook.rotate_signing_key(id bigint, grace interval DEFAULT '24 hours') RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    changed billhook.webhooks;
BEGIN
    UPDATE billhook.webhooks AS w
    SET previous_signing_key = w.signing_key,
        previous_key_expires_at = billhook.rotation_expiry(grace),
        signing_key = billhook.generate_signing_key()
    WHERE w.id = rotate_signing_key.id
    RETURNING w.* INTO changed;
    RETURN billhook.webhook_found(changed, rotate_signing_key.id);
END
$$;

COMMENT ON FUNCTION billhook.redact_url(text) IS
    'A webhook URL as the views and operational events show it: scheme, host and port, with credentials, path and query each shown as ***. A URL''s path or query is often its secret; billhook_reader may not read webhooks.url.';

-- The views run with their owner's rights (reading the secrets they leave out), so they keep to
-- the caller's administration under tenant isolation themselves; security_barrier keeps a
-- caller's own functions from seeing the rows they leave out.
CREATE VIEW billhook.webhook_overview WITH (security_barrier) AS
SELECT w.id, w.administration_id, billhook.redact_url(w.url) AS url, w.enabled, w.enabled_events, w.subscribed_events,
       w.last_http_status, w.last_http_body,
       count(d.id) FILTER (WHERE d.status = 'pending') AS pending_deliveries,
       count(d.id) FILTER (WHERE d.status = 'succeeded') AS succeeded_deliveries,
       count(d.id) FILTER (WHERE d.status = 'failed') AS failed_deliveries,
       w.created_at, w.updated_at,
       ARRAY(SELECT name FROM jsonb_object_keys(w.headers) AS h(name) ORDER BY lower(name)) AS header_names,
       w.retry_schedule, w.request_timeout, w.max_in_flight, w.max_requests_per_second, w.ordering,
       w.payload_format, w.exact_events, w.payload, w.filter, w.signature, w.public_key, w.previous_public_key
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
CREATE VIEW billhook.webhook_health WITH (security_barrier) AS
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

-- The registration check makes the database host send a request to any URL and reports what came
-- back: only roles that manage webhooks may run it (see docs/operations.md, "Privileges").
REVOKE ALL ON FUNCTION billhook.verify_endpoint(bigint, bigint, text, text, text, text[], jsonb, text) FROM PUBLIC;

-- Creates an invoice from a quotation and its lines and marks the quotation billed: the commit
-- emits invoice.created, quotation.updated and quotation.converted.
CREATE FUNCTION billhook.convert_quotation(quotation_id bigint) RETURNS billhook.invoices
LANGUAGE plpgsql AS $$
DECLARE
    q billhook.quotations;
    created billhook.invoices;
BEGIN
    SELECT * INTO q FROM billhook.quotations AS qt WHERE qt.id = convert_quotation.quotation_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'quotation % does not exist', coalesce(convert_quotation.quotation_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    IF q.state = 'billed' OR q.invoice_id IS NOT NULL THEN
        RAISE EXCEPTION 'quotation % is already converted to invoice %', q.id, coalesce(q.invoice_id::text, '(deleted)')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A quotation is converted once; change the existing invoice instead.';
    END IF;
    INSERT INTO billhook.invoices (administration_id, customer_id, currency, discount, reference, language)
    VALUES (q.administration_id, q.customer_id, q.currency, q.discount, q.reference, q.language)
    RETURNING * INTO created;
    INSERT INTO billhook.invoice_lines (administration_id, invoice_id, description, amount, price, tax_rate, row_order)
    SELECT l.administration_id, created.id, l.description, l.amount, l.price, l.tax_rate, l.row_order
    FROM billhook.quotation_lines AS l
    WHERE l.quotation_id = q.id
    ORDER BY l.row_order, l.id;
    UPDATE billhook.quotations AS qt SET state = 'billed', invoice_id = created.id WHERE qt.id = q.id;
    RETURN created;
END
$$;
