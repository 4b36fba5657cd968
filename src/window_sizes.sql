-- The size in bytes of the events' and the deliveries' partition of each of the outbox's windows
-- from window $1 on, in turn (plans.rs, with_kept_plan_at_floor). A partition dropped since it was
-- listed is 0.
SELECT coalesce(array_agg(coalesce(pg_catalog.pg_relation_size(r.partition), 0) ORDER BY p.window_number, t.n), '{}')
FROM billhook.outbox_partitions AS p
CROSS JOIN LATERAL unnest(ARRAY['events_', 'deliveries_']) WITH ORDINALITY AS t(prefix, n)
CROSS JOIN LATERAL (SELECT pg_catalog.to_regclass(pg_catalog.format('billhook.%I', t.prefix || p.window_number))
                    AS partition) AS r
WHERE p.window_number >= $1 AND r.partition IS NOT NULL
