-- Time-driven events: overdue invoices, expired quotations, recurring invoices. The worker calls
-- billhook.run_schedules() every billhook.schedule_interval; DBAs and tests call it with any as_of.

-- The date of period n (0 = start_date) of a schedule. Computed from start_date every time, so
-- month ends are kept: monthly from Jan 31 gives Feb 28/29, then Mar 31, never drifting to the 28th.
CREATE FUNCTION billhook.period_date(start_date date, frequency text, frequency_interval integer, n integer)
RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (start_date + CASE frequency
                         WHEN 'weekly' THEN interval '7 days'
                         WHEN 'monthly' THEN interval '1 month'
                         WHEN 'quarterly' THEN interval '3 months'
                         WHEN 'half_yearly' THEN interval '6 months'
                         WHEN 'yearly' THEN interval '1 year'
                     END * (frequency_interval * n))::date;

-- The invoice of one period of a schedule, with the template's lines; NULL if that period already
-- has its invoice. Raises (and so creates nothing) when the schedule cannot produce one.
CREATE FUNCTION billhook.generate_recurring_invoice(schedule billhook.recurring_invoices, period date)
RETURNS billhook.invoices
LANGUAGE plpgsql AS $$
DECLARE
    created billhook.invoices;
BEGIN
    IF schedule.customer_id IS NULL THEN
        RAISE EXCEPTION 'the customer of recurring invoice % was deleted', schedule.id;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM billhook.recurring_invoice_lines AS l WHERE l.recurring_invoice_id = schedule.id) THEN
        RAISE EXCEPTION 'recurring invoice % has no lines', schedule.id;
    END IF;
    INSERT INTO billhook.invoices (administration_id, customer_id, invoice_date, due_date, currency, discount,
                                   reference, language, payment_conditions, recurring_invoice_id, recurring_period)
    VALUES (schedule.administration_id, schedule.customer_id, period, period + schedule.due_days, schedule.currency,
            schedule.discount, schedule.reference, schedule.language, schedule.payment_conditions, schedule.id, period)
    ON CONFLICT (recurring_invoice_id, recurring_period) DO NOTHING
    RETURNING * INTO created;
    IF created.id IS NOT NULL THEN
        INSERT INTO billhook.invoice_lines (administration_id, invoice_id, description, amount, price, tax_rate, row_order)
        SELECT l.administration_id, created.id, l.description, l.amount, l.price, l.tax_rate, l.row_order
        FROM billhook.recurring_invoice_lines AS l
        WHERE l.recurring_invoice_id = schedule.id
        ORDER BY l.row_order, l.id;
    END IF;
    RETURN created;
END
$$;

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

-- Runs every sweep as of `as_of` and returns what it did:
--   overdue   open or reminded invoices whose due date is before today (administration's time zone)
--             become late: invoice.updated + invoice.overdue. pending_payment invoices are left alone.
--   expired   open quotations whose valid_until is before today become expired:
--             quotation.updated + quotation.expired.
--   generated each due period of an active recurring invoice, oldest first: invoice.created +
--             recurring_invoice.generated; at most max_invoices per call (the rest next call).
--   failed    a period that could not be generated: nothing of it is kept, recurring_invoice.failed
--             with the reason in entity.last_error; retried next sweep, and after
--             billhook.recurring_max_failures failures in a row the schedule is deactivated; at
--             once, with both reasons and no event, when the failure itself cannot be recorded.
--   completed the end date or max_occurrences was reached: recurring_invoice.completed, inactive.
--   deferred  a period whose generation hit a deadlock, a serialization failure or a lock timeout:
--             not counted as a failure, tried again next sweep.
--   skipped   an invoice or quotation that would go late or expire, but whose entity would not fit
--             in an event (billhook.fits_in_an_event): left as it is, reported each sweep.
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

REVOKE ALL ON FUNCTION billhook.run_schedules(timestamptz, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION billhook.emit_event(text, bigint, text, jsonb) FROM PUBLIC;
