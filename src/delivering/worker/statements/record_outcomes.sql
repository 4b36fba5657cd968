-- A batch of outcomes (statements/mod.rs, record_outcomes): the deliveries' status and schedule, an
-- attempt row each, and the webhooks' last answer, health and auto-disable.
-- $1..$8: per outcome the delivery, HTTP status, response body, error, duration (ms), attempted at,
--         next status and retry delay (s); $13: per outcome the delivery's event, which names its
--         partition (sql/partitions.sql); {floor}: the first event id of the window of the lowest of
--         those, or the claims' floor if lower, written in as a constant (plans.rs,
--         with_kept_plan_at_floor), with which the statement reads only the windows from there on
--         (a list of ids alone cannot tell a plan)
-- $9: auto_disable after (s, 0: never by time)  $10: auto_disable failures  $11: the Gone status (410)
-- $12: billhook.failing_after_failures
WITH outcome AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::int[],
                         $6::timestamptz[], $7::text[], $8::float8[], $13::bigint[])
        AS o(delivery_id, http_status, response_body, error, duration_ms, attempted_at, status, retry_in, event_id)
), free AS (
    -- The webhook too: delivery_counters' foreign key would lock it after the delivery, the
    -- order opposite to a DELETE of the webhook cascading to its deliveries (a deadlock).
    -- An outcome of a webhook being deleted waits for a later round, and goes with it.
    SELECT o.* FROM outcome AS o JOIN billhook.deliveries AS d
      ON d.id = o.delivery_id AND d.event_id = o.event_id AND d.event_id >= {floor}
    JOIN billhook.webhooks AS w ON w.id = d.webhook_id
    WHERE d.locked_by = pg_backend_pid()
    FOR UPDATE OF d SKIP LOCKED FOR KEY SHARE OF w SKIP LOCKED
), updated AS (
    UPDATE billhook.deliveries AS d
    SET status = o.status,
        -- Saturates below deliveries_attempts_check.
        attempts = least(d.attempts, 999999) + 1,
        next_attempt_at = CASE WHEN o.retry_in IS NULL THEN d.next_attempt_at
                               ELSE clock_timestamp() + make_interval(secs => o.retry_in) END,
        locked_until = NULL,
        locked_by = NULL,
        last_attempt_at = o.attempted_at,
        last_http_status = o.http_status,
        last_http_body = o.response_body,
        last_error = o.error,
        last_duration_ms = o.duration_ms,
        delivered_at = CASE WHEN o.status = 'succeeded'
                            THEN o.attempted_at + make_interval(secs => o.duration_ms / 1000.0) END
    FROM free AS o
    WHERE d.id = o.delivery_id AND d.event_id = o.event_id AND d.event_id >= {floor}
    RETURNING d.id, d.event_id, d.webhook_id, d.attempts, o.attempted_at, o.duration_ms, o.http_status, o.response_body,
              o.error, o.status
), logged AS (
    INSERT INTO billhook.delivery_attempts
        (delivery_id, event_id, webhook_id, attempt, attempted_at, duration_ms, http_status, response_body, error,
         succeeded)
    SELECT id, event_id, webhook_id, attempts, attempted_at, duration_ms, http_status, response_body, error,
           status = 'succeeded'
    FROM updated
), streak AS (
    -- Per webhook in this batch: the last answer, and the failed attempts after its last
    -- success (all of them if none succeeded).
    SELECT u.webhook_id,
           (array_agg(u.http_status ORDER BY u.attempted_at DESC, u.id DESC))[1] AS http_status,
           (array_agg(u.response_body ORDER BY u.attempted_at DESC, u.id DESC))[1] AS response_body,
           (array_agg(coalesce('HTTP ' || u.http_status, u.error) ORDER BY u.attempted_at DESC, u.id DESC))[1]
               AS last_answer,
           u.succeeded_at,
           (array_agg(u.attempted_at ORDER BY u.attempted_at DESC, u.id DESC))[1] AS last_attempt_at,
           count(*) FILTER (WHERE u.failed) AS failures,
           min(u.attempted_at) FILTER (WHERE u.failed) AS first_failure
    FROM (SELECT updated.*,
                 status <> 'succeeded' AND attempted_at > coalesce(succeeded_at, '-infinity') AS failed
          FROM (SELECT *, max(attempted_at) FILTER (WHERE status = 'succeeded')
                              OVER (PARTITION BY webhook_id) AS succeeded_at
                FROM updated) AS updated) AS u
    GROUP BY u.webhook_id, u.succeeded_at
), health AS (
    -- The webhook's health is for people to look at and for the decision to disable it,
    -- which checks the attempt log itself: a webhook row someone holds locked keeps its
    -- columns (they miss this batch) rather than hold up the worker.
    SELECT f.id, s.http_status, s.response_body, s.last_answer,
           greatest(f.last_success_at, s.succeeded_at) AS last_success_at,
           least(CASE WHEN s.succeeded_at IS NULL THEN f.consecutive_failures + s.failures ELSE s.failures END,
                 2147483647) AS consecutive_failures,
           CASE WHEN s.succeeded_at IS NULL THEN coalesce(f.failing_since, s.first_failure) ELSE s.first_failure END
               AS failing_since,
           f.enabled, s.http_status = $11::int AS gone, s.last_attempt_at,
           f.consecutive_failures AS failures_before
    FROM billhook.webhooks AS f JOIN streak AS s ON s.webhook_id = f.id
    FOR UPDATE OF f SKIP LOCKED
), verdict AS (
    -- An endpoint whose last answer was 410 Gone is disabled at once, whatever the
    -- automatic disabling's settings.
    SELECT h.*,
           CASE WHEN h.enabled AND h.gone THEN true
                WHEN h.enabled AND $9::float8 > 0 AND h.consecutive_failures >= $10::int
                     AND h.failing_since <= now() - make_interval(secs => $9::float8)
                THEN NOT billhook.succeeded_since(h.id, h.failing_since)
                ELSE false END AS disable
    FROM health AS h
), webhook_status AS (
    -- Not `enabled`: a change of it wakes the worker at commit (note_webhooks_changed), so the
    -- few webhooks to disable are disabled by a statement of their own (DISABLE below).
    UPDATE billhook.webhooks AS w
    SET last_http_status = v.http_status,
        last_http_body = v.response_body,
        last_success_at = v.last_success_at,
        consecutive_failures = v.consecutive_failures,
        failing_since = v.failing_since
    FROM verdict AS v
    WHERE w.id = v.id
    RETURNING w.id, v.disable,
              -- The streak reached billhook.failing_after_failures with this batch.
              $12::int > 0 AND v.consecutive_failures >= $12::int AND v.failures_before < $12::int
                  AS now_failing,
              CASE WHEN v.gone
                   THEN format('the endpoint answered 410 Gone at %s: it asks for no more pushes',
                               billhook.json_time(v.last_attempt_at))
                   ELSE format('every push failed for %s (%s attempts in a row since %s); the last: %s',
                               date_trunc('second', now() - v.failing_since), v.consecutive_failures,
                               billhook.json_time(v.failing_since), v.last_answer) END AS reason
)
SELECT ARRAY(SELECT u.id FROM updated AS u),
       ARRAY(SELECT s.id FROM webhook_status AS s WHERE s.disable ORDER BY s.id),
       ARRAY(SELECT s.reason FROM webhook_status AS s WHERE s.disable ORDER BY s.id),
       ARRAY(SELECT s.id FROM webhook_status AS s WHERE s.now_failing ORDER BY s.id),
       ARRAY(SELECT u.id FROM updated AS u WHERE u.status = 'failed' ORDER BY u.id)
