-- billhook 0.12.0 → 0.13.0 (ALTER EXTENSION billhook UPDATE): expense amounts are finite,
-- subscriptions listed once, entities compressed with lz4, the outbox partitioned by window of time
-- (see CHANGELOG.md).
-- Hand-written; tests/test_upgrade.py checks that an upgraded install has exactly the objects of a
-- fresh 0.13.0 install.

\echo Use "ALTER EXTENSION billhook UPDATE" to load this file. \quit

-- An expense's amount is below 10^15, as line amounts and prices are: 'NaN' and 'Infinity' passed
-- `amount >= 0`, and their pushes broke the decimal the push schemas promise. A row outside stops
-- the update, naming the check and how to find the row; money is not changed behind anyone's back.
-- (Added NOT VALID and validated apart only for that message: the lock is the same.)
ALTER TABLE billhook.expenses DROP CONSTRAINT expenses_amount_check;
ALTER TABLE billhook.expenses ADD CONSTRAINT expenses_amount_check CHECK (amount >= 0 AND amount < 1e15) NOT VALID;
DO $$
BEGIN
    ALTER TABLE billhook.expenses VALIDATE CONSTRAINT expenses_amount_check;
EXCEPTION WHEN check_violation THEN
    RAISE EXCEPTION 'billhook 0.13.0: rows of billhook.expenses break its check expenses_amount_check'
        USING ERRCODE = 'check_violation',
              HINT = 'Find them with SELECT * FROM billhook.expenses WHERE NOT (amount >= 0 AND amount < 1e15);'
                     ' correct or delete them, then run ALTER EXTENSION billhook UPDATE again. Until then'
                     ' 0.12.0 stays installed and working.';
END
$$;
COMMENT ON COLUMN billhook.expenses.amount IS 'Total excluding tax (from 0, below 10^15).';

-- A webhook subscribed to operational events listed each of them twice in subscribed_events; the
-- library of 0.13.0 lists them once. Webhooks saved before get their list again. One whose
-- enabled_events names an event type deleted since cannot be expanded: it keeps its list, and the
-- update says so rather than stopping.
DO $$
DECLARE
    hook record;
BEGIN
    FOR hook IN
        SELECT w.id FROM billhook.webhooks AS w
        WHERE cardinality(w.subscribed_events) <> (SELECT count(DISTINCT s) FROM unnest(w.subscribed_events) AS s)
        ORDER BY w.id
    LOOP
        BEGIN
            UPDATE billhook.webhooks
            SET subscribed_events = billhook.expand_subscription(enabled_events, payload_format)
            WHERE id = hook.id;
        EXCEPTION WHEN invalid_parameter_value THEN
            RAISE WARNING 'billhook 0.13.0: webhook % keeps its subscribed_events, which list some events twice: %',
                hook.id, SQLERRM
                USING HINT = 'Update the webhook''s enabled_events (billhook.update_webhook) to event types that exist.';
        END;
    END LOOP;
END
$$;

-- New entities are compressed with lz4 where the server has it (those written before keep pglz, and
-- are read as they are).
DO $$
BEGIN
    ALTER TABLE billhook.events ALTER COLUMN entity SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;  -- a server built without lz4 keeps the default, pglz
END
$$;

-- The outbox partitioned by window of time (sql/partitions.sql, docs/operations.md): events,
-- deliveries and delivery_attempts become partitioned tables, their rows copied into window 0 (every
-- id below 2^40, so every row an install has). The copy rewrites the outbox once: its time and WAL
-- are those of writing the outbox anew (billhook.purge first keeps them small). The tables as they
-- were wait in schema billhook_0_12_outbox while their rows are copied, and go with it.
-- Objects of others on the three tables (views, foreign keys to them, triggers, publications) could
-- not follow them: the update stops before it copies anything, naming them.
DO $$
DECLARE
    dependents text;
BEGIN
    SELECT string_agg(o.name, ', ' ORDER BY o.name) INTO dependents FROM (
    SELECT DISTINCT CASE WHEN r.oid IS NOT NULL THEN pg_describe_object('pg_class'::regclass, r.ev_class, 0)
                         ELSE pg_describe_object(d.classid, d.objid, d.objsubid) END AS name
    FROM pg_depend AS d
    LEFT JOIN pg_rewrite AS r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
    LEFT JOIN pg_constraint AS c ON d.classid = 'pg_constraint'::regclass AND c.oid = d.objid
    WHERE d.refclassid = 'pg_class'::regclass
      AND d.refobjid IN ('billhook.events'::regclass, 'billhook.deliveries'::regclass,
                         'billhook.delivery_attempts'::regclass)
      AND d.deptype = 'n'
      AND ((r.oid IS NOT NULL AND r.ev_class NOT IN ('billhook.webhook_overview'::regclass,
                                                       'billhook.webhook_health'::regclass,
                                                       'billhook.delivery_status'::regclass))
           OR (c.oid IS NOT NULL AND c.contype = 'f'
               AND c.conrelid NOT IN ('billhook.events'::regclass, 'billhook.deliveries'::regclass,
                                      'billhook.delivery_attempts'::regclass, 'billhook.fan_out_owed'::regclass,
                                      'billhook.restored_events'::regclass)))
    UNION
    SELECT format('trigger %I on %s', g.tgname, pg_describe_object('pg_class'::regclass, g.tgrelid, 0))
    FROM pg_trigger AS g
    WHERE g.tgrelid IN ('billhook.events'::regclass, 'billhook.deliveries'::regclass,
                        'billhook.delivery_attempts'::regclass)
      AND NOT g.tgisinternal AND g.tgname <> 'mark_event_restored'
    UNION
    -- A publication of the tables would silently stop carrying their changes.
    SELECT format('publication %I', p.pubname)
    FROM pg_publication_rel AS r JOIN pg_publication AS p ON p.oid = r.prpubid
    WHERE r.prrelid IN ('billhook.events'::regclass, 'billhook.deliveries'::regclass,
                        'billhook.delivery_attempts'::regclass)) AS o;
    IF dependents IS NOT NULL THEN
        RAISE EXCEPTION 'billhook 0.13.0 partitions its outbox, on which these depend: %', dependents
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Drop them or take the tables out of the publications (and make them again after the'
                         ' update, on billhook.events, billhook.deliveries or billhook.delivery_attempts; publish'
                         ' with publish_via_partition_root = true), then run ALTER EXTENSION billhook UPDATE'
                         ' again. Until then 0.12.0 stays installed and working.';
    END IF;
END
$$;
CREATE SCHEMA billhook_0_12_outbox;
ALTER TABLE billhook.fan_out_owed DROP CONSTRAINT fan_out_owed_event_id_fkey;
ALTER TABLE billhook.restored_events DROP CONSTRAINT restored_events_event_id_fkey;
ALTER TABLE billhook.delivery_attempts SET SCHEMA billhook_0_12_outbox;
ALTER TABLE billhook.deliveries SET SCHEMA billhook_0_12_outbox;
ALTER TABLE billhook.events SET SCHEMA billhook_0_12_outbox;

CREATE TABLE billhook.events (
    id                 bigint GENERATED BY DEFAULT AS IDENTITY,
    administration_id  bigint NOT NULL,
    event_type         text NOT NULL CHECK (billhook.is_event_type(event_type)),
    entity_type        text NOT NULL,
    entity_id          bigint NOT NULL,
    state              text,
    entity             jsonb NOT NULL,
    occurred_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    transaction_id     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    previous_state     text,
    -- A commit that would write a larger entity fails with this check.
    CONSTRAINT events_entity_size_check CHECK (billhook.fits_in_an_event(entity))
) PARTITION BY RANGE (id);
-- Entities of more than about 2 kB are compressed as the commit writes them, and decompressed as the
-- worker reads them: with lz4 where the server has it, which takes a fraction of pglz's time.
DO $$
BEGIN
    ALTER TABLE billhook.events ALTER COLUMN entity SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;  -- a server built without lz4 keeps the default, pglz
END
$$;
CREATE TRIGGER mark_event_restored BEFORE INSERT ON billhook.events
    FOR EACH ROW EXECUTE FUNCTION billhook.mark_event_restored();
ALTER TABLE billhook.events ENABLE REPLICA TRIGGER mark_event_restored;

CREATE TABLE billhook.deliveries (
    id                bigint GENERATED BY DEFAULT AS IDENTITY,
    event_id          bigint NOT NULL,
    webhook_id        bigint NOT NULL REFERENCES billhook.webhooks ON DELETE CASCADE,
    idempotency_key   uuid NOT NULL DEFAULT gen_random_uuid(),
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    locked_until      timestamptz,
    last_attempt_at   timestamptz,
    last_http_status  integer,
    last_http_body    text,
    last_error        text,
    last_duration_ms  integer,
    delivered_at      timestamptz,
    locked_by         integer,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- What the worker computes from (a retry's number, the next due time) stays in range whatever
    -- an application writes; the worker's own writes saturate below these.
    CONSTRAINT deliveries_attempts_check CHECK (attempts BETWEEN 0 AND 1000000),
    CONSTRAINT deliveries_next_attempt_at_check CHECK (isfinite(next_attempt_at))
) PARTITION BY RANGE (event_id);
CREATE TABLE billhook.delivery_attempts (
    id             bigint GENERATED BY DEFAULT AS IDENTITY,
    delivery_id    bigint NOT NULL,
    event_id       bigint NOT NULL,
    webhook_id     bigint NOT NULL,
    attempt        integer NOT NULL,
    attempted_at   timestamptz NOT NULL,
    duration_ms    integer NOT NULL,
    http_status    integer,
    response_body  text,
    error          text,
    succeeded      boolean NOT NULL
) PARTITION BY RANGE (event_id);


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

-- Their rows, comments, rights and row-level security, as the tables had them.
INSERT INTO billhook.events (id, administration_id, event_type, entity_type, entity_id, state, entity, occurred_at,
                             transaction_id, previous_state)
SELECT id, administration_id, event_type, entity_type, entity_id, state, entity, occurred_at, transaction_id,
       previous_state
FROM billhook_0_12_outbox.events ORDER BY id;
INSERT INTO billhook.deliveries (id, event_id, webhook_id, idempotency_key, status, attempts, next_attempt_at,
                                 locked_until, last_attempt_at, last_http_status, last_http_body, last_error,
                                 last_duration_ms, delivered_at, locked_by, created_at)
SELECT id, event_id, webhook_id, idempotency_key, status, attempts, next_attempt_at, locked_until, last_attempt_at,
       last_http_status, last_http_body, last_error, last_duration_ms, delivered_at, locked_by, created_at
FROM billhook_0_12_outbox.deliveries ORDER BY id;
INSERT INTO billhook.delivery_attempts (id, delivery_id, event_id, webhook_id, attempt, attempted_at, duration_ms,
                                        http_status, response_body, error, succeeded)
SELECT a.id, a.delivery_id, d.event_id, a.webhook_id, a.attempt, a.attempted_at, a.duration_ms, a.http_status,
       a.response_body, a.error, a.succeeded
FROM billhook_0_12_outbox.delivery_attempts AS a JOIN billhook_0_12_outbox.deliveries AS d ON d.id = a.delivery_id
ORDER BY a.id;
DO $$
DECLARE
    t text;
    old regclass;
    new regclass;
    item record;
BEGIN
    FOREACH t IN ARRAY ARRAY['events', 'deliveries', 'delivery_attempts'] LOOP
        old := format('billhook_0_12_outbox.%I', t)::regclass;
        new := format('billhook.%I', t)::regclass;
        -- (last_value: the last id drawn; NULL if none was.)
        PERFORM setval(pg_get_serial_sequence(new::text, 'id'), s.last_value)
        FROM pg_sequences AS s
        WHERE format('%I.%I', s.schemaname, s.sequencename)::regclass = pg_get_serial_sequence(old::text, 'id')::regclass
          AND s.last_value IS NOT NULL;
        EXECUTE format('COMMENT ON TABLE %s IS %L', new, obj_description(old, 'pg_class'));
        FOR item IN
            SELECT a.attname, col_description(old, a.attnum) AS description
            FROM pg_attribute AS a WHERE a.attrelid = old AND a.attnum > 0 AND NOT a.attisdropped
              AND col_description(old, a.attnum) IS NOT NULL
        LOOP
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', new, item.attname, item.description);
        END LOOP;
        -- Rights on the table and on its columns (billhook.create_roles).
        FOR item IN
            SELECT g.privilege_type, g.grantee, NULL::name AS attname
            FROM pg_class AS c, aclexplode(c.relacl) AS g
            WHERE c.oid = old AND g.grantee <> c.relowner
            UNION ALL
            SELECT g.privilege_type, g.grantee, a.attname
            FROM pg_attribute AS a, aclexplode(a.attacl) AS g
            WHERE a.attrelid = old AND a.attnum > 0 AND NOT a.attisdropped
        LOOP
            EXECUTE format('GRANT %s %s ON %s TO %s', item.privilege_type,
                           coalesce('(' || quote_ident(item.attname) || ')', ''), new,
                           CASE WHEN item.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(item.grantee::regrole::text) END);
        END LOOP;
        -- Policies (tenant isolation's, billhook.apply_tenant_isolation, and any of the DBA's) as
        -- they were: permissive or restrictive, for their commands and roles.
        FOR item IN
            SELECT p.policyname, p.permissive, p.cmd, p.qual, p.with_check,
                   (SELECT string_agg(CASE WHEN r = 'public' THEN 'PUBLIC' ELSE quote_ident(r) END, ', ')
                    FROM unnest(p.roles) AS r) AS roles
            FROM pg_policies AS p WHERE p.schemaname = 'billhook_0_12_outbox' AND p.tablename = t
        LOOP
            EXECUTE format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s', item.policyname, new, item.permissive,
                           item.cmd, item.roles, coalesce(' USING (' || item.qual || ')', ''),
                           coalesce(' WITH CHECK (' || item.with_check || ')', ''));
        END LOOP;
        IF (SELECT c.relrowsecurity FROM pg_class AS c WHERE c.oid = old) THEN
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', new);
        END IF;
        IF (SELECT c.relforcerowsecurity FROM pg_class AS c WHERE c.oid = old) THEN
            EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', new);
        END IF;
    END LOOP;
END
$$;
COMMENT ON COLUMN billhook.delivery_attempts.event_id IS 'The delivery''s event: attempts are kept with their event''s window (billhook.outbox_partitions).';
SELECT billhook.describe_outbox_window(0);

-- The fan-out and the purge, for the window's keys: deliveries' conflicts are any unique key's (a
-- window's), and a purged event's restored_events row goes with it (no foreign key cascades). The
-- delivery report reads an attempt's event by the attempt's own event_id (one window each). Tenant
-- isolation takes its tables' locks through billhook.lock_without_queueing, as the windows do.
CREATE OR REPLACE FUNCTION billhook.fan_out_one(event_id bigint, webhook_id bigint, key_namespace uuid, reason text)
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
CREATE OR REPLACE FUNCTION billhook.fan_out(max_events integer DEFAULT 1000, wait boolean DEFAULT true,
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
-- purge takes failed_older_than (billhook.failed_retention): the old one steps aside until whoever
-- could run it can run the new one.
ALTER FUNCTION billhook.purge(interval, integer) RENAME TO purge_of_0_12;
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
COMMENT ON FUNCTION billhook.purge(interval, integer, interval) IS
    'One batch of the retention purge: succeeded deliveries older than older_than and failed ones older than failed_older_than (none if NULL), then events older than older_than the fan-out passed with no delivery left.';
DO $$
DECLARE
    grantee text;
BEGIN
    FOR grantee IN
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
        FROM pg_catalog.pg_proc AS p CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) AS a
        WHERE p.oid = 'billhook.purge_of_0_12(interval, integer)'::regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION billhook.purge(interval, integer, interval) TO %s', grantee);
    END LOOP;
END
$$;
DROP FUNCTION billhook.purge_of_0_12(interval, integer);
CREATE OR REPLACE FUNCTION billhook.mark_event_restored() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dumped billhook.fan_out_state;
    dumped_transaction_id xid8 := NEW.transaction_id;
BEGIN
    -- Enabled for replica sessions alone, but ALTER TABLE … ENABLE TRIGGER USER enables it for every
    -- session: an application's event marked as restored would never be fanned out.
    IF current_setting('session_replication_role') <> 'replica' THEN
        RETURN NEW;
    END IF;
    NEW.transaction_id := '0';
    IF (SELECT a.backend_type FROM pg_stat_get_activity(pg_backend_pid()) AS a) = 'logical replication worker' THEN
        RETURN NEW;
    END IF;
    LOCK TABLE billhook.restored_events IN ROW EXCLUSIVE MODE;
    SELECT * INTO STRICT dumped FROM billhook.fan_out_state;
    IF dumped.restored_done IS NULL THEN
        INSERT INTO billhook.restored_events (event_id, transaction_id) VALUES (NEW.id, dumped_transaction_id);
    ELSIF NOT billhook.fan_out_passed(dumped_transaction_id, NEW.id, dumped.restored_done, dumped.restored_pass,
                                      dumped.restored_after_transaction_id, dumped.restored_after_event_id) THEN
        INSERT INTO billhook.restored_events (event_id, transaction_id) VALUES (NEW.id, NULL);
        INSERT INTO billhook.fan_out_owed (event_id, webhook_id)
        SELECT NEW.id, s.webhook_id
        FROM billhook.subscribers(NEW.administration_id, NEW.event_type, NEW.occurred_at) AS s
        ON CONFLICT DO NOTHING;
        PERFORM billhook.wake_worker_at_commit();
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE FUNCTION billhook.webhook_stats(
    since timestamptz DEFAULT now() - interval '1 hour',
    until timestamptz DEFAULT now()
) RETURNS TABLE (
    webhook_id bigint, event_type text, deliveries bigint, attempts bigint, succeeded bigint, failed bigint,
    pending bigint, success_rate double precision, latency_p50 interval, latency_p95 interval,
    latency_p99 interval, backlog bigint, oldest_pending_age interval
)
-- Joined window by window (a partitionwise join: events, deliveries and attempts are partitioned
-- alike by the event's id), each window's join planned at each call for what it holds then: the
-- windows with nothing in [since, until) cost an index's look, and a large one may be hashed whole.
-- Joined as one, the planner hashed every window's rows to report on one window's.
LANGUAGE plpgsql STABLE SET enable_partitionwise_join = on SET plan_cache_mode = force_custom_plan AS $$
#variable_conflict use_column
BEGIN
    PERFORM billhook.check_report_window(since, until);
    RETURN QUERY
    WITH windowed AS (
        SELECT d.webhook_id, e.event_type, count(*) AS deliveries, sum(d.attempts)::bigint AS attempts,
               count(*) FILTER (WHERE d.status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE d.status = 'failed') AS failed,
               count(*) FILTER (WHERE d.status = 'pending') AS pending,
               percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY d.delivered_at - e.occurred_at)
                   FILTER (WHERE d.status = 'succeeded') AS latency
        FROM billhook.events AS e
        JOIN billhook.deliveries AS d ON d.event_id = e.id
        WHERE e.occurred_at >= since AND e.occurred_at < until
        GROUP BY d.webhook_id, e.event_type
    ), waiting AS (
        SELECT d.webhook_id, e.event_type, count(*) AS backlog, now() - min(e.occurred_at) AS oldest_pending_age
        FROM billhook.deliveries AS d
        JOIN billhook.events AS e ON e.id = d.event_id
        WHERE d.status = 'pending'
        GROUP BY d.webhook_id, e.event_type
    )
    SELECT webhook_id, event_type, coalesce(w.deliveries, 0), coalesce(w.attempts, 0), coalesce(w.succeeded, 0),
           coalesce(w.failed, 0), coalesce(w.pending, 0),
           w.succeeded::double precision / nullif(w.succeeded + w.failed, 0),
           w.latency[1], w.latency[2], w.latency[3], coalesce(q.backlog, 0), q.oldest_pending_age
    FROM windowed AS w
    FULL JOIN waiting AS q USING (webhook_id, event_type)
    ORDER BY webhook_id, event_type;
END
$$;
CREATE OR REPLACE FUNCTION billhook.delivery_report(
    since timestamptz,
    until timestamptz DEFAULT now(),
    bucket interval DEFAULT '1 minute',
    webhook_id bigint DEFAULT NULL
) RETURNS TABLE (bucket_start timestamptz, sent bigint, succeeded bigint, failed bigint, latency_p95 interval)
-- Joined window by window, each window's join planned at each call (as webhook_stats). Attempts by
-- time go through each window's BRIN index: costing a small window, the planner would rather read
-- all of it to find none.
LANGUAGE plpgsql STABLE SET enable_partitionwise_join = on SET plan_cache_mode = force_custom_plan
SET enable_seqscan = off AS $$
#variable_conflict use_column
BEGIN
    PERFORM billhook.check_report_window(since, until);
    IF bucket IS NULL OR bucket <= interval '0' OR date_part('month', bucket) <> 0 OR date_part('year', bucket) <> 0
       OR extract(epoch FROM until - since) / extract(epoch FROM bucket) > 100000 THEN
        RAISE EXCEPTION 'invalid bucket %', coalesce(bucket::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use a positive interval of no months, at most 100,000 of which fit in the window.';
    END IF;
    RETURN QUERY
    WITH attempted AS (
        SELECT date_bin(bucket, a.attempted_at, since) AS bucket_start, a.succeeded,
               CASE WHEN a.succeeded
                    THEN a.attempted_at + make_interval(secs => a.duration_ms / 1000.0) - e.occurred_at END AS latency
        FROM billhook.delivery_attempts AS a
        JOIN billhook.events AS e ON e.id = a.event_id
        WHERE a.attempted_at >= since AND a.attempted_at < until
          AND (delivery_report.webhook_id IS NULL OR a.webhook_id = delivery_report.webhook_id)
    ), per_bucket AS (
        SELECT bucket_start, count(*) AS sent, count(*) FILTER (WHERE succeeded) AS succeeded,
               count(*) FILTER (WHERE NOT succeeded) AS failed,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY latency) AS latency_p95
        FROM attempted
        GROUP BY bucket_start
    )
    SELECT b.bucket_start, coalesce(p.sent, 0), coalesce(p.succeeded, 0), coalesce(p.failed, 0), p.latency_p95
    FROM generate_series(since, until - interval '1 microsecond', bucket) AS b(bucket_start)
    LEFT JOIN per_bucket AS p USING (bucket_start)
    ORDER BY b.bucket_start;
END
$$;
CREATE OR REPLACE FUNCTION billhook.erase_entity(entity_type text, entity_id bigint) RETURNS bigint
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
CREATE OR REPLACE FUNCTION billhook.apply_tenant_isolation() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    t record;
    tables text := (SELECT string_agg(i.table_name::text, ', ') FROM billhook.tenant_isolation() AS i);
BEGIN
    -- Every table at once, and none held while waiting: a round of the worker holds some of them
    -- and asks for others, so DDL taking them one by one could deadlock with it. Ten seconds at
    -- most, then 55P03.
    PERFORM billhook.lock_without_queueing(format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tables),
                                           'apply tenant isolation', 10);
    FOR t IN SELECT * FROM billhook.tenant_isolation() LOOP
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %s', t.table_name);
        IF TG_OP = 'DELETE' THEN
            EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', t.table_name);
        ELSE
            EXECUTE format('CREATE POLICY tenant_isolation ON %s USING (%s)', t.table_name, t.row_filter);
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.table_name);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- What reads the outbox, pointed at the new tables (same definitions).
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
CREATE OR REPLACE VIEW billhook.webhook_health WITH (security_barrier) AS
SELECT w.id, w.administration_id, billhook.redact_url(w.url) AS url,
       CASE WHEN w.enabled AND w.consecutive_failures > 0 THEN 'failing'
            WHEN w.enabled THEN 'healthy'
            WHEN w.disabled_at IS NOT NULL THEN 'auto_disabled'
            ELSE 'disabled' END AS health,
       w.enabled, w.consecutive_failures, w.failing_since, w.last_success_at, w.last_http_status,
       w.disabled_at, w.disabled_reason,
       (SELECT count(*) FROM billhook.deliveries AS d WHERE d.webhook_id = w.id AND d.status = 'pending')
           AS pending_deliveries,
       CASE WHEN w.enabled AND w.failing_since IS NOT NULL AND disable_after > interval '0'
            THEN greatest(w.failing_since + disable_after, now()) END AS earliest_disable_at
FROM billhook.webhooks AS w,
     LATERAL (SELECT current_setting('billhook.disable_after', true)::interval AS disable_after) AS setting
WHERE NOT (SELECT billhook.tenant_isolation_applies())
   OR w.administration_id = (SELECT billhook.isolated_administration_id());
CREATE OR REPLACE VIEW billhook.delivery_status WITH (security_barrier) AS
SELECT d.id, d.webhook_id, billhook.redact_url(w.url) AS url, d.event_id, e.event_type, e.entity_type, e.entity_id, d.status,
       d.attempts, d.next_attempt_at, d.last_attempt_at, d.last_http_status, d.last_error,
       d.last_duration_ms, d.delivered_at, d.delivered_at - e.occurred_at AS latency, d.idempotency_key
FROM billhook.deliveries AS d
JOIN billhook.events AS e ON e.id = d.event_id
JOIN billhook.webhooks AS w ON w.id = d.webhook_id
WHERE NOT (SELECT billhook.tenant_isolation_applies())
   OR w.administration_id = (SELECT billhook.isolated_administration_id());
DROP FUNCTION billhook.redeliver(bigint);
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
COMMENT ON FUNCTION billhook.redeliver(bigint) IS
    'Sends a delivery again as soon as possible, with the same Idempotency-Key; a failed or succeeded one starts a fresh round of retries.';

-- Out of the extension first, which forgets their dump registrations with them.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['delivery_attempts', 'deliveries', 'events'] LOOP
        EXECUTE format('ALTER EXTENSION billhook DROP SEQUENCE %s',
                       pg_get_serial_sequence(format('billhook_0_12_outbox.%I', t), 'id'));
        EXECUTE format('ALTER EXTENSION billhook DROP TABLE billhook_0_12_outbox.%I', t);
    END LOOP;
END
$$;
DROP TABLE billhook_0_12_outbox.delivery_attempts, billhook_0_12_outbox.deliveries, billhook_0_12_outbox.events;
DROP SCHEMA billhook_0_12_outbox;

-- The new tables are user data as the old were: pg_dump keeps their rows (window 0's, which comes
-- with the update as with CREATE EXTENSION) and their sequences' positions.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['events', 'deliveries', 'delivery_attempts'] LOOP
        PERFORM pg_catalog.pg_extension_config_dump(format('billhook.%I', t)::regclass, '');
        PERFORM pg_catalog.pg_extension_config_dump(
            pg_catalog.pg_get_serial_sequence(format('billhook.%I', t), 'id')::regclass, '');
        PERFORM pg_catalog.pg_extension_config_dump(format('billhook.%I', t || '_0')::regclass, '');
    END LOOP;
END
$$;

-- A restore holds back the delivery workers of its database (sql/restore.sql, src/restore.rs).
CREATE FUNCTION billhook.hold_back_workers() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'hold_back_workers_wrapper';
DO $$
DECLARE
    dumped record;
BEGIN
    FOR dumped IN
        SELECT c.oid::regclass AS relation, c.relkind
        FROM pg_catalog.pg_extension AS e
        CROSS JOIN LATERAL unnest(e.extconfig) AS x(oid)
        JOIN pg_catalog.pg_class AS c ON c.oid = x.oid
        WHERE e.extname = 'billhook' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
        ORDER BY c.relname
    LOOP
        EXECUTE format('CREATE TRIGGER hold_back_workers BEFORE INSERT ON %s FOR EACH %s'
                       ' EXECUTE FUNCTION billhook.hold_back_workers()',
                       dumped.relation, CASE WHEN dumped.relkind = 'p' THEN 'ROW' ELSE 'STATEMENT' END);
        EXECUTE format('ALTER TABLE %s ENABLE REPLICA TRIGGER hold_back_workers', dumped.relation);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION billhook.hold_back_workers() FROM PUBLIC;
COMMENT ON FUNCTION billhook.hold_back_workers() IS
    'Replica trigger on every dumped table: a restoring session holds the database''s delivery workers back from its first row until it ends.';

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
