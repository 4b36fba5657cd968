-- billhook 0.4.0 → 0.5.0 (ALTER EXTENSION billhook UPDATE): webhooks may have their pushes about
-- one entity delivered in order (webhooks.ordering, checked by billhook.check_webhook_choice);
-- reporting functions billhook.webhook_stats and billhook.delivery_report; billhook.metrics() with the
-- worker's counters in billhook.delivery_counters.
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.5.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

CREATE FUNCTION billhook.check_webhook_choice(option text, value text) RETURNS bool
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_webhook_choice_wrapper';

CREATE FUNCTION billhook.metrics() RETURNS text
STABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'metrics_wrapper';

ALTER TABLE billhook.webhooks
    ADD COLUMN ordering text NOT NULL DEFAULT 'none',
    ADD CONSTRAINT webhooks_ordering_check CHECK (billhook.check_webhook_choice('ordering', ordering));
COMMENT ON COLUMN billhook.webhooks.ordering IS
    'entity: pushes about one entity reach the webhook one at a time, in event order; none: in parallel.';

-- An entity's events in order: the previous push of a webhook ordered by entity.
DROP INDEX billhook.events_entity_type_entity_id_idx;
CREATE INDEX events_entity ON billhook.events (entity_type, entity_id, id);

-- billhook.delivery_report reads attempts by time; they are written in time order, so a BRIN index
-- serves it at almost no cost to the worker's writes.
CREATE INDEX delivery_attempts_time ON billhook.delivery_attempts USING brin (attempted_at);

-- The worker's counters per webhook, for billhook.metrics(): attempts by HTTP status class and the
-- commit → acknowledgement latency histogram (its buckets apart, and the sum). Only ever added to,
-- in the transaction that records the attempts, so they agree with delivery_attempts until the
-- retention purges attempts; they go with their webhook.
CREATE TABLE billhook.delivery_counters (
    webhook_id  bigint NOT NULL REFERENCES billhook.webhooks ON DELETE CASCADE,
    counter     text NOT NULL,
    value       double precision NOT NULL,
    PRIMARY KEY (webhook_id, counter)
);

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

-- Raises 22023 unless [since, until) is a window of time.
CREATE FUNCTION billhook.check_report_window(since timestamptz, until timestamptz) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF since IS NULL OR until IS NULL OR since >= until THEN
        RAISE EXCEPTION 'invalid window [%, %)', coalesce(since::text, 'NULL'), coalesce(until::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'since must be before until.';
    END IF;
END
$$;

-- Per webhook and event type, the deliveries of the events that occurred in [since, until): how
-- many, their attempts (of their current round: a replay starts afresh), how many succeeded, failed
-- or are pending, the success rate of those that ended, and the commit → acknowledgement latency of
-- the succeeded ones (from the event's time to the end of the successful attempt); and, whatever
-- the window, the pair's backlog (pending deliveries) and how long ago its oldest event occurred.
CREATE FUNCTION billhook.webhook_stats(
    since timestamptz DEFAULT now() - interval '1 hour',
    until timestamptz DEFAULT now()
) RETURNS TABLE (
    webhook_id bigint, event_type text, deliveries bigint, attempts bigint, succeeded bigint, failed bigint,
    pending bigint, success_rate double precision, latency_p50 interval, latency_p95 interval,
    latency_p99 interval, backlog bigint, oldest_pending_age interval
)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    PERFORM billhook.check_report_window(since, until);
    RETURN QUERY
    WITH windowed AS (
        SELECT d.webhook_id, e.event_type, count(*) AS deliveries, sum(d.attempts)::bigint AS attempts,
               count(*) FILTER (WHERE d.status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE d.status = 'failed') AS failed,
               count(*) FILTER (WHERE d.status = 'pending') AS pending,
               percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY d.delivered_at - e.occurred_at)
                   FILTER (WHERE d.status = 'succeeded') AS latency
        FROM billhook.events AS e
        JOIN billhook.deliveries AS d ON d.event_id = e.id
        WHERE e.occurred_at >= since AND e.occurred_at < until
        GROUP BY d.webhook_id, e.event_type
    ), waiting AS (
        SELECT d.webhook_id, e.event_type, count(*) AS backlog, now() - min(e.occurred_at) AS oldest_pending_age
        FROM billhook.deliveries AS d
        JOIN billhook.events AS e ON e.id = d.event_id
        WHERE d.status = 'pending'
        GROUP BY d.webhook_id, e.event_type
    )
    SELECT webhook_id, event_type, coalesce(w.deliveries, 0), coalesce(w.attempts, 0), coalesce(w.succeeded, 0),
           coalesce(w.failed, 0), coalesce(w.pending, 0),
           w.succeeded::double precision / nullif(w.succeeded + w.failed, 0),
           w.latency[1], w.latency[2], w.latency[3], coalesce(q.backlog, 0), q.oldest_pending_age
    FROM windowed AS w
    FULL JOIN waiting AS q USING (webhook_id, event_type)
    ORDER BY webhook_id, event_type;
END
$$;
COMMENT ON FUNCTION billhook.webhook_stats(timestamptz, timestamptz) IS
    'Per webhook and event type: deliveries of the events in [since, until), outcomes, latency percentiles, backlog.';

-- A time series ready to plot: for each bucket of [since, until) (aligned to since, empty buckets
-- included), the attempts made in it, how many succeeded and failed, and the 95th percentile of the
-- commit → acknowledgement latency of the deliveries acknowledged in it; of one webhook, or of all.
CREATE FUNCTION billhook.delivery_report(
    since timestamptz,
    until timestamptz DEFAULT now(),
    bucket interval DEFAULT '1 minute',
    webhook_id bigint DEFAULT NULL
) RETURNS TABLE (bucket_start timestamptz, sent bigint, succeeded bigint, failed bigint, latency_p95 interval)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    PERFORM billhook.check_report_window(since, until);
    IF bucket IS NULL OR bucket <= interval '0' OR date_part('month', bucket) <> 0 OR date_part('year', bucket) <> 0
       OR extract(epoch FROM until - since) / extract(epoch FROM bucket) > 100000 THEN
        RAISE EXCEPTION 'invalid bucket %', coalesce(bucket::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use a positive interval of no months, at most 100,000 of which fit in the window.';
    END IF;
    RETURN QUERY
    WITH attempted AS (
        SELECT date_bin(bucket, a.attempted_at, since) AS bucket_start, a.succeeded,
               CASE WHEN a.succeeded
                    THEN a.attempted_at + make_interval(secs => a.duration_ms / 1000.0) - e.occurred_at END AS latency
        FROM billhook.delivery_attempts AS a
        JOIN billhook.deliveries AS d ON d.id = a.delivery_id
        JOIN billhook.events AS e ON e.id = d.event_id
        WHERE a.attempted_at >= since AND a.attempted_at < until
          AND (delivery_report.webhook_id IS NULL OR a.webhook_id = delivery_report.webhook_id)
    ), per_bucket AS (
        SELECT bucket_start, count(*) AS sent, count(*) FILTER (WHERE succeeded) AS succeeded,
               count(*) FILTER (WHERE NOT succeeded) AS failed,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY latency) AS latency_p95
        FROM attempted
        GROUP BY bucket_start
    )
    SELECT b.bucket_start, coalesce(p.sent, 0), coalesce(p.succeeded, 0), coalesce(p.failed, 0), p.latency_p95
    FROM generate_series(since, until - interval '1 microsecond', bucket) AS b(bucket_start)
    LEFT JOIN per_bucket AS p USING (bucket_start)
    ORDER BY b.bucket_start;
END
$$;
COMMENT ON FUNCTION billhook.delivery_report(timestamptz, timestamptz, interval, bigint) IS
    'Attempts, successes, failures and p95 latency per time bucket, for plotting.';
