-- The size in bytes of the events' and of the deliveries' partition of each of the outbox's windows
-- from window $1 on, in the windows' order, each window's events first (plans.rs,
-- with_kept_plan_at_floor). Apart, not summed: one INSERT of many events grows a window's events
-- long before the fan-out grows its deliveries, and a sum the events dominate would not show the
-- deliveries' growth that the worker's plans read. A partition dropped since it was listed counts 0.
SELECT coalesce(array_agg(coalesce(pg_catalog.pg_relation_size(r.partition), 0)::bigint
                          ORDER BY p.window_number, t.position), '{}')
FROM billhook.outbox_partitions AS p
CROSS JOIN LATERAL unnest(ARRAY['events_', 'deliveries_']) WITH ORDINALITY AS t(prefix, position)
CROSS JOIN LATERAL (SELECT pg_catalog.to_regclass(pg_catalog.format('billhook.%I', t.prefix || p.window_number))
                    AS partition) AS r
WHERE p.window_number >= $1 AND r.partition IS NOT NULL
