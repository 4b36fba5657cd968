-- billhook 0.1.0 → 0.2.0 (ALTER EXTENSION billhook UPDATE): the hardening of issue 17.
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.2.0 install and keeps every row, key and pending delivery.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

-- Functions in Rust, new in 0.2.0.
CREATE FUNCTION billhook.delivery_key("namespace" uuid, "event_id" bigint, "webhook_id" bigint) RETURNS uuid
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'delivery_key_wrapper';
CREATE FUNCTION billhook.redact_url("url" TEXT) RETURNS TEXT
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'redact_url_wrapper';

-- Idempotency-Keys derived from the install, the event and the webhook. Deliveries made by 0.1.0
-- keep their random keys.
ALTER TABLE billhook.fan_out_state ADD COLUMN key_namespace uuid NOT NULL DEFAULT gen_random_uuid();

-- Nobody may attach billhook's trigger functions to tables of their own, nor make the database host
-- send requests.
REVOKE ALL ON FUNCTION billhook.record_change(), billhook.capture_deleted_entity(),
    billhook.note_webhooks_changed(), billhook.mark_event_restored(), billhook.touch_updated_at() FROM PUBLIC;

DROP FUNCTION billhook.fan_out(integer);
-- Creates the deliveries of up to max_events committed events that have none yet: one per enabled
-- webhook of the event's administration that subscribes to it and existed when it occurred. The
-- worker calls it in every round a commit or its poll woke it for; commits only record events, so
-- their cost does not grow with the number of webhooks, and one statement here serves many
-- commits. Returns how many events it took (max_events means more are waiting) and how many
-- deliveries it created; both NULL when wait is false and another pass is running (the worker
-- never waits for a pass some session left open).
-- Each delivery's Idempotency-Key is derived from the event and the webhook (billhook.delivery_key),
-- so a delivery lost in a crash is made again with the key its push already carried.
CREATE FUNCTION billhook.fan_out(max_events integer DEFAULT 1000, wait boolean DEFAULT true,
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
        (SELECT e.id, e.transaction_id, e.administration_id, e.event_type, e.occurred_at
         FROM billhook.events AS e
         WHERE e.transaction_id = ANY (ARRAY(SELECT pg_snapshot_xip(progress.done)))
           AND pg_visible_in_snapshot(e.transaction_id, this_pass)
           AND (e.transaction_id > progress.after_transaction_id
                OR (e.transaction_id = progress.after_transaction_id AND e.id > progress.after_event_id))
         ORDER BY e.transaction_id, e.id LIMIT max_events)
        UNION ALL
        -- ... or begun since.
        (SELECT e.id, e.transaction_id, e.administration_id, e.event_type, e.occurred_at
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
          ON w.administration_id = b.administration_id AND w.enabled
         AND b.event_type = ANY (w.subscribed_events) AND w.created_at <= b.occurred_at
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
REVOKE ALL ON FUNCTION billhook.fan_out(integer, boolean) FROM PUBLIC;
COMMENT ON FUNCTION billhook.fan_out(integer, boolean) IS
    'Creates the deliveries of committed events that have none yet (the worker calls it every round).';

-- Retention: deletes up to max_rows succeeded deliveries delivered before now() - older_than
-- (their attempt rows go with them), then up to max_rows events older than that which the fan-out
-- has passed and which have no delivery left. An event still waiting for its fan-out is never
-- deleted, however old. Rows other sessions hold are skipped, and every row is checked again as it
-- is deleted, so a delivery re-queued by redeliver or replay meanwhile stays. The worker calls it
-- every minute with billhook.retention.
CREATE FUNCTION billhook.purge(older_than interval, max_rows integer DEFAULT 1000,
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

    -- Every event visible in `done` has had its fan-out (see fan_out_state).
    SELECT s.done INTO STRICT fanned_out FROM billhook.fan_out_state AS s;
    WITH old AS (
        SELECT e.id FROM billhook.events AS e
        WHERE e.occurred_at < now() - older_than
          AND pg_visible_in_snapshot(e.transaction_id, fanned_out)
          AND NOT EXISTS (SELECT 1 FROM billhook.deliveries AS d WHERE d.event_id = e.id)
        ORDER BY e.occurred_at LIMIT max_rows
        FOR UPDATE SKIP LOCKED)
    DELETE FROM billhook.events AS e USING old WHERE e.id = old.id;
    GET DIAGNOSTICS events = ROW_COUNT;
END
$$;
REVOKE ALL ON FUNCTION billhook.purge(interval, integer) FROM PUBLIC;

CREATE OR REPLACE VIEW billhook.delivery_status AS
SELECT d.id, d.webhook_id, billhook.redact_url(w.url) AS url, d.event_id, e.event_type, e.entity_type, e.entity_id, d.status,
       d.attempts, d.next_attempt_at, d.last_attempt_at, d.last_http_status, d.last_error,
       d.last_duration_ms, d.delivered_at, d.delivered_at - e.occurred_at AS latency, d.idempotency_key
FROM billhook.deliveries AS d
JOIN billhook.events AS e ON e.id = d.event_id
JOIN billhook.webhooks AS w ON w.id = d.webhook_id;
COMMENT ON VIEW billhook.delivery_status IS 'Deliveries with their event and webhook, for reporting.';

CREATE OR REPLACE VIEW billhook.webhook_overview AS
SELECT w.id, w.administration_id, billhook.redact_url(w.url) AS url, w.enabled, w.enabled_events, w.subscribed_events,
       w.last_http_status, w.last_http_body,
       count(d.id) FILTER (WHERE d.status = 'pending') AS pending_deliveries,
       count(d.id) FILTER (WHERE d.status = 'succeeded') AS succeeded_deliveries,
       count(d.id) FILTER (WHERE d.status = 'failed') AS failed_deliveries,
       w.created_at, w.updated_at
FROM billhook.webhooks AS w
LEFT JOIN billhook.deliveries AS d ON d.webhook_id = w.id
GROUP BY w.id;
COMMENT ON VIEW billhook.webhook_overview IS
    'Webhooks without their token, secret and URL credentials, with delivery counts.';

-- The registration check makes the database host send a request to any URL and reports what came
-- back: only roles that manage webhooks may run it (see README, "Privileges").
REVOKE ALL ON FUNCTION billhook.check_endpoint(bigint, bigint, text, text, text, text[], text) FROM PUBLIC;

DROP FUNCTION billhook.run_schedules(timestamptz, integer);
-- Runs every sweep as of `as_of` and returns what it did:
--   overdue   open or reminded invoices whose due date is before today (administration's time zone)
--             become late: invoice.updated + invoice.overdue. pending_payment invoices are left alone.
--   expired   open quotations whose valid_until is before today become expired:
--             quotation.updated + quotation.expired.
--   generated each due period of an active recurring invoice, oldest first: invoice.created +
--             recurring_invoice.generated; at most max_invoices per call (the rest next call).
--   failed    a period that could not be generated: nothing of it is kept, recurring_invoice.failed
--             with the reason in entity.last_error; retried next sweep, and after
--             billhook.recurring_max_failures failures in a row the schedule is deactivated.
--   completed the end date or max_occurrences was reached: recurring_invoice.completed, inactive.
--   deferred  a period whose generation hit a deadlock, a serialization failure or a lock timeout:
--             not counted as a failure, tried again next sweep.
-- Overdue invoices and expired quotations are changed at most max_changes of each per call (the
-- rest next call: a million overdue invoices are not one transaction), rows other sessions hold
-- locked are left for the next call. Schedules are locked (SKIP LOCKED) while processed, so
-- concurrent sweeps share the work; the unique (recurring_invoice_id, recurring_period) of
-- invoices makes a second invoice impossible.
CREATE FUNCTION billhook.run_schedules(as_of timestamptz DEFAULT now(), max_invoices integer DEFAULT 100,
                                       max_changes integer DEFAULT 1000)
RETURNS TABLE (action text, entity_type text, entity_id bigint, detail text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    due record;
    schedule billhook.recurring_invoices;
    period date;
    created billhook.invoices;
    failure text;
    transient text;
    generated integer := 0;
    max_failures integer := current_setting('billhook.recurring_max_failures')::integer;
BEGIN
    IF as_of IS NULL OR max_invoices IS NULL OR max_invoices < 0 OR max_changes IS NULL OR max_changes < 0 THEN
        RAISE EXCEPTION 'invalid run_schedules(%, %, %)', as_of, max_invoices, max_changes
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'as_of is a time, max_invoices and max_changes zero or more.';
    END IF;

    RETURN QUERY
    WITH overdue AS (
        SELECT i.id FROM billhook.invoices AS i
        JOIN billhook.administrations AS a ON a.id = i.administration_id
        WHERE i.state IN ('open', 'reminded') AND i.due_date < (as_of AT TIME ZONE a.time_zone)::date
        ORDER BY i.id LIMIT max_changes
        FOR UPDATE OF i SKIP LOCKED
    ), late AS (
        UPDATE billhook.invoices AS i SET state = 'late'
        FROM overdue WHERE i.id = overdue.id
        RETURNING i.id, i.due_date)
    SELECT 'overdue', 'Invoice', late.id, 'due ' || late.due_date FROM late ORDER BY late.id;

    RETURN QUERY
    WITH past_validity AS (
        SELECT q.id FROM billhook.quotations AS q
        JOIN billhook.administrations AS a ON a.id = q.administration_id
        WHERE q.state = 'open' AND q.valid_until < (as_of AT TIME ZONE a.time_zone)::date
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
                                                billhook.recurring_invoice_json(schedule.id));
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
                UPDATE billhook.recurring_invoices AS r
                SET failed_attempts = r.failed_attempts + 1,
                    last_error = failure,
                    active = r.failed_attempts + 1 < max_failures
                WHERE r.id = schedule.id;
                PERFORM billhook.emit_event('RecurringInvoice', schedule.id, 'recurring_invoice.failed',
                                            billhook.recurring_invoice_json(schedule.id));
                RETURN QUERY SELECT 'failed', 'RecurringInvoice', schedule.id, format('%s: %s', period, failure);
                EXIT;
            END IF;
            IF created.id IS NOT NULL THEN
                RETURN QUERY SELECT 'generated', 'RecurringInvoice', schedule.id,
                                    format('invoice %s for %s', created.id, period);
            END IF;

            IF schedule.occurrences >= schedule.max_occurrences OR schedule.next_date > schedule.end_date THEN
                UPDATE billhook.recurring_invoices AS r SET active = false, completed_at = as_of WHERE r.id = schedule.id;
                PERFORM billhook.emit_event('RecurringInvoice', schedule.id, 'recurring_invoice.completed',
                                            billhook.recurring_invoice_json(schedule.id));
                RETURN QUERY SELECT 'completed', 'RecurringInvoice', schedule.id,
                                    format('%s invoices', schedule.occurrences);
                EXIT;
            END IF;
        END LOOP;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION billhook.run_schedules(timestamptz, integer, integer) FROM PUBLIC;
