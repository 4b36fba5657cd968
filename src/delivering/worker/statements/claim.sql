-- The claim (statements/mod.rs, claim): takes a lease on the due pending deliveries of enabled
-- webhooks, each webhook up to its quota, and returns what the pushes are made of.
-- $1, $2, $3: per webhook already held by this worker, its count held and its quota
-- $4: the quota of a webhook not in $1        $5: rows at most        $6: billhook.request_timeout (s)
-- $7: billhook.max_in_flight_per_webhook      $8: lease margin (s)    $9: bytes at most
-- $10: claim horizon (s)                      $11, $12: workers of the database, this worker's member
-- $13: only these webhooks (NULL: any)        $14, $15: rate limit bounds
-- $16, $17: request timeout bounds (s)
-- {floor}: the first event id of the windows the due deliveries are read from (billhook.pending_from,
--      as last looked up: no window below it held a pending delivery then), written in as a
--      constant (plans.rs, with_kept_plan_at_floor)
WITH held AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::int[]) AS h(webhook_id, held, quota)
), below_floor AS MATERIALIZED (
    -- The ordered webhooks of the share with a pending delivery below {floor}: looked up once, when
    -- the claim first considers an ordered webhook (a CTE is read only when asked).
    SELECT b.webhook_id
    FROM unnest(billhook.pending_below(ARRAY(SELECT w.id FROM billhook.webhooks AS w
                                             WHERE w.enabled AND w.ordering <> 'none' AND w.id % $11 = $12),
                                       {floor})) AS b(webhook_id)
), chosen AS (
    SELECT d.id, d.event_id, coalesce(h.held, 0) + d.position AS position, r.rate
    FROM billhook.webhooks AS w
    LEFT JOIN held AS h ON h.webhook_id = w.id
    -- The rate limit within its bounds (NULL: none).
    CROSS JOIN LATERAL (
        SELECT CASE WHEN w.max_requests_per_second IS NOT NULL
                    THEN least(greatest(w.max_requests_per_second, $14), $15) END AS rate
    ) AS r
    CROSS JOIN LATERAL (
        SELECT least(coalesce(h.quota, $4)::bigint * coalesce(w.max_in_flight, $7) / $7,
                     ceil(r.rate * $10)::bigint) AS quota
    ) AS q
    CROSS JOIN LATERAL (
        SELECT due.id, due.event_id, row_number() OVER (ORDER BY due.next_attempt_at, due.id) AS position
        FROM (
            SELECT * FROM (
                SELECT d.id, d.event_id, d.next_attempt_at
                FROM billhook.deliveries AS d
                WHERE w.ordering = 'none'
                  AND d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
                  AND (d.locked_until IS NULL OR d.locked_until < now()) AND d.event_id >= {floor}
                ORDER BY d.next_attempt_at
                LIMIT least(q.quota - coalesce(h.held, 0), $5)
                FOR UPDATE OF d SKIP LOCKED) AS unordered
            UNION ALL
            -- Ordered by entity: not while the webhook's previous push about the same entity is
            -- pending (claimed, in flight or waiting for its retry), nor while a fan-out pass is
            -- half done (an earlier event's delivery may be still to come). Apart from the
            -- unordered scan above, whose per-window scans would otherwise each carry this check.
            SELECT * FROM (
                SELECT d.id, d.event_id, d.next_attempt_at
                FROM billhook.deliveries AS d
                JOIN billhook.events AS e ON e.id = d.event_id AND e.id >= {floor}
                WHERE w.ordering <> 'none'
                  AND d.webhook_id = w.id AND d.status = 'pending' AND d.next_attempt_at <= now()
                  AND (d.locked_until IS NULL OR d.locked_until < now()) AND d.event_id >= {floor}
                  AND (SELECT s.pass IS NULL FROM billhook.fan_out_state AS s)
                  -- The previous push is looked for from {floor} on, which is exact only while no
                  -- delivery of the webhook below {floor} is pending: otherwise (one queued again
                  -- or made by a fan-out since {floor} was looked up) nothing of the webhook is
                  -- taken until it is looked up again. Nothing is below the lowest id: window 0,
                  -- which starts there, is not read for it.
                  AND ({floor} = -9223372036854775808
                       OR NOT EXISTS (SELECT FROM below_floor AS b WHERE b.webhook_id = w.id))
                  AND NOT EXISTS (
                      SELECT FROM (SELECT p.status
                                   FROM billhook.events AS earlier
                                   JOIN billhook.deliveries AS p
                                     ON p.event_id = earlier.id AND p.webhook_id = d.webhook_id AND p.event_id >= {floor}
                                   WHERE earlier.entity_type = e.entity_type AND earlier.entity_id = e.entity_id
                                     AND earlier.id < e.id AND earlier.id >= {floor}
                                   ORDER BY earlier.id DESC
                                   LIMIT 1) AS previous
                      WHERE previous.status = 'pending')
                ORDER BY d.next_attempt_at
                LIMIT least(q.quota - coalesce(h.held, 0), $5)
                FOR UPDATE OF d SKIP LOCKED) AS ordered
        ) AS due
    ) AS d
    WHERE w.enabled AND coalesce(h.held, 0) < q.quota AND w.id % $11 = $12
      AND ($13::bigint[] IS NULL OR w.id = ANY ($13))
    LIMIT $5
), affordable AS (
    -- The entity's size as read, from its header (a TOAST pointer, say), not from the entity.
    SELECT c.id, c.event_id, c.position, c.rate
    FROM (SELECT c.id, c.event_id, c.position, c.rate, billhook.detoasted_size(e.entity) AS size,
                 sum(billhook.detoasted_size(e.entity)) OVER (ORDER BY c.position, c.id) AS running
          FROM chosen AS c JOIN billhook.events AS e ON e.id = c.event_id AND e.id >= {floor}) AS c
    WHERE c.running - c.size < $9
), claimed AS (
    -- Returns what the pushes need of the delivery alone: a RETURNING list is built for each
    -- window's partition at every claim, the joins below once.
    UPDATE billhook.deliveries AS d
    SET locked_by = pg_backend_pid(),
        locked_until = now() + make_interval(secs =>
            least(greatest(coalesce(extract(epoch FROM w.request_timeout)::float8, $6::float8), $16), $17)
                * (chosen.position / greatest(coalesce(w.max_in_flight, $7), 1) + 1)
            + coalesce(chosen.position / chosen.rate, 0)
            + $8::float8)
    FROM affordable AS chosen, billhook.webhooks AS w
    -- By the event's id too: it names the delivery's partition (sql/partitions.sql).
    WHERE d.id = chosen.id AND d.event_id = chosen.event_id AND d.event_id >= {floor} AND w.id = d.webhook_id
    RETURNING d.id, d.event_id, d.webhook_id, d.attempts, d.idempotency_key, chosen.position
)
-- The senders take each webhook's pushes in this order: oldest due first.
SELECT c.id AS delivery_id, c.webhook_id, c.attempts, c.idempotency_key::text, w.url, w.token,
       billhook.signing_keys(w) AS signing_keys,
       CASE WHEN w.headers <> '{}' THEN w.headers::text END AS headers,
       w.retry_schedule, (extract(epoch FROM w.request_timeout) * 1000)::float8 AS request_timeout_ms,
       w.max_in_flight, w.max_requests_per_second,
       w.payload_format, w.payload, e.id AS event_id, e.administration_id, e.event_type, e.entity_type,
       e.entity_id, e.state, e.previous_state,
       billhook.json_time(e.occurred_at) AS occurred_at,
       extract(epoch FROM e.occurred_at)::float8 AS occurred_epoch, e.entity::text AS entity,
       c.position
FROM claimed AS c
JOIN billhook.events AS e ON e.id = c.event_id AND e.id >= {floor}
JOIN billhook.webhooks AS w ON w.id = c.webhook_id
ORDER BY c.position
