-- billhook 0.6.0 → 0.7.0 (ALTER EXTENSION billhook UPDATE): events from the application's own
-- tables (billhook.track_table, billhook.untrack_table, billhook.tracked_tables) and event types
-- registered besides the built-in ones (billhook.register_event_type, event_types.built_in), which
-- subscriptions and the events' check take in.
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.7.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

CREATE FUNCTION billhook.check_event_type(name text, category text) RETURNS bool
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_event_type_wrapper';
CREATE FUNCTION billhook.record_tracked_change() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'record_tracked_change_wrapper';
CREATE FUNCTION billhook.capture_deleted_tracked_row() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'capture_deleted_tracked_row_wrapper';

-- They read the registered event types now.
ALTER FUNCTION billhook.is_event_type(text) STABLE;
ALTER FUNCTION billhook.expand_subscription(text[], text) STABLE;
ALTER FUNCTION billhook.exact_subscription(text[], text) STABLE;

ALTER TABLE billhook.event_types ADD COLUMN built_in boolean NOT NULL DEFAULT false;
-- Every event type before 0.7.0 is a built-in one.
UPDATE billhook.event_types SET built_in = true;
ALTER TABLE billhook.event_types
    ADD CONSTRAINT event_types_registrable CHECK (built_in OR billhook.check_event_type(name, category));
CREATE FUNCTION billhook.keep_built_in_event_types() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'built-in event type % cannot be changed or removed', OLD.name
        USING ERRCODE = 'feature_not_supported',
              HINT = 'The built-in events are fixed; registered ones (built_in = false) may be changed.';
END
$$;
CREATE TRIGGER keep_built_in_event_types BEFORE UPDATE OR DELETE ON billhook.event_types FOR EACH ROW
    WHEN (OLD.built_in) EXECUTE FUNCTION billhook.keep_built_in_event_types();
CREATE FUNCTION billhook.keep_event_types() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'billhook.event_types cannot be truncated' USING ERRCODE = 'feature_not_supported',
        HINT = 'Delete the registered event types (built_in = false) instead.';
END
$$;
CREATE TRIGGER keep_event_types BEFORE TRUNCATE ON billhook.event_types
    FOR EACH STATEMENT EXECUTE FUNCTION billhook.keep_event_types();
COMMENT ON COLUMN billhook.event_types.built_in IS
    'One of the 25 events of billhook''s catalog, which cannot be changed or removed; false: registered with billhook.register_event_type.';
-- The catalog is public: subscriptions are checked against it with the rights of whoever writes
-- a webhook.
GRANT SELECT ON billhook.event_types TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('billhook.event_types', 'WHERE NOT built_in');

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

-- Events from the application's own tables: billhook.track_table attaches billhook's emitter to a
-- table, with the same semantics as billhook's tables (net effect per transaction, nothing on
-- rollback, the row as JSON at commit). The triggers it creates belong to the table, so pg_dump
-- keeps them with it; this table is dumped too.
CREATE TABLE billhook.tracked_tables (
    relation               regclass PRIMARY KEY,
    entity_type            text NOT NULL UNIQUE,
    category               text NOT NULL,
    id_column              text NOT NULL,
    administration_column  text,
    state_column           text,
    state_events           jsonb NOT NULL DEFAULT '{}',
    excluded_columns       text[] NOT NULL DEFAULT '{}',
    tracked_at             timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE billhook.tracked_tables IS
    'Application tables whose row changes are events (billhook.track_table); a dropped table leaves it.';
SELECT pg_catalog.pg_extension_config_dump('billhook.tracked_tables', '');
REVOKE ALL ON FUNCTION billhook.record_tracked_change(), billhook.capture_deleted_tracked_row() FROM PUBLIC;

-- Raises 42703 unless `table` has `column`; returns its type.
CREATE FUNCTION billhook.tracked_column_type(tracked regclass, column_name text, role text) RETURNS regtype
LANGUAGE plpgsql STABLE AS $$
DECLARE
    found regtype;
BEGIN
    SELECT a.atttypid::regtype INTO found
    FROM pg_catalog.pg_attribute AS a
    WHERE a.attrelid = tracked AND a.attname = column_name AND a.attnum > 0 AND NOT a.attisdropped;
    IF found IS NULL THEN
        RAISE EXCEPTION 'table % has no column "%" (the % column)', tracked, column_name, role
            USING ERRCODE = 'undefined_column', HINT = 'Name a column of the table.';
    END IF;
    RETURN found;
END
$$;

-- Tracks `tracked`: each committed row change is an event `<category>.created`, `.updated` or
-- `.deleted` (registered here if need be), and moving into a state of `state_events` (a JSON object
-- of state values to event names of the category) the state's event too. `entity_type` names the
-- entity in payloads; the entity is the row as JSON without `excluded_columns`. The row's
-- administration is `administration_column` (else 1). Errors leave nothing registered.
CREATE FUNCTION billhook.track_table(
    tracked regclass,
    entity_type text,
    category text,
    id_column text DEFAULT 'id',
    administration_column text DEFAULT NULL,
    state_column text DEFAULT NULL,
    state_events jsonb DEFAULT '{}',
    excluded_columns text[] DEFAULT '{}'
) RETURNS billhook.tracked_tables
LANGUAGE plpgsql AS $$
DECLARE
    row_of billhook.tracked_tables;
    id_type regtype;
    event record;
    excluded text;
BEGIN
    IF (SELECT c.relkind FROM pg_catalog.pg_class AS c WHERE c.oid = tracked) NOT IN ('r', 'p')
       OR (SELECT c.relnamespace FROM pg_catalog.pg_class AS c WHERE c.oid = tracked) = 'billhook'::regnamespace THEN
        RAISE EXCEPTION '% is not an application table', tracked
            USING ERRCODE = 'wrong_object_type', HINT = 'Track an ordinary or partitioned table outside schema billhook.';
    END IF;
    IF EXISTS (SELECT 1 FROM billhook.tracked_tables AS t WHERE t.relation = tracked) THEN
        RAISE EXCEPTION 'table % is tracked already', tracked
            USING ERRCODE = 'duplicate_object', HINT = 'billhook.untrack_table it first to track it otherwise.';
    END IF;
    IF entity_type IN ('Customer', 'Invoice', 'Quotation', 'Expense', 'RecurringInvoice', 'Webhook')
       OR EXISTS (SELECT 1 FROM billhook.tracked_tables AS t WHERE t.entity_type = track_table.entity_type) THEN
        RAISE EXCEPTION 'entity type "%" is taken', entity_type
            USING ERRCODE = 'duplicate_object', HINT = 'Each tracked table needs an entity type of its own.';
    END IF;
    IF coalesce(entity_type, '') !~ '^[A-Za-z][A-Za-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid entity type "%"', entity_type
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a name such as "Order": letters, digits, underscores.';
    END IF;
    id_type := billhook.tracked_column_type(tracked, id_column, 'id');
    IF id_type NOT IN ('integer'::regtype, 'bigint'::regtype) THEN
        RAISE EXCEPTION 'id column "%" of % is %, not an integer', id_column, tracked, id_type
            USING ERRCODE = 'datatype_mismatch', HINT = 'The id column must be integer or bigint.';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index AS i
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = tracked AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL
          AND i.indexprs IS NULL AND a.attname = id_column) THEN
        RAISE EXCEPTION 'id column "%" of % is not unique', id_column, tracked
            USING ERRCODE = 'invalid_column_reference',
                  HINT = 'The id column needs a primary key or a unique index of its own.';
    END IF;
    IF administration_column IS NOT NULL
       AND billhook.tracked_column_type(tracked, administration_column, 'administration')
           NOT IN ('integer'::regtype, 'bigint'::regtype) THEN
        RAISE EXCEPTION 'administration column "%" of % is not an integer', administration_column, tracked
            USING ERRCODE = 'datatype_mismatch', HINT = 'The administration column must be integer or bigint.';
    END IF;
    IF state_column IS NOT NULL AND billhook.tracked_column_type(tracked, state_column, 'state') <> 'text'::regtype THEN
        RAISE EXCEPTION 'state column "%" of % is not text', state_column, tracked
            USING ERRCODE = 'datatype_mismatch', HINT = 'The state column must be of type text.';
    END IF;
    FOREACH excluded IN ARRAY coalesce(excluded_columns, '{}') LOOP
        PERFORM billhook.tracked_column_type(tracked, excluded, 'excluded');
        IF excluded IN (id_column, administration_column, state_column) THEN
            RAISE EXCEPTION 'column "%" of % cannot be excluded', excluded, tracked
                USING ERRCODE = 'invalid_parameter_value', HINT = 'The id, administration and state columns stay in the entity.';
        END IF;
    END LOOP;
    IF jsonb_typeof(coalesce(state_events, '{}')) <> 'object' OR state_column IS NULL AND state_events <> '{}'
       OR EXISTS (SELECT 1 FROM jsonb_each(coalesce(state_events, '{}')) AS s WHERE jsonb_typeof(s.value) <> 'string') THEN
        RAISE EXCEPTION 'invalid state_events %', state_events
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use a JSON object of state values to event names, such as {"shipped": "order.shipped"}, with a state column.';
    END IF;
    FOR event IN
        SELECT category || '.' || action AS name, format('%s %s', track_table.entity_type, action) AS description
        FROM unnest(ARRAY['created', 'updated', 'deleted']) AS a(action)
        UNION ALL
        SELECT s.value #>> '{}', format('%s moves to %s', track_table.entity_type, s.key)
        FROM jsonb_each(coalesce(state_events, '{}')) AS s
    LOOP
        PERFORM billhook.check_event_type(event.name, category);
        IF NOT EXISTS (SELECT 1 FROM billhook.event_types AS t WHERE t.name = event.name) THEN
            PERFORM billhook.register_event_type(event.name, category, event.description);
        END IF;
    END LOOP;
    INSERT INTO billhook.tracked_tables
        (relation, entity_type, category, id_column, administration_column, state_column, state_events, excluded_columns)
    VALUES (tracked, entity_type, category, id_column, administration_column, state_column,
            coalesce(state_events, '{}'), coalesce(excluded_columns, '{}'))
    RETURNING * INTO row_of;
    EXECUTE format('CREATE TRIGGER billhook_record_change AFTER INSERT OR DELETE ON %s FOR EACH ROW'
                   ' EXECUTE FUNCTION billhook.record_tracked_change()', tracked);
    EXECUTE format('CREATE TRIGGER billhook_record_change_update AFTER UPDATE ON %s FOR EACH ROW'
                   ' WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION billhook.record_tracked_change()', tracked);
    EXECUTE format('CREATE TRIGGER billhook_capture_deleted BEFORE DELETE ON %s FOR EACH ROW'
                   ' EXECUTE FUNCTION billhook.capture_deleted_tracked_row()', tracked);
    RETURN row_of;
END
$$;
REVOKE ALL ON FUNCTION billhook.track_table(regclass, text, text, text, text, text, jsonb, text[]) FROM PUBLIC;

-- Stops tracking `tracked`: its triggers go, its event types and events stay.
CREATE FUNCTION billhook.untrack_table(tracked regclass) RETURNS billhook.tracked_tables
LANGUAGE plpgsql AS $$
DECLARE
    row_of billhook.tracked_tables;
BEGIN
    DELETE FROM billhook.tracked_tables AS t WHERE t.relation = tracked RETURNING * INTO row_of;
    IF row_of.relation IS NULL THEN
        RAISE EXCEPTION 'table % is not tracked', tracked
            USING ERRCODE = 'undefined_object', HINT = 'billhook.tracked_tables lists the tracked tables.';
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS billhook_record_change ON %s', tracked);
    EXECUTE format('DROP TRIGGER IF EXISTS billhook_record_change_update ON %s', tracked);
    EXECUTE format('DROP TRIGGER IF EXISTS billhook_capture_deleted ON %s', tracked);
    RETURN row_of;
END
$$;
REVOKE ALL ON FUNCTION billhook.untrack_table(regclass) FROM PUBLIC;

-- A tracked table that is dropped is no longer tracked (a table made again under its name is not
-- tracked until billhook.track_table runs for it).
-- SECURITY DEFINER: whoever drops a table need not have rights on billhook's.
CREATE FUNCTION billhook.forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM billhook.tracked_tables AS t
    USING pg_catalog.pg_event_trigger_dropped_objects() AS d
    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = t.relation::oid;
END
$$;
CREATE EVENT TRIGGER billhook_forget_dropped_tables ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION billhook.forget_dropped_tables();
REVOKE ALL ON FUNCTION billhook.forget_dropped_tables() FROM PUBLIC;
