-- billhook 0.10.0 → 0.11.0 (ALTER EXTENSION billhook UPDATE): billhook.workers() lists every worker
-- of every configured database with its member number (billhook.workers, several workers per
-- database, is a setting of the library); a webhook's updated_at follows every configuration
-- column, not six of them; billhook.erase_entity also blanks a webhook's last response body when it
-- was the answer to a push about the erased entity.
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.11.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

DROP FUNCTION billhook.workers();
-- Every configured worker: each database of billhook.databases, each with its billhook.workers members.
CREATE FUNCTION billhook.workers() RETURNS TABLE (
    "database" text,
    "member" int,
    "running" bool,
    "pid" int,
    "started_at" timestamp with time zone,
    "starts" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'workers_wrapper';

DROP TRIGGER touch_updated_at ON billhook.webhooks;
-- A webhook's updated_at follows its configuration (every column an application or a key rotation
-- sets), not what billhook writes after each push (last_http_*, the failing streak) nor what it
-- derives. jsonpath has no equality: the filter is compared as text.
CREATE TRIGGER touch_updated_at BEFORE UPDATE ON billhook.webhooks FOR EACH ROW
    WHEN ((OLD.url, OLD.enabled_events, OLD.enabled, OLD.token, OLD.signing_secret, OLD.previous_signing_secret,
           OLD.previous_secret_expires_at, OLD.administration_id, OLD.headers, OLD.retry_schedule, OLD.request_timeout,
           OLD.max_in_flight, OLD.max_requests_per_second, OLD.ordering, OLD.payload_format, OLD.payload,
           OLD.filter::text, OLD.signature, OLD.signing_key, OLD.previous_signing_key, OLD.previous_key_expires_at)
          IS DISTINCT FROM
          (NEW.url, NEW.enabled_events, NEW.enabled, NEW.token, NEW.signing_secret, NEW.previous_signing_secret,
           NEW.previous_secret_expires_at, NEW.administration_id, NEW.headers, NEW.retry_schedule, NEW.request_timeout,
           NEW.max_in_flight, NEW.max_requests_per_second, NEW.ordering, NEW.payload_format, NEW.payload,
           NEW.filter::text, NEW.signature, NEW.signing_key, NEW.previous_signing_key, NEW.previous_key_expires_at))
    EXECUTE FUNCTION billhook.touch_updated_at();

CREATE OR REPLACE FUNCTION billhook.erase_entity(entity_type text, entity_id bigint) RETURNS bigint
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
        RETURNING d.id, d.webhook_id
    ), erased_attempts AS (
        UPDATE billhook.delivery_attempts AS a SET response_body = NULL
        FROM erased_deliveries AS d WHERE a.delivery_id = d.id AND a.response_body IS NOT NULL
    ), erased_webhook_bodies AS (
        -- A webhook shows its last response: blanked when it answered a push about the entity. The
        -- join reads the attempts as they were: every part of the statement sees the same snapshot.
        UPDATE billhook.webhooks AS w SET last_http_body = NULL
        FROM erased_deliveries AS d JOIN billhook.delivery_attempts AS a ON a.delivery_id = d.id
        WHERE w.id = d.webhook_id AND w.last_http_body = a.response_body
    )
    SELECT count(*) INTO erased FROM erased_events;
    RETURN erased;
END
$$;
