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
