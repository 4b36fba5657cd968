-- billhook 0.9.0 → 0.10.0 (ALTER EXTENSION billhook UPDATE): webhook filters (webhooks.filter, an
-- SQL/JSON path predicate applied at fan-out), thin payloads (webhooks.payload), ed25519 signatures
-- (webhooks.signature, .signing_key, .public_key and their rotation), erasure of an entity's stored
-- JSON and response bodies (billhook.erase_entity), operational events (category operations:
-- webhook.failing, webhook.disabled, delivery.exhausted; billhook.emit_operations,
-- billhook.about_webhook), a JSON Schema per event type (event_types.schema). The Standard
-- Webhooks status semantics of 0.10.0 (410 Gone, 502/504 slowing down the endpoint) live in the
-- worker and need no schema change.
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.10.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

CREATE FUNCTION billhook.event_schema(name text) RETURNS jsonb
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'event_schema_wrapper';
ALTER TABLE billhook.event_types
    ADD COLUMN schema jsonb GENERATED ALWAYS AS (billhook.event_schema(name)) STORED;
COMMENT ON COLUMN billhook.event_types.schema IS
    'The JSON Schema (draft 2020-12) of a push of this event in billhook''s payload format (payload full).';

-- The operational events join the built-in catalog (an install script of an earlier version run
-- with this library has them already). A registered event type of the same name would take their
-- pushes: the update stops rather than guess.
DO $$
DECLARE
    taken text;
BEGIN
    SELECT string_agg(t.name, ', ' ORDER BY t.name) INTO taken
    FROM billhook.event_types AS t WHERE t.name IN ('webhook.failing', 'webhook.disabled', 'delivery.exhausted') AND NOT t.built_in;
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'registered event types % have the names of billhook''s operational events', taken
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Delete them (DELETE FROM billhook.event_types WHERE name IN (''webhook.failing'', ''webhook.disabled'', ''delivery.exhausted'')) and update again.';
    END IF;
END
$$;
INSERT INTO billhook.event_types (name, category, description, built_in)
SELECT c.name, c.category, c.description, true FROM billhook.event_catalog() AS c WHERE c.category = 'operations'
ON CONFLICT (name) DO NOTHING;
COMMENT ON COLUMN billhook.event_types.built_in IS
    'One of the events of billhook''s catalog (25 of the invoicing schema, 3 operational), which cannot be changed or removed; false: registered with billhook.register_event_type.';

-- A webhook's filter: an SQL/JSON path predicate over what billhook.filter_document makes of an
-- event, such as '$.entity.total_price_incl_tax.double() > 1000 && $.entity.currency == "EUR"'. A
-- path that is not a predicate is 22023.
CREATE FUNCTION billhook.check_webhook_filter(filter jsonpath) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    PERFORM jsonb_path_match('{}', filter);
    RETURN true;
EXCEPTION WHEN singleton_sql_json_item_required THEN
    RAISE EXCEPTION 'invalid filter "%": not a predicate', filter
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'A filter is a condition over the push, such as $.entity.currency == "EUR" && $.state == "open"; '
                     'combine conditions with &&, || and !.';
END
$$;

-- The filter of the webhook API, from text: a path that does not parse is 22023 naming it; '' is
-- no filter.
CREATE FUNCTION billhook.webhook_filter(filter text) RETURNS jsonpath
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RETURN nullif(filter, '')::jsonpath;
EXCEPTION WHEN syntax_error THEN
    RAISE EXCEPTION 'invalid filter "%": %', filter, SQLERRM
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Use an SQL/JSON path predicate such as $.entity.currency == "EUR", or '''' for none.';
END
$$;

CREATE FUNCTION billhook.generate_signing_key() RETURNS text
VOLATILE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'generate_signing_key_wrapper';

CREATE FUNCTION billhook.ed25519_public_key(signing_key text) RETURNS text
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'ed25519_public_key_wrapper';

-- Every existing webhook gets a key pair of its own (the default is computed per row) and keeps
-- signing with its HMAC secret only.
ALTER TABLE billhook.webhooks
    ADD COLUMN payload text NOT NULL DEFAULT 'full',
    ADD COLUMN filter jsonpath,
    ADD COLUMN signature text NOT NULL DEFAULT 'hmac',
    ADD COLUMN signing_key text NOT NULL UNIQUE DEFAULT billhook.generate_signing_key();
ALTER TABLE billhook.webhooks
    ADD COLUMN public_key text GENERATED ALWAYS AS (billhook.ed25519_public_key(signing_key)) STORED;
ALTER TABLE billhook.webhooks
    ADD COLUMN previous_signing_key text;
ALTER TABLE billhook.webhooks
    ADD COLUMN previous_public_key text GENERATED ALWAYS AS (billhook.ed25519_public_key(previous_signing_key)) STORED,
    ADD COLUMN previous_key_expires_at timestamptz,
    ADD CONSTRAINT webhooks_payload_check CHECK (billhook.check_webhook_choice('payload', payload)),
    ADD CONSTRAINT webhooks_filter_check CHECK (billhook.check_webhook_filter(filter)),
    ADD CONSTRAINT webhooks_signature_check CHECK (billhook.check_webhook_choice('signature', signature));
COMMENT ON COLUMN billhook.webhooks.signing_secret IS 'Signs every push (v1); never sent.';
COMMENT ON COLUMN billhook.webhooks.payload IS
    'full: the envelope with the entity; thin: without it (ids, type, state, action, event id), for receivers that fetch the current state.';
COMMENT ON COLUMN billhook.webhooks.filter IS
    'An SQL/JSON path predicate over billhook.filter_document(event): an event it does not match gets no delivery to this webhook. NULL: every subscribed event.';
COMMENT ON COLUMN billhook.webhooks.signature IS
    'Which keys sign a push: hmac (v1, signing_secret), ed25519 (v1a, signing_key) or both.';
COMMENT ON COLUMN billhook.webhooks.signing_key IS
    'The ed25519 private key of v1a signatures (whsk_ and base64 of its 32-byte seed); never sent.';
COMMENT ON COLUMN billhook.webhooks.public_key IS 'The ed25519 public key (whpk_) receivers verify v1a signatures with.';
COMMENT ON COLUMN billhook.webhooks.previous_public_key IS
    'The public key of the ed25519 key a rotation replaced, signing beside the new one until previous_key_expires_at.';

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
-- matching, such as .double() of a text that is no number, is no match).
CREATE FUNCTION billhook.filter_matches(filter jsonpath, event_id bigint, administration_id bigint,
                                        entity_type text, entity_id bigint, state text, event_type text,
                                        occurred_at timestamptz, entity jsonb) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN filter IS NULL THEN true
                ELSE coalesce(billhook.filter_document(event_id, administration_id, entity_type, entity_id, state,
                                                       event_type, occurred_at, entity) @@ filter, false) END
$$;

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
                e.entity, e.entity_type, e.entity_id
         FROM billhook.events AS e
         WHERE e.transaction_id = ANY (ARRAY(SELECT pg_snapshot_xip(progress.done)))
           AND pg_visible_in_snapshot(e.transaction_id, this_pass)
           AND (e.transaction_id > progress.after_transaction_id
                OR (e.transaction_id = progress.after_transaction_id AND e.id > progress.after_event_id))
         ORDER BY e.transaction_id, e.id LIMIT max_events)
        UNION ALL
        -- ... or begun since.
        (SELECT e.id, e.transaction_id, e.administration_id, e.event_type, e.occurred_at, e.state, e.previous_state,
                e.entity, e.entity_type, e.entity_id
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
         AND billhook.filter_matches(w.filter, b.id, b.administration_id, b.entity_type, b.entity_id, b.state,
                                     b.event_type, b.occurred_at, b.entity)
         AND NOT billhook.about_webhook(b.event_type, b.entity_id, b.entity, w.id)
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

-- Erasure of personal data (a data subject's request): blanks the stored entity JSON of every event
-- of the entity (to {"id": ..., "erased_at": ...}) and the stored response bodies of their
-- deliveries and attempts, keeping ids, times and statuses for the audit trail. Pushes still to go
-- carry the blanked entity. Returns how many events it erased (0 for an entity without events).
-- Definer's rights, so that no role needs to write events; EXECUTE is for the roles a DBA grants
-- it to. Under tenant isolation a login role that row-level security restricts erases in its
-- session's administration only.
CREATE FUNCTION billhook.erase_entity(entity_type text, entity_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    only_administration bigint;
    erased bigint;
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
    WITH erased_events AS (
        UPDATE billhook.events AS e
        SET entity = jsonb_build_object('id', e.entity_id::text, 'erased_at', billhook.json_time(now()))
        WHERE e.entity_type = erase_entity.entity_type AND e.entity_id = erase_entity.entity_id
          AND (only_administration IS NULL OR e.administration_id = only_administration)
        RETURNING e.id
    ), erased_deliveries AS (
        UPDATE billhook.deliveries AS d SET last_http_body = NULL
        FROM erased_events AS e WHERE d.event_id = e.id
        RETURNING d.id
    ), erased_attempts AS (
        UPDATE billhook.delivery_attempts AS a SET response_body = NULL
        FROM erased_deliveries AS d WHERE a.delivery_id = d.id AND a.response_body IS NOT NULL
    )
    SELECT count(*) INTO erased FROM erased_events;
    RETURN erased;
END
$$;
REVOKE ALL ON FUNCTION billhook.erase_entity(text, bigint) FROM PUBLIC;

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
CREATE OR REPLACE FUNCTION billhook.rotate_secret(id bigint, grace interval DEFAULT '24 hours') RETURNS billhook.webhooks
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

-- The webhook API takes payload, filter and signature.
DROP FUNCTION billhook.enable_webhook(bigint);
DROP FUNCTION billhook.disable_webhook(bigint);
DROP FUNCTION billhook.update_webhook(bigint, text, text[], boolean, jsonb, text, interval, integer, double precision,
                                      text, text);
DROP FUNCTION billhook.create_webhook(text, text[], bigint, boolean, boolean, jsonb, text, interval, integer,
                                      double precision, text, text);

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

CREATE OR REPLACE VIEW billhook.webhook_overview WITH (security_barrier) AS
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
    FOREACH table_name IN ARRAY documents LOOP
        EXECUTE format('GRANT SELECT ON billhook.%I TO billhook_reader', table_name);
        EXECUTE format('GRANT INSERT, UPDATE, DELETE ON billhook.%I TO billhook_app', table_name);
        EXECUTE format('GRANT USAGE ON SEQUENCE %s TO billhook_app',
                       pg_get_serial_sequence(format('billhook.%I', table_name), 'id'));
    END LOOP;
    GRANT SELECT, INSERT, DELETE ON billhook.webhooks TO billhook_app;
    EXECUTE format('GRANT UPDATE (%s) ON billhook.webhooks TO billhook_app', managed_webhook_columns);
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO billhook_app', pg_get_serial_sequence('billhook.webhooks', 'id'));
    -- redeliver and replay.
    GRANT UPDATE (status, attempts, next_attempt_at) ON billhook.deliveries TO billhook_app;
    GRANT EXECUTE ON FUNCTION billhook.verify_endpoint(bigint, bigint, text, text, text, text[], jsonb, text)
        TO billhook_app;
END
$$;
