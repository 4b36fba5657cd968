-- billhook 0.3.0 → 0.4.0 (ALTER EXTENSION billhook UPDATE): webhooks get headers of their own,
-- checked like their URL, their own retry schedule, request timeout and in-flight cap, and a rate
-- limit; the registration check sends the headers (billhook.verify_endpoint replaces
-- billhook.check_endpoint). Hand-written; tests/test_upgrade.py checks that an upgraded install has
-- exactly the objects of a fresh 0.4.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

CREATE FUNCTION billhook.check_webhook_headers(headers jsonb, url text) RETURNS bool
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_webhook_headers_wrapper';

CREATE FUNCTION billhook.verify_endpoint(
    webhook_id bigint, administration_id bigint, url text, token text, signing_secret text,
    enabled_events text[], headers jsonb, checked_at text
) RETURNS bool
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'verify_endpoint_wrapper';
REVOKE ALL ON FUNCTION billhook.verify_endpoint(bigint, bigint, text, text, text, text[], jsonb, text) FROM PUBLIC;

CREATE FUNCTION billhook.check_webhook_settings(
    retry_schedule text, request_timeout_ms double precision, max_in_flight integer,
    max_requests_per_second double precision
) RETURNS bool
IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_webhook_settings_wrapper';

ALTER TABLE billhook.webhooks
    ADD COLUMN headers jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN retry_schedule text,
    ADD COLUMN request_timeout interval,
    ADD COLUMN max_in_flight integer,
    ADD COLUMN max_requests_per_second double precision,
    ADD CONSTRAINT webhooks_headers_check CHECK (billhook.check_webhook_headers(headers, url)),
    ADD CONSTRAINT webhooks_settings_check
        CHECK (billhook.check_webhook_settings(retry_schedule, extract(epoch FROM request_timeout)::float8 * 1000,
                                               max_in_flight, max_requests_per_second));
COMMENT ON COLUMN billhook.webhooks.headers IS
    'Headers sent with every push, as a JSON object of names to string values (e.g. a bearer token).';
COMMENT ON COLUMN billhook.webhooks.retry_schedule IS 'This webhook''s billhook.retry_schedule; NULL: the setting''s.';
COMMENT ON COLUMN billhook.webhooks.request_timeout IS 'This webhook''s billhook.request_timeout; NULL: the setting''s.';
COMMENT ON COLUMN billhook.webhooks.max_in_flight IS
    'This webhook''s billhook.max_in_flight_per_webhook; NULL: the setting''s.';
COMMENT ON COLUMN billhook.webhooks.max_requests_per_second IS
    'Pushes per second this webhook receives at most; NULL: no limit.';

-- New arguments at the end: calls that name or position the old ones keep working.
DROP FUNCTION billhook.enable_webhook(bigint);
DROP FUNCTION billhook.disable_webhook(bigint);
DROP FUNCTION billhook.update_webhook(bigint, text, text[], boolean);
DROP FUNCTION billhook.create_webhook(text, text[], bigint, boolean, boolean);
DROP FUNCTION billhook.check_endpoint(bigint, bigint, text, text, text, text[], text);

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
    max_requests_per_second double precision DEFAULT NULL
) RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    created billhook.webhooks;
BEGIN
    INSERT INTO billhook.webhooks (url, enabled_events, administration_id, enabled, headers, retry_schedule,
                                   request_timeout, max_in_flight, max_requests_per_second)
    VALUES (create_webhook.url, coalesce(create_webhook.enabled_events, '{}'),
            create_webhook.administration_id, create_webhook.enabled, coalesce(create_webhook.headers, '{}'),
            create_webhook.retry_schedule, create_webhook.request_timeout, create_webhook.max_in_flight,
            create_webhook.max_requests_per_second)
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
                                     double precision) IS
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
    max_requests_per_second double precision DEFAULT NULL
) RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    changed billhook.webhooks;
BEGIN
    UPDATE billhook.webhooks AS w
    SET url = coalesce(update_webhook.url, w.url),
        enabled_events = coalesce(update_webhook.enabled_events, w.enabled_events),
        enabled = coalesce(update_webhook.enabled, w.enabled),
        headers = coalesce(update_webhook.headers, w.headers),
        retry_schedule = coalesce(update_webhook.retry_schedule, w.retry_schedule),
        request_timeout = coalesce(update_webhook.request_timeout, w.request_timeout),
        max_in_flight = coalesce(update_webhook.max_in_flight, w.max_in_flight),
        max_requests_per_second = coalesce(update_webhook.max_requests_per_second, w.max_requests_per_second)
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

CREATE OR REPLACE VIEW billhook.webhook_overview AS
SELECT w.id, w.administration_id, billhook.redact_url(w.url) AS url, w.enabled, w.enabled_events, w.subscribed_events,
       w.last_http_status, w.last_http_body,
       count(d.id) FILTER (WHERE d.status = 'pending') AS pending_deliveries,
       count(d.id) FILTER (WHERE d.status = 'succeeded') AS succeeded_deliveries,
       count(d.id) FILTER (WHERE d.status = 'failed') AS failed_deliveries,
       w.created_at, w.updated_at,
       ARRAY(SELECT name FROM jsonb_object_keys(w.headers) AS h(name) ORDER BY lower(name)) AS header_names,
       w.retry_schedule, w.request_timeout, w.max_in_flight, w.max_requests_per_second
FROM billhook.webhooks AS w
LEFT JOIN billhook.deliveries AS d ON d.webhook_id = w.id
GROUP BY w.id;
COMMENT ON VIEW billhook.webhook_overview IS
    'Webhooks without their token, secret, URL credentials and header values, with delivery counts.';
