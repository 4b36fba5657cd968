\echo '== events (the outbox)'
SELECT id, event_type, entity_type, entity_id, state,
       jsonb_array_length(coalesce(entity->'lines', '[]')) AS lines,
       entity->>'total_price_incl_tax' AS total
FROM billhook.events ORDER BY id;

\echo '== the invoice.created entity as receivers get it'
SELECT jsonb_pretty(entity) FROM billhook.events WHERE event_type = 'invoice.created' ORDER BY id LIMIT 1;

\echo '== deliveries'
SELECT d.id, d.webhook_id, e.event_type, d.status, d.attempts, d.idempotency_key
FROM billhook.deliveries d JOIN billhook.events e ON e.id = d.event_id
ORDER BY d.id;

\echo '== webhooks'
SELECT id, url, pending_deliveries, succeeded_deliveries, failed_deliveries FROM billhook.webhook_overview ORDER BY id;
