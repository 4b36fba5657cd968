-- The size in bytes of the events' and the deliveries' partitions of each of the outbox's windows
-- from window $1 on, together, in the windows' order (plans.rs, with_kept_plan_at_floor). A
-- partition dropped since it was listed counts 0.
SELECT coalesce(array_agg(w.bytes ORDER BY w.window_number), '{}')
FROM (SELECT p.window_number, sum(coalesce(pg_catalog.pg_relation_size(r.partition), 0))::bigint AS bytes
      FROM billhook.outbox_partitions AS p
      CROSS JOIN LATERAL unnest(ARRAY['events_', 'deliveries_']) AS t(prefix)
      CROSS JOIN LATERAL (SELECT pg_catalog.to_regclass(pg_catalog.format('billhook.%I', t.prefix || p.window_number))
                          AS partition) AS r
      WHERE p.window_number >= $1 AND r.partition IS NOT NULL
      GROUP BY p.window_number) AS w
