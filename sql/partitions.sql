-- The outbox in windows of time (docs/operations.md, "The outbox's partitions"). Events, their
-- deliveries and their attempts are partitioned alike, by the event's id: window k holds the events
-- whose ids are in [k * 2^40, (k + 1) * 2^40), every delivery of those events and every attempt of
-- those deliveries, so that a window goes as a whole when everything in it is done. The events'
-- ids move into the next window when the worker rolls it (billhook.roll_outbox): an event's id
-- tells its window, so every look-up by an event's id reads one partition, and the window of the
-- newest events is the one the worker's statements read first.

CREATE TABLE billhook.outbox_partitions (
    window_number integer PRIMARY KEY CHECK (window_number BETWEEN 0 AND 8388606),
    opened_at     timestamptz,
    closed_at     timestamptz,
    CHECK (closed_at >= opened_at)
);
COMMENT ON TABLE billhook.outbox_partitions IS
    'The outbox''s windows: window k holds the events with ids in [k * 2^40, (k + 1) * 2^40), their deliveries and attempts, one partition of each table; opened_at and closed_at bound when its events were written.';
COMMENT ON COLUMN billhook.outbox_partitions.window_number IS
    'The window: its events'' ids are in [window_number * 2^40, (window_number + 1) * 2^40); window 0 holds every id below 2^40.';
COMMENT ON COLUMN billhook.outbox_partitions.opened_at IS
    'When the events'' ids moved into the window (NULL: made ahead, not in use yet).';
COMMENT ON COLUMN billhook.outbox_partitions.closed_at IS
    'When the events'' ids moved on to the next window (NULL: the current window, or one not in use yet).';
SELECT pg_catalog.pg_extension_config_dump('billhook.outbox_partitions', '');

-- The first event id of a window.
CREATE FUNCTION billhook.window_start(window_number integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN window_number::bigint << 40;
COMMENT ON FUNCTION billhook.window_start(integer) IS
    'The first event id of an outbox window (window_number * 2^40).';

-- A window's partitions say what they are, and their columns say what their table's say.
CREATE FUNCTION billhook.describe_outbox_window(window_number integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t text;
    partition regclass;
    col record;
BEGIN
    FOREACH t IN ARRAY ARRAY['events', 'deliveries', 'delivery_attempts'] LOOP
        partition := format('billhook.%I', t || '_' || window_number)::regclass;
        EXECUTE format('COMMENT ON TABLE %s IS %L', partition,
                       format('Window %s of billhook.%s: %s with event ids from %s to %s (billhook.outbox_partitions).',
                              window_number, t,
                              CASE t WHEN 'events' THEN 'the events' WHEN 'deliveries' THEN 'the deliveries of the events'
                                     ELSE 'the attempts of the deliveries of the events' END,
                              CASE WHEN window_number = 0 THEN 'the lowest' ELSE billhook.window_start(window_number)::text END,
                              billhook.window_start(window_number + 1) - 1));
        FOR col IN
            SELECT a.attname, col_description(a.attrelid, a.attnum) AS description
            FROM pg_attribute AS a
            WHERE a.attrelid = format('billhook.%I', t)::regclass AND a.attnum > 0 AND NOT a.attisdropped
        LOOP
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', partition, col.attname, col.description);
        END LOOP;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION billhook.describe_outbox_window(integer) FROM PUBLIC;
COMMENT ON FUNCTION billhook.describe_outbox_window(integer) IS
    'Comments an outbox window''s partitions: what they hold, and their columns as their tables'' columns.';

-- Makes the partitions of a window (events, deliveries, delivery_attempts) that it lacks, as the
-- outbox's owner, and its row. Takes a lock on each table like a new index would (SHARE ROW
-- EXCLUSIVE on the parents, through the foreign keys): the worker makes a window a while before it
-- is needed (billhook.roll_outbox), with a lock timeout. A window whose partitions a restore made
-- gets its row.
CREATE FUNCTION billhook.add_outbox_window(window_number integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bounds text;
    t record;
BEGIN
    IF window_number IS NULL OR window_number NOT BETWEEN 0 AND 8388606 THEN
        RAISE EXCEPTION 'invalid outbox window %', coalesce(window_number::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'A window is a number from 0 to 8388606.';
    END IF;
    bounds := format('FROM (%s) TO (%s)',
                     CASE WHEN window_number = 0 THEN 'MINVALUE' ELSE billhook.window_start(window_number)::text END,
                     billhook.window_start(window_number + 1));
    -- Deliveries leave room on each page, so that a claim or an outcome can be a HOT update.
    FOR t IN SELECT * FROM (VALUES ('events', ''), ('deliveries', ' WITH (fillfactor = 70)'),
                                   ('delivery_attempts', '')) AS v(parent, options)
    LOOP
        IF to_regclass(format('billhook.%I', t.parent || '_' || window_number)) IS NULL THEN
            EXECUTE format('CREATE TABLE billhook.%I PARTITION OF billhook.%I FOR VALUES %s%s',
                           t.parent || '_' || window_number, t.parent, bounds, t.options);
        END IF;
    END LOOP;
    PERFORM billhook.describe_outbox_window(window_number);
    INSERT INTO billhook.outbox_partitions (window_number)
    SELECT add_outbox_window.window_number
    WHERE NOT EXISTS (SELECT FROM billhook.outbox_partitions AS p WHERE p.window_number = add_outbox_window.window_number);
END
$$;
REVOKE ALL ON FUNCTION billhook.add_outbox_window(integer) FROM PUBLIC;
COMMENT ON FUNCTION billhook.add_outbox_window(integer) IS
    'Makes the partitions of events, deliveries and delivery_attempts an outbox window lacks, and its row in billhook.outbox_partitions.';

-- The window the events' next ids are drawn in.
CREATE FUNCTION billhook.current_window() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (s.last_value >> 40)::integer FROM billhook.events_id_seq AS s
$$;
REVOKE ALL ON FUNCTION billhook.current_window() FROM PUBLIC;
COMMENT ON FUNCTION billhook.current_window() IS
    'The outbox window the events'' next ids are drawn in.';

-- The worker's upkeep of the windows, every minute: the next window made when the current one has
-- been open `width` less a tenth of it (ten minutes at most), and the events' ids moved into it
-- once the current one has been open `width`. Returns the window the events' ids are drawn in
-- afterwards. Ids only ever move forward: an id drawn before the move still has its window, and a
-- transaction that drew it commits into it. The next window is not made earlier than that, so
-- that a restore into a database just created (pg_restore) finds no window of the worker's where
-- the dump brings its own.
CREATE FUNCTION billhook.roll_outbox(width interval) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current integer;
    opened timestamptz;
BEGIN
    IF width IS NULL OR width <= interval '0' THEN
        RAISE EXCEPTION 'invalid outbox window width %', coalesce(width::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'The width is a positive interval.';
    END IF;
    -- One upkeep at a time (several workers of one database, a DBA calling it).
    LOCK TABLE billhook.outbox_partitions IN SHARE ROW EXCLUSIVE MODE;
    current := billhook.current_window();
    PERFORM billhook.add_outbox_window(current);
    UPDATE billhook.outbox_partitions AS p SET opened_at = now()
    WHERE p.window_number = current AND p.opened_at IS NULL;
    SELECT p.opened_at INTO STRICT opened FROM billhook.outbox_partitions AS p WHERE p.window_number = current;
    IF current < 8388606 AND opened + width - least(width / 10, interval '10 minutes') <= now() THEN
        PERFORM billhook.add_outbox_window(current + 1);
        IF opened + width <= now() THEN
            PERFORM setval('billhook.events_id_seq', billhook.window_start(current + 1), false);
            UPDATE billhook.outbox_partitions AS p SET closed_at = now() WHERE p.window_number = current;
            current := current + 1;
            UPDATE billhook.outbox_partitions AS p SET opened_at = now() WHERE p.window_number = current;
        END IF;
    END IF;
    RETURN current;
END
$$;
REVOKE ALL ON FUNCTION billhook.roll_outbox(interval) FROM PUBLIC;
COMMENT ON FUNCTION billhook.roll_outbox(interval) IS
    'The worker''s upkeep of the outbox''s windows: the next one made shortly before it is needed, the events'' ids moved into it once the current one has been open width; returns the current window.';

-- Whether everything in a window is done and older than older_than (billhook.drop_outbox_window):
-- its deliveries all succeeded before then (a pending or a failed one keeps the window: failed
-- deliveries stay until replayed or deleted), its events all occurred before then, and the fan-out
-- (standing at fanned_out, fan_out_state.done) has passed them all, none owed, none restored and
-- waiting to be judged. Every look is an index's, in the window's partitions alone.
CREATE FUNCTION billhook.outbox_window_done(window_number integer, older_than interval, fanned_out pg_snapshot)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH bounds AS (
        SELECT CASE WHEN window_number = 0 THEN -9223372036854775808 ELSE billhook.window_start(window_number) END
                   AS lowest,
               billhook.window_start(window_number + 1) AS highest,
               now() - older_than AS cutoff
    )
    SELECT NOT EXISTS (SELECT FROM billhook.deliveries AS d
                       WHERE d.event_id >= b.lowest AND d.event_id < b.highest AND d.status = 'pending')
       AND NOT EXISTS (SELECT FROM billhook.deliveries AS d
                       WHERE d.event_id >= b.lowest AND d.event_id < b.highest AND d.status = 'failed')
       AND NOT EXISTS (SELECT FROM billhook.deliveries AS d
                       WHERE d.event_id >= b.lowest AND d.event_id < b.highest AND d.status = 'succeeded'
                         AND d.delivered_at >= b.cutoff)
       AND NOT EXISTS (SELECT FROM billhook.events AS e
                       WHERE e.id >= b.lowest AND e.id < b.highest AND e.occurred_at >= b.cutoff)
       -- Every transaction below the fan-out's horizon had ended before its last pass began.
       AND NOT EXISTS (SELECT FROM billhook.events AS e
                       WHERE e.id >= b.lowest AND e.id < b.highest
                         AND e.transaction_id >= pg_snapshot_xmin(fanned_out)
                         AND NOT pg_visible_in_snapshot(e.transaction_id, fanned_out))
       AND NOT EXISTS (SELECT FROM billhook.fan_out_owed AS o WHERE o.event_id >= b.lowest AND o.event_id < b.highest)
       AND NOT EXISTS (SELECT FROM billhook.restored_events AS r
                       WHERE r.event_id >= b.lowest AND r.event_id < b.highest)
    FROM bounds AS b
$$;
REVOKE ALL ON FUNCTION billhook.outbox_window_done(integer, interval, pg_snapshot) FROM PUBLIC;
COMMENT ON FUNCTION billhook.outbox_window_done(integer, interval, pg_snapshot) IS
    'Whether an outbox window''s deliveries all succeeded and its events all occurred before now() - older_than, and the fan-out standing at fanned_out passed them all.';

-- Retention by the window: drops the oldest closed window whose rows are all done and older than
-- older_than (billhook.outbox_window_done), with its partitions of events, deliveries and
-- delivery_attempts: what billhook.purge would have deleted row by row, at the cost of a few
-- catalog rows rather than a row's WAL and a vacuum each. The window's partitions are locked before
-- it is looked at again, so nothing changes them between the look and the drop; dropping them
-- locks their tables too, which the worker does with a short lock timeout. Returns the window
-- dropped, NULL if none was.
CREATE FUNCTION billhook.drop_outbox_window(older_than interval) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    candidate integer;
    fanned_out pg_snapshot;
    member record;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'invalid drop_outbox_window(%)', coalesce(older_than::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'older_than is an interval of zero or more.';
    END IF;
    LOCK TABLE billhook.outbox_partitions IN SHARE ROW EXCLUSIVE MODE;
    SELECT s.done INTO STRICT fanned_out FROM billhook.fan_out_state AS s;
    FOR candidate IN
        SELECT p.window_number FROM billhook.outbox_partitions AS p
        WHERE p.closed_at < now() - older_than AND p.window_number < billhook.current_window()
          AND billhook.outbox_window_done(p.window_number, older_than, fanned_out)
        ORDER BY p.window_number
    LOOP
        EXECUTE format('LOCK TABLE billhook.%I, billhook.%I, billhook.%I IN ACCESS EXCLUSIVE MODE',
                       'delivery_attempts_' || candidate, 'deliveries_' || candidate, 'events_' || candidate);
        CONTINUE WHEN NOT billhook.outbox_window_done(candidate, older_than, fanned_out);
        -- Window 0's partitions came with the extension: they leave it (and pg_dump's list) first.
        FOR member IN
            SELECT d.objid::regclass AS partition FROM pg_depend AS d
            WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
              AND d.objid IN (format('billhook.%I', 'delivery_attempts_' || candidate)::regclass,
                              format('billhook.%I', 'deliveries_' || candidate)::regclass,
                              format('billhook.%I', 'events_' || candidate)::regclass)
        LOOP
            EXECUTE format('ALTER EXTENSION billhook DROP TABLE %s', member.partition);
        END LOOP;
        -- A partition that foreign keys point to leaves its table first, which checks them.
        EXECUTE format('DROP TABLE billhook.%I', 'delivery_attempts_' || candidate);
        EXECUTE format('ALTER TABLE billhook.deliveries DETACH PARTITION billhook.%I', 'deliveries_' || candidate);
        EXECUTE format('DROP TABLE billhook.%I', 'deliveries_' || candidate);
        EXECUTE format('ALTER TABLE billhook.events DETACH PARTITION billhook.%I', 'events_' || candidate);
        EXECUTE format('DROP TABLE billhook.%I', 'events_' || candidate);
        DELETE FROM billhook.outbox_partitions AS p WHERE p.window_number = candidate;
        RETURN candidate;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION billhook.drop_outbox_window(interval) FROM PUBLIC;
COMMENT ON FUNCTION billhook.drop_outbox_window(interval) IS
    'Retention by the window: drops the oldest closed window whose rows are all done and older than older_than (billhook.outbox_window_done), with its partitions; returns it, or NULL.';

-- A restore (pg_restore) brings the rows of this table with its windows. The row of a window this
-- database has already (window 0, which comes with CREATE EXTENSION) takes the dumped times.
CREATE FUNCTION billhook.merge_restored_window() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE billhook.outbox_partitions AS p SET opened_at = NEW.opened_at, closed_at = NEW.closed_at
    WHERE p.window_number = NEW.window_number;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION billhook.merge_restored_window() FROM PUBLIC;
COMMENT ON FUNCTION billhook.merge_restored_window() IS
    'Trigger: a restored row of billhook.outbox_partitions for a window this database has gives that window its dumped times.';
CREATE TRIGGER merge_restored_window BEFORE INSERT ON billhook.outbox_partitions
    FOR EACH ROW EXECUTE FUNCTION billhook.merge_restored_window();
ALTER TABLE billhook.outbox_partitions ENABLE ALWAYS TRIGGER merge_restored_window;

SELECT billhook.add_outbox_window(0);
UPDATE billhook.outbox_partitions SET opened_at = now() WHERE window_number = 0;
-- Window 0 comes with CREATE EXTENSION: pg_dump keeps its rows as it keeps the outbox's.
SELECT pg_catalog.pg_extension_config_dump('billhook.events_0', '');
SELECT pg_catalog.pg_extension_config_dump('billhook.deliveries_0', '');
SELECT pg_catalog.pg_extension_config_dump('billhook.delivery_attempts_0', '');
