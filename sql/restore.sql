-- A restore holds back the delivery workers of its database from its first row in billhook's
-- tables until its session ends (src/restore.rs): pg_restore sets the id sequences only after all
-- rows are in, and a row a worker wrote in between would take an id already restored or handed
-- out again. Every table whose rows a dump carries (registered with pg_extension_config_dump) gets
-- the trigger, for each statement (COPY keeps its batched inserts), or for each row on the
-- partitioned tables: a restore loads their partitions directly, whose own statement triggers it
-- would make only after their rows, and their partitions get it from them. It fires only in
-- replica sessions, as docs/operations.md says to restore, and before billhook's other restore
-- triggers (alphabetically), one of which skips the row it judges (restore_fan_out_state).
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
