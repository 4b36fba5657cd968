-- Re-queueing deliveries, and what the worker's state looks like from SQL.

-- Sends a delivery again as soon as possible, with the same Idempotency-Key. A failed or succeeded
-- delivery starts a fresh round of retries (attempts = 0; the attempt log keeps its history).
CREATE FUNCTION billhook.redeliver(delivery_id bigint) RETURNS billhook.deliveries
LANGUAGE plpgsql AS $$
DECLARE
    queued billhook.deliveries;
BEGIN
    UPDATE billhook.deliveries AS d
    SET status = 'pending',
        attempts = CASE WHEN d.status = 'pending' THEN d.attempts ELSE 0 END,
        next_attempt_at = now()
    WHERE d.id = redeliver.delivery_id
    RETURNING d.* INTO queued;
    IF queued.id IS NULL THEN
        RAISE EXCEPTION 'delivery % does not exist', coalesce(redeliver.delivery_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM billhook.wake_worker_at_commit();
    RETURN queued;
END
$$;

-- Re-queues a webhook's deliveries of events that occurred in [since, until): the failed ones, or
-- with only_failed => false also the succeeded ones. Returns how many were queued.
CREATE FUNCTION billhook.replay(
    webhook_id bigint,
    since timestamptz,
    until timestamptz DEFAULT 'infinity',
    only_failed boolean DEFAULT true
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    queued bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM billhook.webhooks AS w WHERE w.id = replay.webhook_id) THEN
        RAISE EXCEPTION 'webhook % does not exist', coalesce(replay.webhook_id::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    IF since IS NULL OR until IS NULL OR since >= until THEN
        RAISE EXCEPTION 'invalid replay window [%, %)', since, until
            USING ERRCODE = 'invalid_parameter_value', HINT = 'since must be before until.';
    END IF;
    UPDATE billhook.deliveries AS d
    SET status = 'pending', attempts = 0, next_attempt_at = now()
    FROM billhook.events AS e
    WHERE d.webhook_id = replay.webhook_id AND e.id = d.event_id
      AND e.occurred_at >= since AND e.occurred_at < until
      AND (d.status = 'failed' OR (d.status = 'succeeded' AND NOT only_failed));
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM billhook.wake_worker_at_commit();
    END IF;
    RETURN queued;
END
$$;

CREATE VIEW billhook.delivery_status AS
SELECT d.id, d.webhook_id, w.url, d.event_id, e.event_type, e.entity_type, e.entity_id, d.status,
       d.attempts, d.next_attempt_at, d.last_attempt_at, d.last_http_status, d.last_error,
       d.last_duration_ms, d.delivered_at, d.delivered_at - e.occurred_at AS latency, d.idempotency_key
FROM billhook.deliveries AS d
JOIN billhook.events AS e ON e.id = d.event_id
JOIN billhook.webhooks AS w ON w.id = d.webhook_id;
COMMENT ON VIEW billhook.delivery_status IS 'Deliveries with their event and webhook, for reporting.';

DO $$
BEGIN
    IF NOT (SELECT preloaded FROM billhook.worker_status()) THEN
        RAISE WARNING 'billhook is not in shared_preload_libraries: events are recorded, but nothing is delivered'
            USING HINT = 'Add billhook to shared_preload_libraries in postgresql.conf and restart PostgreSQL.';
    ELSIF current_setting('billhook.database') <> current_database() THEN
        RAISE WARNING 'the billhook worker delivers for database "%", not this one', current_setting('billhook.database')
            USING HINT = 'Set billhook.database to this database and reload the configuration.';
    END IF;
END
$$;
