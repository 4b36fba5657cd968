-- billhook 0.4.0 → 0.5.0 (ALTER EXTENSION billhook UPDATE): webhooks may have their pushes about
-- one entity delivered in order (webhooks.ordering, checked by billhook.check_webhook_choice).
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.5.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

CREATE FUNCTION billhook.check_webhook_choice(option text, value text) RETURNS bool
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_webhook_choice_wrapper';

ALTER TABLE billhook.webhooks
    ADD COLUMN ordering text NOT NULL DEFAULT 'none',
    ADD CONSTRAINT webhooks_ordering_check CHECK (billhook.check_webhook_choice('ordering', ordering));
COMMENT ON COLUMN billhook.webhooks.ordering IS
    'entity: pushes about one entity reach the webhook one at a time, in event order; none: in parallel.';

-- An entity's events in order: the previous push of a webhook ordered by entity.
DROP INDEX billhook.events_entity_type_entity_id_idx;
CREATE INDEX events_entity ON billhook.events (entity_type, entity_id, id);

-- New arguments at the end: calls that name or position the old ones keep working.
DROP FUNCTION billhook.enable_webhook(bigint);
DROP FUNCTION billhook.disable_webhook(bigint);
DROP FUNCTION billhook.update_webhook(bigint, text, text[], boolean, jsonb, text, interval, integer, double precision);
DROP FUNCTION billhook.create_webhook(text, text[], bigint, boolean, boolean, jsonb, text, interval, integer,
                                      double precision);

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
    ordering text DEFAULT 'none'
) RETURNS billhook.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    created billhook.webhooks;
BEGIN
    INSERT INTO billhook.webhooks (url, enabled_events, administration_id, enabled, headers, retry_schedule,
                                   request_timeout, max_in_flight, max_requests_per_second, ordering)
    VALUES (create_webhook.url, coalesce(create_webhook.enabled_events, '{}'),
            create_webhook.administration_id, create_webhook.enabled, coalesce(create_webhook.headers, '{}'),
            create_webhook.retry_schedule, create_webhook.request_timeout, create_webhook.max_in_flight,
            create_webhook.max_requests_per_second, coalesce(create_webhook.ordering, 'none'))
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
                                     double precision, text) IS
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
    ordering text DEFAULT NULL
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
        ordering = coalesce(update_webhook.ordering, w.ordering)
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
CREATE OR REPLACE FUNCTION billhook.reset_webhook_settings(id bigint) RETURNS billhook.webhooks
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
       w.retry_schedule, w.request_timeout, w.max_in_flight, w.max_requests_per_second, w.ordering
FROM billhook.webhooks AS w
LEFT JOIN billhook.deliveries AS d ON d.webhook_id = w.id
GROUP BY w.id;
COMMENT ON VIEW billhook.webhook_overview IS
    'Webhooks without their token, secret, URL credentials and header values, with delivery counts.';
