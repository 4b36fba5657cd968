\echo '== events (the outbox)'
SELECT id, event_type, entity_type, entity_id, state,
       jsonb_array_length(coalesce(entity->'lines', '[]')) AS lines,
       entity->>'total_price_incl_tax' AS total
FROM billhook.events ORDER BY id;

\echo '== deliveries, as analysts see them'
SELECT id, webhook_id, event_type, status, attempts, last_http_status AS http, last_duration_ms AS ms,
       latency, left(idempotency_key::text, 8) || '…' AS key
FROM billhook.delivery_status ORDER BY id;

\echo '== the attempt log of the flaky webhook'
SELECT delivery_id, attempt, http_status, response_body, succeeded,
       attempted_at - min(attempted_at) OVER (PARTITION BY delivery_id) AS after
FROM billhook.delivery_attempts WHERE webhook_id = 3 ORDER BY id;

\echo '== webhooks'
SELECT id, url, last_http_status, pending_deliveries, succeeded_deliveries, failed_deliveries
FROM billhook.webhook_overview ORDER BY id;

\echo '== the workers: two per database (billhook.workers = 2), each sending for the webhooks whose id modulo 2 is its member'
SELECT database, member, running, pid FROM billhook.workers();
SELECT w.id AS webhook, w.id % 2 AS its_member, count(d.id) AS deliveries
FROM billhook.webhooks AS w LEFT JOIN billhook.deliveries AS d ON d.webhook_id = w.id
GROUP BY w.id ORDER BY w.id;
