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

-- Takes a LOCK statement's locks without waiting in line: a lock being waited for holds up every
-- lock asked after it (commits on the outbox's tables among them), so the statement is run with
-- NOWAIT, tried again every 25 ms for `seconds`, then given up with 55P03 naming what it was for.
-- lock_statement is one of billhook's own, never a caller's.
CREATE FUNCTION billhook.lock_without_queueing(lock_statement text, purpose text, seconds float8 DEFAULT 2)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    attempts integer := greatest(ceil(seconds / 0.025), 1);
BEGIN
    FOR attempt IN 1..attempts LOOP
        BEGIN
            EXECUTE lock_statement || ' NOWAIT';
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = attempts THEN
                RAISE EXCEPTION 'billhook could not %: the tables are in use', purpose
                    USING ERRCODE = 'lock_not_available',
                          HINT = 'A long or prepared transaction (pg_locks, pg_prepared_xacts) holds them; try again'
                                 ' when it has ended (the worker does, a minute later).';
            END IF;
            PERFORM pg_sleep(0.025);
        END;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION billhook.lock_without_queueing(text, text, float8) FROM PUBLIC;
COMMENT ON FUNCTION billhook.lock_without_queueing(text, text, float8) IS
    'Runs one of billhook''s LOCK statements with NOWAIT, again every 25 ms for seconds (2 by default), then raises 55P03: a lock waited for would hold up every commit behind it.';

-- A window's partitions are read and written through their tables, whose rights and tenant
-- isolation apply, never by their own names: no one but their owner holds a right on them, whatever
-- default privileges or a GRANT ... ON ALL TABLES IN SCHEMA gave, and row-level security without a
-- policy shows anyone else who reaches one nothing (pg_dump keeps that; it does not keep an ACL that
-- merely matches the default, which a restore's own default privileges then replace). The worker
-- seals every window at each upkeep.
CREATE FUNCTION billhook.seal_outbox_window(window_number integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    partition record;
    grantee oid;
BEGIN
    FOR partition IN
        SELECT c.oid::regclass AS name, c.relowner, c.relrowsecurity
        FROM unnest(ARRAY['events', 'deliveries', 'delivery_attempts']) AS t(parent)
        JOIN pg_class AS c ON c.oid = to_regclass(format('billhook.%I', t.parent || '_' || window_number))
    LOOP
        FOR grantee IN
            SELECT DISTINCT a.grantee FROM pg_class AS c, aclexplode(c.relacl) AS a
            WHERE c.oid = partition.name AND a.grantee <> partition.relowner
        LOOP
            EXECUTE format('REVOKE ALL ON %s FROM %s', partition.name,
                           CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE grantee::regrole::text END);
        END LOOP;
        IF NOT partition.relrowsecurity THEN
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', partition.name);
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION billhook.seal_outbox_window(integer) FROM PUBLIC;
COMMENT ON FUNCTION billhook.seal_outbox_window(integer) IS
    'Takes every right on an outbox window''s partitions from everyone but their owner and enables row-level security on them (no policy: nothing shows to anyone else); they are used through their tables.';

-- Makes a window's partitions of events, deliveries and delivery_attempts, if it has none yet, and
-- its row; returns whether it made them now. Each partition is made as a table of its own, with
-- its keys, indexes and foreign keys, then attached: attaching locks its table SHARE UPDATE
-- EXCLUSIVE, which commits and the worker's statements do not wait for (making a partition in
-- place would lock it ACCESS EXCLUSIVE); the deliveries' also lock webhooks (see below). The keys
-- and foreign keys are the window's own, not its tables': a restore (pg_restore) makes each
-- window's from the dump, where keys of the partitioned tables would be made again as each window
-- is attached, and clash; and a window's deliveries point to its events alone, so it goes as a
-- whole with nothing to check elsewhere (billhook.drop_outbox_window). The partitions are sealed
-- (billhook.seal_outbox_window).
CREATE FUNCTION billhook.add_outbox_window(window_number integer) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '1s' AS $$
DECLARE
    k integer := window_number;
    bounds text;
    t record;
BEGIN
    IF k IS NULL OR k NOT BETWEEN 0 AND 8388606 THEN
        RAISE EXCEPTION 'invalid outbox window %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'A window is a number from 0 to 8388606.';
    END IF;
    FOR t IN SELECT * FROM unnest(ARRAY['events', 'deliveries', 'delivery_attempts']) AS p(parent) LOOP
        IF to_regclass(format('billhook.%I', t.parent || '_' || k)) IS NOT NULL
           AND NOT EXISTS (SELECT FROM pg_inherits AS i
                           WHERE i.inhrelid = to_regclass(format('billhook.%I', t.parent || '_' || k))
                             AND i.inhparent = format('billhook.%I', t.parent)::regclass) THEN
            RAISE EXCEPTION 'billhook.% is not a partition of billhook.%', t.parent || '_' || k, t.parent
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Attach it to its table again, or rename it out of the way.';
        END IF;
    END LOOP;
    IF to_regclass(format('billhook.%I', 'delivery_attempts_' || k)) IS NOT NULL THEN
        INSERT INTO billhook.outbox_partitions (window_number)
        SELECT k WHERE NOT EXISTS (SELECT FROM billhook.outbox_partitions AS p WHERE p.window_number = k);
        RETURN false;
    END IF;
    bounds := format('FROM (%s) TO (%s)', CASE WHEN k = 0 THEN 'MINVALUE' ELSE billhook.window_start(k)::text END,
                     billhook.window_start(k + 1));
    IF to_regclass(format('billhook.%I', 'events_' || k)) IS NULL THEN
        EXECUTE format('CREATE TABLE billhook.%1$I (LIKE billhook.events INCLUDING CONSTRAINTS INCLUDING STORAGE'
                       ' INCLUDING COMPRESSION);'
                       ' ALTER TABLE billhook.%1$I ADD CONSTRAINT %2$I PRIMARY KEY (id);'
                       -- An entity's events in order: the previous push of a webhook ordered by entity
                       -- (src/delivering/worker/statements/claim.sql).
                       ' CREATE INDEX %3$I ON billhook.%1$I (entity_type, entity_id, id);'
                       ' CREATE INDEX %4$I ON billhook.%1$I (occurred_at);'
                       -- The fan-out (billhook.fan_out) finds the events of transactions that committed
                       -- since its last pass by their transaction ids.
                       ' CREATE INDEX %5$I ON billhook.%1$I (transaction_id, id)',
                       'events_' || k, 'events_' || k || '_pkey', 'events_' || k || '_entity',
                       'events_' || k || '_occurred_at', 'events_' || k || '_transaction');
        EXECUTE format('ALTER TABLE billhook.events ATTACH PARTITION billhook.%I FOR VALUES %s', 'events_' || k, bounds);
    END IF;
    IF to_regclass(format('billhook.%I', 'deliveries_' || k)) IS NULL THEN
        -- Room on each page lets a claim or an outcome be a HOT update: the lease columns are
        -- deliberately unindexed.
        EXECUTE format('CREATE TABLE billhook.%1$I (LIKE billhook.deliveries INCLUDING CONSTRAINTS INCLUDING STORAGE)'
                       ' WITH (fillfactor = 70);'
                       ' ALTER TABLE billhook.%1$I ADD CONSTRAINT %2$I PRIMARY KEY (id),'
                       '     ADD CONSTRAINT %3$I UNIQUE (event_id, webhook_id),'
                       '     ADD CONSTRAINT %4$I FOREIGN KEY (event_id) REFERENCES billhook.%5$I ON DELETE CASCADE;'
                       -- The worker claims per webhook, oldest due first: a backlog at one webhook is
                       -- never scanned to reach another's.
                       ' CREATE INDEX %6$I ON billhook.%1$I (webhook_id, next_attempt_at) WHERE status = ''pending'';'
                       ' CREATE INDEX %7$I ON billhook.%1$I (webhook_id);'
                       ' CREATE INDEX %8$I ON billhook.%1$I (delivered_at) WHERE status = ''succeeded'';'
                       ' CREATE INDEX %9$I ON billhook.%1$I (webhook_id) WHERE status = ''failed'';'
                       -- Failed deliveries stay for billhook.failed_retention from their last attempt,
                       -- and keep their window until then (billhook.purge, outbox_window_done).
                       ' CREATE INDEX %11$I ON billhook.%1$I ((coalesce(last_attempt_at, created_at)))'
                       '     WHERE status = ''failed'';'
                       -- A receiver reports a push by its key (derived from the event and the webhook,
                       -- which are unique together).
                       ' CREATE INDEX %10$I ON billhook.%1$I (idempotency_key)',
                       'deliveries_' || k, 'deliveries_' || k || '_pkey', 'deliveries_' || k || '_event_webhook',
                       'deliveries_' || k || '_event_fkey', 'events_' || k, 'deliveries_' || k || '_due',
                       'deliveries_' || k || '_webhook', 'deliveries_' || k || '_succeeded',
                       'deliveries_' || k || '_failed', 'deliveries_' || k || '_idempotency_key',
                       'deliveries_' || k || '_failed_age');
        -- Attaching it copies the deliveries' foreign key to webhooks, which locks webhooks SHARE ROW
        -- EXCLUSIVE: the worker's outcomes and changes to webhooks wait for that, so it is not
        -- waited for in line.
        PERFORM billhook.lock_without_queueing('LOCK TABLE billhook.webhooks IN SHARE ROW EXCLUSIVE MODE',
                                               format('make outbox window %s', k));
        EXECUTE format('ALTER TABLE billhook.deliveries ATTACH PARTITION billhook.%I FOR VALUES %s',
                       'deliveries_' || k, bounds);
    END IF;
    EXECUTE format('CREATE TABLE billhook.%1$I (LIKE billhook.delivery_attempts INCLUDING CONSTRAINTS INCLUDING STORAGE);'
                   ' ALTER TABLE billhook.%1$I ADD CONSTRAINT %2$I PRIMARY KEY (id),'
                   '     ADD CONSTRAINT %3$I FOREIGN KEY (delivery_id) REFERENCES billhook.%4$I ON DELETE CASCADE;'
                   ' CREATE INDEX %5$I ON billhook.%1$I (delivery_id);'
                   ' CREATE INDEX %6$I ON billhook.%1$I (webhook_id, attempted_at);'
                   -- billhook.delivery_report reads attempts by time; they are written in time order, so a
                   -- BRIN index serves it at almost no cost to the worker's writes.
                   ' CREATE INDEX %7$I ON billhook.%1$I USING brin (attempted_at)',
                   'delivery_attempts_' || k, 'delivery_attempts_' || k || '_pkey',
                   'delivery_attempts_' || k || '_delivery_fkey', 'deliveries_' || k,
                   'delivery_attempts_' || k || '_delivery', 'delivery_attempts_' || k || '_webhook',
                   'delivery_attempts_' || k || '_time');
    EXECUTE format('ALTER TABLE billhook.delivery_attempts ATTACH PARTITION billhook.%I FOR VALUES %s',
                   'delivery_attempts_' || k, bounds);
    PERFORM billhook.seal_outbox_window(k);
    PERFORM billhook.describe_outbox_window(k);
    INSERT INTO billhook.outbox_partitions (window_number)
    SELECT k WHERE NOT EXISTS (SELECT FROM billhook.outbox_partitions AS p WHERE p.window_number = k);
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION billhook.add_outbox_window(integer) FROM PUBLIC;
COMMENT ON FUNCTION billhook.add_outbox_window(integer) IS
    'Makes an outbox window''s partitions of events, deliveries and delivery_attempts with their keys and indexes, if it has none yet, and its row in billhook.outbox_partitions; returns whether it made them now.';

-- The window the events' next ids are drawn in.
CREATE FUNCTION billhook.current_window() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (s.last_value >> 40)::integer FROM billhook.events_id_seq AS s
$$;
REVOKE ALL ON FUNCTION billhook.current_window() FROM PUBLIC;
COMMENT ON FUNCTION billhook.current_window() IS
    'The outbox window the events'' next ids are drawn in.';

-- The worker's upkeep of the windows, every minute: the next window made when the current one has
-- been open `width` less a tenth of it (ten minutes at most); the events' ids moved into it at the
-- first upkeep after the current one has been open `width`, never in the transaction that made it
-- (setval is not undone by a rollback: ids must never move into a window whose making could still
-- roll back); never with width NULL (billhook.outbox_window = 0), which only makes the current
-- window if it is missing (a dump can hold the sequence's position after a move it holds no
-- window of). Every window is sealed again (billhook.seal_outbox_window). Returns the window the
-- events' ids are drawn in afterwards. Ids only ever move forward: an id drawn before the move
-- keeps its window, and a transaction that drew it commits into it. Every
-- window below the current one counts as closed. The next window is not made earlier than that, so
-- that a restore into a database just created (pg_restore) finds no window of the worker's where
-- the dump brings its own.
CREATE FUNCTION billhook.roll_outbox(width interval) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '1s' AS $$
DECLARE
    current integer;
    opened timestamptz;
    sealed integer;
    moved timestamptz;
BEGIN
    IF width <= interval '0' THEN
        RAISE EXCEPTION 'invalid outbox window width %', width
            USING ERRCODE = 'invalid_parameter_value', HINT = 'The width is a positive interval, or NULL: never move on.';
    END IF;
    -- A backend caching ids would draw them from a window after it closed, or was dropped.
    IF (SELECT s.seqcache FROM pg_sequence AS s WHERE s.seqrelid = 'billhook.events_id_seq'::regclass) > 1 THEN
        RAISE EXCEPTION 'billhook.events_id_seq caches ids: the outbox''s windows cannot move on'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'ALTER SEQUENCE billhook.events_id_seq CACHE 1';
    END IF;
    -- One upkeep at a time (several workers of one database, a DBA calling it).
    LOCK TABLE billhook.outbox_partitions IN SHARE ROW EXCLUSIVE MODE;
    current := billhook.current_window();
    PERFORM billhook.add_outbox_window(current);
    UPDATE billhook.outbox_partitions AS p
    SET opened_at = coalesce(p.opened_at, now()), closed_at = coalesce(p.closed_at, now())
    WHERE p.window_number < current AND p.closed_at IS NULL;
    UPDATE billhook.outbox_partitions AS p SET opened_at = now()
    WHERE p.window_number = current AND p.opened_at IS NULL;
    FOR sealed IN SELECT p.window_number FROM billhook.outbox_partitions AS p LOOP
        PERFORM billhook.seal_outbox_window(sealed);
    END LOOP;
    SELECT p.opened_at INTO STRICT opened FROM billhook.outbox_partitions AS p WHERE p.window_number = current;
    IF width IS NULL OR current = 8388606 OR opened + width - least(width / 10, interval '10 minutes') > now() THEN
        RETURN current;
    END IF;
    IF billhook.add_outbox_window(current + 1) THEN
        RETURN current;
    END IF;
    -- Made earlier in this transaction (the lock its making took is still held): not yet for good.
    IF EXISTS (SELECT FROM pg_locks AS l
               WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
                 AND l.relation = format('billhook.%I', 'delivery_attempts_' || (current + 1))::regclass) THEN
        RETURN current;
    END IF;
    IF opened + width <= now() THEN
        PERFORM setval('billhook.events_id_seq', billhook.window_start(current + 1), false);
        -- The time of the move, not of the transaction's start: billhook.pending_from counts from it.
        moved := clock_timestamp();
        UPDATE billhook.outbox_partitions AS p SET closed_at = moved WHERE p.window_number = current;
        current := current + 1;
        UPDATE billhook.outbox_partitions AS p SET opened_at = moved WHERE p.window_number = current;
    END IF;
    RETURN current;
END
$$;
REVOKE ALL ON FUNCTION billhook.roll_outbox(interval) FROM PUBLIC;
COMMENT ON FUNCTION billhook.roll_outbox(interval) IS
    'The worker''s upkeep of the outbox''s windows: the current one made if missing, the next one made shortly before it is due, the events'' ids moved into it by a later transaction once the current one has been open width (never with width NULL), every window sealed; returns the current window.';

-- Where the worker's claims start reading: the first event id of the oldest window holding a
-- pending delivery, or of the current window if none does (the windows made ahead hold nothing
-- yet). A claim reads no window below it but for one look into each one's index of pending
-- deliveries (src/delivering/worker/statements/claim.sql), rather than every window kept for
-- reports. The worker looks it up again every poll interval and after each commit that may have
-- queued deliveries below it (a redelivery, a replay, a restore, a fan-out into a window older than
-- the current); a delivery made pending below it otherwise (by hand) waits for the next look-up.
-- A fan-out tells whether it made deliveries below the current window from the events' sequence,
-- before it commits: one that read it before a move and commits after a look-up that followed
-- the move would not be looked for. So every window that was current within the last minute is
-- read too (far longer than the worker's fan-out keeps its transaction open): the one before the
-- current while the move into the current one is not seen a minute old (not yet committed, say),
-- and any closed since.
-- Each of the deliveries' partitions is asked on its own, whose index of pending deliveries answers
-- at once: a range of event ids on the parent would be read through the windows' keys, every row
-- of them. A partition that is not a window's as billhook makes them (attached by hand) makes the
-- claims read every window.
CREATE FUNCTION billhook.pending_from() RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    latest integer := greatest(billhook.current_window(), 0);
    part record;
    pending boolean;
BEGIN
    IF latest > 0 AND NOT EXISTS (SELECT FROM billhook.outbox_partitions AS p
                                  WHERE p.window_number = latest AND p.opened_at <= now() - interval '1 minute') THEN
        latest := latest - 1;
    END IF;
    latest := least(latest, (SELECT min(p.window_number) FROM billhook.outbox_partitions AS p
                             WHERE p.closed_at > now() - interval '1 minute'));
    FOR part IN
        SELECT * FROM (
            SELECT format('%I.%I', n.nspname, c.relname) AS partition, w.k,
                   -- Named, placed and bounded as billhook.add_outbox_window makes window k's.
                   n.nspname = 'billhook'
                     AND pg_catalog.pg_get_expr(c.relpartbound, c.oid)
                         = format('FOR VALUES FROM (%s) TO (%L)',
                                  CASE WHEN w.k = 0 THEN 'MINVALUE' ELSE quote_literal(billhook.window_start(w.k)) END,
                                  billhook.window_start(w.k + 1)) AS a_window
            FROM pg_catalog.pg_inherits AS i
            JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
            JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
            CROSS JOIN LATERAL (SELECT substring(c.relname FROM '^deliveries_([0-9]{1,9})$')::integer AS k) AS w
            WHERE i.inhparent = 'billhook.deliveries'::regclass) AS p
        -- Any partition that is not a window's first.
        ORDER BY p.a_window IS TRUE, p.k
    LOOP
        IF part.a_window IS NOT TRUE THEN
            RETURN -9223372036854775808;
        END IF;
        EXIT WHEN part.k >= latest;
        BEGIN
            EXECUTE format('SELECT EXISTS (SELECT FROM %s WHERE status = ''pending'')', part.partition) INTO pending;
        EXCEPTION WHEN undefined_table THEN
            -- Dropped since it was listed: it held nothing pending.
            pending := false;
        END;
        IF pending THEN
            latest := part.k;
            EXIT;
        END IF;
    END LOOP;
    RETURN CASE WHEN latest = 0 THEN -9223372036854775808 ELSE billhook.window_start(latest) END;
END
$$;
REVOKE ALL ON FUNCTION billhook.pending_from() FROM PUBLIC;
COMMENT ON FUNCTION billhook.pending_from() IS
    'The first event id of the oldest outbox window holding a pending delivery, or of the current window if none does (of the oldest window current within the last minute, if older): where the worker''s claims start reading.';

-- Whether everything in a window is done and older than older_than (billhook.drop_outbox_window):
-- its deliveries all succeeded before then or failed (last attempted) before now() -
-- failed_older_than (a pending one keeps the window, and a failed one too while failed_older_than
-- is NULL), its events all occurred before then, and the fan-out (standing at fanned_out,
-- fan_out_state.done) has passed them all, none owed, none restored and waiting to be judged.
-- Every look is an index's, in the window's partitions alone.
CREATE FUNCTION billhook.outbox_window_done(window_number integer, older_than interval, fanned_out pg_snapshot,
                                            failed_older_than interval)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH bounds AS (
        SELECT CASE WHEN window_number = 0 THEN -9223372036854775808 ELSE billhook.window_start(window_number) END
                   AS lowest,
               billhook.window_start(window_number + 1) AS highest,
               now() - older_than AS cutoff,
               coalesce(now() - failed_older_than, '-infinity') AS failed_cutoff
    )
    SELECT NOT EXISTS (SELECT FROM billhook.deliveries AS d
                       WHERE d.event_id >= b.lowest AND d.event_id < b.highest AND d.status = 'pending')
       AND NOT EXISTS (SELECT FROM billhook.deliveries AS d
                       WHERE d.event_id >= b.lowest AND d.event_id < b.highest AND d.status = 'failed'
                         AND coalesce(d.last_attempt_at, d.created_at) >= b.failed_cutoff)
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
                       WHERE r.event_id >= b.lowest AND r.event_id < b.highest AND r.transaction_id IS NOT NULL)
    FROM bounds AS b
$$;
REVOKE ALL ON FUNCTION billhook.outbox_window_done(integer, interval, pg_snapshot, interval) FROM PUBLIC;
COMMENT ON FUNCTION billhook.outbox_window_done(integer, interval, pg_snapshot, interval) IS
    'Whether an outbox window''s deliveries all succeeded and its events all occurred before now() - older_than, its failed deliveries were last attempted before now() - failed_older_than (none failed, if that is NULL), and the fan-out standing at fanned_out passed them all.';

-- Retention by the window: drops the oldest closed window whose rows are all done and older than
-- older_than, its failed deliveries older than failed_older_than (NULL: a failed delivery keeps its
-- window; billhook.outbox_window_done), with its partitions of events, deliveries and
-- delivery_attempts: what billhook.purge would have deleted row by row, at the cost of a few catalog
-- rows rather than a row's WAL and a vacuum each. Dropping a partition locks its table ACCESS
-- EXCLUSIVE: the three tables and the window's partitions are taken at once without queueing
-- (billhook.lock_without_queueing). Held, the window is looked at again, so nothing changes it
-- between the look and the drop; its foreign keys are its own, so the drop checks nothing
-- elsewhere. The tables stay locked until the transaction ends, which removes the partitions'
-- files (a pass over shared buffers, an unlink per file). A window
-- row whose partitions are all gone (dropped by hand) goes too. Returns the window dropped, NULL if
-- none was.
CREATE FUNCTION billhook.drop_outbox_window(older_than interval, failed_older_than interval DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    candidate integer;
    fanned_out pg_snapshot;
    member record;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' OR failed_older_than < interval '0' THEN
        RAISE EXCEPTION 'invalid drop_outbox_window(%, %)', coalesce(older_than::text, 'NULL'),
                        coalesce(failed_older_than::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'older_than is an interval of zero or more, failed_older_than one too or NULL.';
    END IF;
    -- The look again once the locks are held must see what committed while it waited for them (a
    -- replay making a delivery of the window pending): a snapshot kept for the transaction would not.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'drop_outbox_window runs at READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'Call it in a READ COMMITTED transaction, as the worker does.';
    END IF;
    LOCK TABLE billhook.outbox_partitions IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM billhook.outbox_partitions AS p
    WHERE to_regclass(format('billhook.%I', 'events_' || p.window_number)) IS NULL
      AND to_regclass(format('billhook.%I', 'deliveries_' || p.window_number)) IS NULL
      AND to_regclass(format('billhook.%I', 'delivery_attempts_' || p.window_number)) IS NULL;
    SELECT s.done INTO STRICT fanned_out FROM billhook.fan_out_state AS s;
    SELECT p.window_number INTO candidate FROM billhook.outbox_partitions AS p
    WHERE p.closed_at < now() - older_than AND p.window_number < billhook.current_window()
      AND billhook.outbox_window_done(p.window_number, older_than, fanned_out, failed_older_than)
    ORDER BY p.window_number LIMIT 1;
    IF candidate IS NULL THEN
        RETURN NULL;
    END IF;
    -- The tables themselves (ONLY: not every window's partitions) and the window's partitions.
    PERFORM billhook.lock_without_queueing(
        format('LOCK TABLE ONLY billhook.delivery_attempts, ONLY billhook.deliveries, ONLY billhook.events,'
               ' billhook.%I, billhook.%I, billhook.%I IN ACCESS EXCLUSIVE MODE',
               'delivery_attempts_' || candidate, 'deliveries_' || candidate, 'events_' || candidate),
        format('drop outbox window %s', candidate));
    IF NOT billhook.outbox_window_done(candidate, older_than, fanned_out, failed_older_than) THEN
        RETURN NULL;
    END IF;
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
    EXECUTE format('DROP TABLE billhook.%I, billhook.%I, billhook.%I',
                   'delivery_attempts_' || candidate, 'deliveries_' || candidate, 'events_' || candidate);
    -- Restored events judged long ago: nothing waits for them any more.
    DELETE FROM billhook.restored_events AS r
    WHERE r.event_id >= billhook.window_start(candidate) AND r.event_id < billhook.window_start(candidate + 1)
       OR (candidate = 0 AND r.event_id < 0);
    DELETE FROM billhook.outbox_partitions AS p WHERE p.window_number = candidate;
    RETURN candidate;
END
$$;
REVOKE ALL ON FUNCTION billhook.drop_outbox_window(interval, interval) FROM PUBLIC;
COMMENT ON FUNCTION billhook.drop_outbox_window(interval, interval) IS
    'Retention by the window: drops the oldest closed window whose rows are all done and older than older_than, its failed deliveries older than failed_older_than (NULL: none failed; billhook.outbox_window_done), with its partitions; returns it, or NULL.';

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
