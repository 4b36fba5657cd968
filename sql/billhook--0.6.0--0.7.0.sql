-- billhook 0.6.0 → 0.7.0 (ALTER EXTENSION billhook UPDATE): event types registered besides the
-- built-in ones (billhook.register_event_type, event_types.built_in), which subscriptions and the
-- events' check take in.
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.7.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

CREATE FUNCTION billhook.check_event_type(name text, category text) RETURNS bool
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_event_type_wrapper';

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

