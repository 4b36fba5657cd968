-- Fanning events out into deliveries, re-queueing deliveries, and what the worker's state looks
-- like from SQL.

COMMENT ON FUNCTION billhook.detoasted_size(jsonb) IS
    'The bytes a jsonb value takes once read (pg_column_size: as stored, compressed), from its header without reading it; the worker''s claim budgets entities by it.';

-- What a webhook's filter sees of an event: billhook's envelope without the webhook's own fields,
-- ids as strings, whatever the webhook's payload format.
CREATE FUNCTION billhook.filter_document(event_id bigint, administration_id bigint, entity_type text,
                                         entity_id bigint, state text, event_type text, occurred_at timestamptz,
                                         entity jsonb) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object('administration_id', administration_id::text, 'entity_type', entity_type,
                              'entity_id', entity_id::text, 'state', state, 'action', event_type,
                              'event_id', event_id::text, 'occurred_at', billhook.json_time(occurred_at),
                              'entity', entity)
$$;

-- Whether a webhook's filter lets an event through: no filter, or one that matches (an error while
-- matching, such as .double() of a text that is no number, is no match). The _tz form, silent:
-- @@ still raises when a filter compares a date with a time with a time zone, and one webhook's
-- filter must not stop the fan-out for every other.
CREATE FUNCTION billhook.filter_matches(filter jsonpath, event_id bigint, administration_id bigint,
                                        entity_type text, entity_id bigint, state text, event_type text,
                                        occurred_at timestamptz, entity jsonb) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN filter IS NULL THEN true
                ELSE coalesce(jsonb_path_match_tz(billhook.filter_document(event_id, administration_id, entity_type,
                                                                           entity_id, state, event_type, occurred_at,
                                                                           entity),
                                                  filter, '{}', true), false) END
$$;

-- Whether a webhook that subscribes to an event's type takes it: its Moneybird names (a subscription
-- by Moneybird names takes the pushes with those names only), its filter, and never an operational
-- event about itself. Inlined into billhook.fan_out's statement.
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

-- Whether an operational event is about webhook_id (a webhook.* event about it, or a
-- delivery.exhausted of one of its deliveries): such an event never goes to that webhook.
CREATE FUNCTION billhook.about_webhook(event_type text, entity_id bigint, entity jsonb, webhook_id bigint)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN event_type IN ('webhook.failing', 'webhook.disabled') THEN entity_id = webhook_id
                WHEN event_type = 'delivery.exhausted' THEN (entity->>'webhook_id')::bigint = webhook_id
                ELSE false END
$$;

-- The operational events (category operations) of what a round of the worker did: webhooks whose
-- failing streak reached billhook.failing_after_failures, webhooks it disabled, deliveries whose
-- last retry failed, except deliveries of operational events themselves (so that two failing
-- webhooks that take operational events cannot feed each other). Written like any event, in the
-- worker's transaction, each with a NOTIFY billhook_operations (sent at commit). Returns how many.
CREATE FUNCTION billhook.emit_operations(failing bigint[], disabled bigint[], exhausted bigint[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    emitted record;
    written integer := 0;
BEGIN
    FOR emitted IN
        WITH operation AS (
            SELECT o.event_type, w.administration_id, 'Webhook' AS entity_type, w.id AS entity_id, o.state,
                   jsonb_build_object('id', w.id::text, 'url', billhook.redact_url(w.url), 'enabled', w.enabled,
                                      'consecutive_failures', w.consecutive_failures,
                                      'failing_since', billhook.json_time(w.failing_since),
                                      'last_http_status', w.last_http_status,
                                      'last_success_at', billhook.json_time(w.last_success_at),
                                      'disabled_at', billhook.json_time(w.disabled_at),
                                      'disabled_reason', w.disabled_reason) AS entity
            FROM billhook.webhooks AS w
            JOIN (VALUES ('webhook.failing', 'failing'), ('webhook.disabled', 'auto_disabled')) AS o (event_type, state)
              ON w.id = ANY (CASE o.event_type WHEN 'webhook.failing' THEN failing ELSE disabled END)
            UNION ALL
            SELECT 'delivery.exhausted', w.administration_id, 'Delivery', d.id, d.status,
                   jsonb_build_object('id', d.id::text, 'webhook_id', w.id::text, 'event_id', e.id::text,
                                      'event_type', e.event_type, 'entity_type', e.entity_type,
                                      'entity_id', e.entity_id::text, 'idempotency_key', d.idempotency_key,
                                      'attempts', d.attempts, 'last_attempt_at', billhook.json_time(d.last_attempt_at),
                                      'last_http_status', d.last_http_status, 'last_error', d.last_error)
            FROM billhook.deliveries AS d
            JOIN billhook.webhooks AS w ON w.id = d.webhook_id
            JOIN billhook.events AS e ON e.id = d.event_id
            WHERE d.id = ANY (exhausted) AND d.status = 'failed'
              AND e.event_type NOT IN (SELECT t.name FROM billhook.event_types AS t WHERE t.category = 'operations')
        )
        INSERT INTO billhook.events (administration_id, event_type, entity_type, entity_id, state, entity)
        SELECT o.administration_id, o.event_type, o.entity_type, o.entity_id, o.state, o.entity
        FROM operation AS o ORDER BY o.entity_type DESC, o.entity_id, o.event_type DESC
        RETURNING id, event_type, administration_id, entity_type, entity_id
    LOOP
        PERFORM pg_notify('billhook_operations',
                          json_build_object('event_id', emitted.id::text, 'event_type', emitted.event_type,
                                            'administration_id', emitted.administration_id::text,
                                            'entity_type', emitted.entity_type,
                                            'entity_id', emitted.entity_id::text)::text);
        written := written + 1;
    END LOOP;
    RETURN written;
END
$$;
REVOKE ALL ON FUNCTION billhook.emit_operations(bigint[], bigint[], bigint[]) FROM PUBLIC;

-- Creates the deliveries of up to max_events committed events that have none yet: one per enabled
-- webhook of the event's administration that subscribes to it, existed when it occurred, whose
-- filter it matches and which it is not about (and one per webhook billhook disabled, held until it
-- is enabled). The
-- worker calls it in every round a commit or its poll woke it for; commits only record events, so
-- their cost does not grow with the number of webhooks, and one statement here serves many
-- commits. Returns how many events it took (max_events means more are waiting) and how many
-- deliveries it created; both NULL when wait is false and another pass is running (the worker
-- never waits for a pass some session left open).
-- Each delivery's Idempotency-Key is derived from the event and the webhook (billhook.delivery_key),
-- so a delivery lost in a crash is made again with the key its push already carried.
-- With a quarantine reason, the pass takes the next event alone and decides for each webhook in a
-- subtransaction of its own: a webhook for which the decision fails gets a failed delivery whose
-- last_error is the reason and the error. The worker does this for an event whose fan-out fails,
-- so that neither the event nor one webhook's view of it holds up the others.
-- Whether an error (its SQLSTATE) is one of the moment, nobody's fault: the worker ends its round
-- and tries again rather than set a row apart: the classes src/delivering/worker/isolation.rs calls
-- transient, which a unit test there checks against this list.
CREATE FUNCTION billhook.transient(sqlstate text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN left(sqlstate, 2) IN ('08', '40', '53', '57', '58') OR sqlstate IN ('55P03', '55006');
COMMENT ON FUNCTION billhook.transient(text) IS
    'Whether an error (its SQLSTATE) is one of the moment, which the worker tries again instead of setting a row apart.';

-- Which of the webhooks `webhook_ids` have a pending delivery in a window below the event id
-- `floor`: the claim's ordering check asks it once, for the ordered webhooks of the worker's share
-- (src/delivering/worker/statements/claim.sql). A function of its own rather than a subquery of
-- the claim, so that its scan of every window below is set up only when a claim considers an
-- ordered webhook: PostgreSQL sets up every subquery of a statement as the statement starts,
-- whether it runs or not, and the claim runs every round. PL/pgSQL, which the planner never
-- inlines; STABLE, so that it reads with the claim's snapshot.
CREATE FUNCTION billhook.pending_below(webhook_ids bigint[], floor bigint) RETURNS bigint[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN ARRAY(SELECT w.id FROM unnest(pending_below.webhook_ids) AS w(id)
                 WHERE EXISTS (SELECT FROM billhook.deliveries AS d
                               WHERE d.webhook_id = w.id AND d.status = 'pending'
                                 AND d.event_id < pending_below.floor));
END
$$;
REVOKE ALL ON FUNCTION billhook.pending_below(bigint[], bigint) FROM PUBLIC;
COMMENT ON FUNCTION billhook.pending_below(bigint[], bigint) IS
    'Which of these webhooks have a pending delivery with an event id below floor: the claims'' ordering check, for webhooks ordered by entity.';

-- Whether a webhook has had a successful attempt since `since`: the outcome write asks it only for
-- a webhook whose failures would disable it (src/delivering/worker/statements/record_outcomes.sql),
-- in a function of its own so that its scan of every window's attempts is set up only then (see
-- pending_below).
CREATE FUNCTION billhook.succeeded_since(webhook_id bigint, since timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (SELECT FROM billhook.delivery_attempts AS a
                   WHERE a.webhook_id = succeeded_since.webhook_id AND a.attempted_at >= succeeded_since.since
                     AND a.succeeded);
END
$$;
REVOKE ALL ON FUNCTION billhook.succeeded_since(bigint, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION billhook.succeeded_since(bigint, timestamptz) IS
    'Whether a webhook has had a successful attempt since a time: the outcome write asks it before it disables a failing webhook.';

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
        ON CONFLICT DO NOTHING;
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
        ON CONFLICT DO NOTHING;
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
    -- The lowest and highest event ids of a batch or of a webhook's debts: with them, a statement
    -- reads only their windows' partitions (sql/partitions.sql), which a list of ids alone cannot
    -- tell a generic plan.
    lowest bigint;
    highest bigint;
    made bigint;
    -- The lowest event id this call made deliveries for, and the events' sequence's position.
    lowest_made bigint;
    newest_id bigint;
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
            lowest := debts[1];
            highest := debts[cardinality(debts)];
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
                    WHERE e.id = ANY (debts) AND e.id BETWEEN lowest AND highest
                    ORDER BY e.id
                    ON CONFLICT DO NOTHING
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
            lowest_made := least(lowest_made, CASE WHEN made > 0 THEN lowest END);
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
        SELECT min(b), max(b) INTO lowest, highest FROM unnest(batch) AS b;
        -- The webhooks the batch's events go to: those it can lock, and those it cannot (owed).
        -- A webhook that still has debts is owed again, behind them.
        held := ARRAY(SELECT w.id FROM billhook.webhooks AS w
                      WHERE EXISTS (SELECT FROM billhook.events AS e
                                    WHERE e.id = ANY (batch) AND e.id BETWEEN lowest AND highest
                                      AND e.administration_id = w.administration_id
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
        WHERE e.id = ANY (batch) AND e.id BETWEEN lowest AND highest AND w.id <> ALL (held)
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
                WHERE e.id = ANY (batch) AND e.id BETWEEN lowest AND highest AND w.id = ANY (held)
                ORDER BY e.id, w.id
                ON CONFLICT DO NOTHING
                RETURNING 1
            )
            SELECT count(*) INTO made FROM made;
            deliveries := deliveries + made;
            lowest_made := least(lowest_made, CASE WHEN made > 0 THEN lowest END);
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
                made := billhook.fan_out_one(last_event_id, candidate.id, progress.key_namespace, quarantine);
                deliveries := deliveries + made;
                lowest_made := least(lowest_made, CASE WHEN made > 0 THEN last_event_id END);
            END LOOP;
        END IF;
    END IF;
    -- Deliveries made in a window older than the current (a debt, a prepared transaction's, a
    -- transaction that drew its ids before the move, a backlog's) may lie below where the
    -- workers' claims start (billhook.pending_from): they look again once this commits. The
    -- current window is read from the sequence as billhook.current_window does, without a
    -- function call on every pass.
    IF lowest_made IS NOT NULL THEN
        SELECT s.last_value INTO newest_id FROM billhook.events_id_seq AS s;
        IF lowest_made < billhook.window_start((newest_id >> 40)::integer) THEN
            PERFORM billhook.wake_worker_at_commit();
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

-- Retention: deletes up to max_rows succeeded deliveries delivered before now() - older_than and
-- up to max_rows failed ones last attempted before now() - failed_older_than (none while that is
-- NULL; their attempt rows go with them), then up to max_rows events older than older_than which
-- the fan-out has passed and which have no delivery left. An event still waiting for its fan-out is
-- never deleted, however old. Rows other sessions hold are skipped, and every row is checked again
-- as it is deleted, so a delivery re-queued by redeliver or replay meanwhile stays. The worker calls
-- it every minute with billhook.retention and billhook.failed_retention.
CREATE FUNCTION billhook.purge(older_than interval, max_rows integer DEFAULT 1000,
                               failed_older_than interval DEFAULT NULL,
                               OUT deliveries bigint, OUT events bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fanned_out pg_snapshot;
    failed bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' OR max_rows IS NULL OR max_rows < 1
       OR failed_older_than < interval '0' THEN
        RAISE EXCEPTION 'invalid purge(%, %, %)', coalesce(older_than::text, 'NULL'),
                        coalesce(max_rows::text, 'NULL'), coalesce(failed_older_than::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'older_than is an interval of zero or more, max_rows a positive number, failed_older_than an interval of zero or more or NULL.';
    END IF;
    WITH old AS (
        SELECT d.id, d.event_id FROM billhook.deliveries AS d
        WHERE d.status = 'succeeded' AND d.delivered_at < now() - older_than
        ORDER BY d.delivered_at LIMIT max_rows
        FOR UPDATE SKIP LOCKED)
    DELETE FROM billhook.deliveries AS d USING old
    WHERE d.id = old.id AND d.event_id = old.event_id AND d.status = 'succeeded'
      AND d.delivered_at < now() - older_than;
    GET DIAGNOSTICS deliveries = ROW_COUNT;

    IF failed_older_than IS NOT NULL THEN
        WITH old AS (
            SELECT d.id, d.event_id FROM billhook.deliveries AS d
            WHERE d.status = 'failed' AND coalesce(d.last_attempt_at, d.created_at) < now() - failed_older_than
            ORDER BY coalesce(d.last_attempt_at, d.created_at) LIMIT max_rows
            FOR UPDATE SKIP LOCKED)
        DELETE FROM billhook.deliveries AS d USING old
        WHERE d.id = old.id AND d.event_id = old.event_id AND d.status = 'failed'
          AND coalesce(d.last_attempt_at, d.created_at) < now() - failed_older_than;
        GET DIAGNOSTICS failed = ROW_COUNT;
        deliveries := deliveries + failed;
    END IF;

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
        FOR UPDATE SKIP LOCKED),
    gone AS (
        DELETE FROM billhook.events AS e USING old WHERE e.id = old.id RETURNING e.id),
    forgotten AS (
        -- Restored events judged long ago: nothing waits for them any more.
        DELETE FROM billhook.restored_events AS r USING gone WHERE r.event_id = gone.id)
    SELECT count(*) INTO events FROM gone;
END
$$;
REVOKE ALL ON FUNCTION billhook.purge(interval, integer, interval) FROM PUBLIC;

-- What erasure leaves of an entity's JSON: its id and the time of the erasure ({"id", "erased_at"}).
-- JSON that is already that keeps its time, so erasing again changes nothing.
CREATE FUNCTION billhook.erasure_marker(entity jsonb, entity_id bigint) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN jsonb_build_object('id', entity_id::text, 'erased_at',
    CASE WHEN entity - 'id' - 'erased_at' = '{}'
              AND entity->>'erased_at' ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$'
         THEN entity->'erased_at'
         ELSE to_jsonb(billhook.json_time(now())) END);
COMMENT ON FUNCTION billhook.erasure_marker(jsonb, bigint) IS
    'What billhook.erase_entity leaves of an entity''s JSON: {"id", "erased_at"} (an earlier erasure keeps its time).';

-- Erasure of personal data (a data subject's request). Wherever billhook keeps the entity's JSON it
-- leaves billhook.erasure_marker: in every event of the entity, and where other entities' events
-- nest it (a customer in invoices, quotations and recurring invoices: billhook.nested_entities, at
-- any depth). The stored response bodies of every push of those events are blanked (deliveries,
-- attempts, and a webhook's last answer when it was one of them), since a receiver may echo what it
-- got. Ids, times, statuses and keys stay for the audit trail, and so do the operational events
-- about those pushes (delivery.exhausted holds ids, the key and statuses, nothing of the entity).
-- Pushes still to go are built from the events, so they carry what is left. Returns how many of the
-- entity's own events it erased (0 for an entity without events).
-- Definer's rights, so that no role needs to write events; EXECUTE is for the roles a DBA grants
-- it to. Under tenant isolation a login role that row-level security restricts erases in its
-- session's administration only.
CREATE FUNCTION billhook.erase_entity(entity_type text, entity_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    only_administration bigint;
    erased bigint;
    -- The events holding the entity's JSON: its own and those nesting it.
    holders bigint[];
    -- Their pushes.
    pushes bigint[];
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

    -- The pushes and their attempts are looked up by the holders' ids, which name their windows
    -- (sql/partitions.sql), and by the pushes' ids, as arrays: a join would leave the planner free to
    -- read every window's attempts by hash.
    SELECT coalesce(array_agg(d.id), '{}') INTO pushes
    FROM billhook.deliveries AS d WHERE d.event_id = ANY (holders);
    WITH erased_webhook_bodies AS (
        -- A webhook shows its last response: blanked when it answered one of these pushes. The
        -- look at the attempts sees them as they were: every part of the statement sees the same
        -- snapshot.
        UPDATE billhook.webhooks AS w SET last_http_body = NULL
        WHERE w.last_http_body IS NOT NULL
          AND EXISTS (SELECT FROM billhook.delivery_attempts AS a
                      WHERE a.event_id = ANY (holders) AND a.delivery_id = ANY (pushes)
                        AND a.webhook_id = w.id AND a.response_body = w.last_http_body)
    ), erased_deliveries AS (
        UPDATE billhook.deliveries AS d SET last_http_body = NULL
        WHERE d.event_id = ANY (holders) AND d.id = ANY (pushes) AND d.last_http_body IS NOT NULL
    )
    UPDATE billhook.delivery_attempts AS a SET response_body = NULL
    WHERE a.event_id = ANY (holders) AND a.delivery_id = ANY (pushes) AND a.response_body IS NOT NULL;
    RETURN erased;
END
$$;
REVOKE ALL ON FUNCTION billhook.erase_entity(text, bigint) FROM PUBLIC;

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

CREATE VIEW billhook.delivery_status WITH (security_barrier) AS
SELECT d.id, d.webhook_id, billhook.redact_url(w.url) AS url, d.event_id, e.event_type, e.entity_type, e.entity_id, d.status,
       d.attempts, d.next_attempt_at, d.last_attempt_at, d.last_http_status, d.last_error,
       d.last_duration_ms, d.delivered_at, d.delivered_at - e.occurred_at AS latency, d.idempotency_key
FROM billhook.deliveries AS d
JOIN billhook.events AS e ON e.id = d.event_id
JOIN billhook.webhooks AS w ON w.id = d.webhook_id
WHERE NOT (SELECT billhook.tenant_isolation_applies())
   OR w.administration_id = (SELECT billhook.isolated_administration_id());
COMMENT ON VIEW billhook.delivery_status IS 'Deliveries with their event and webhook, for reporting.';

DO $$
BEGIN
    IF NOT (SELECT preloaded FROM billhook.worker_status()) THEN
        RAISE WARNING 'billhook is not in shared_preload_libraries: events are recorded, but nothing is delivered'
            USING HINT = 'Add billhook to shared_preload_libraries in postgresql.conf and restart PostgreSQL.';
    ELSIF NOT EXISTS (SELECT FROM billhook.workers() WHERE database = current_database()) THEN
        RAISE WARNING 'no billhook worker delivers for this database, only for "%"',
            (SELECT string_agg(DISTINCT database, '", "') FROM billhook.workers())
            USING HINT = 'Add this database to billhook.databases and reload the configuration.';
    END IF;
END
$$;
