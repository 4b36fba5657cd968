-- Reporting for analysts and dashboards: what deliveries did, per webhook and event type, and as a
-- time series. Both run with the caller's rights (they read events, deliveries and attempts).

-- Raises 22023 unless [since, until) is a window of time.
CREATE FUNCTION billhook.check_report_window(since timestamptz, until timestamptz) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF since IS NULL OR until IS NULL OR since >= until THEN
        RAISE EXCEPTION 'invalid window [%, %)', coalesce(since::text, 'NULL'), coalesce(until::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'since must be before until.';
    END IF;
END
$$;

-- Per webhook and event type, the deliveries of the events that occurred in [since, until): how
-- many, their attempts (of their current round: a replay starts afresh), how many succeeded, failed
-- or are pending, the success rate of those that ended, and the commit → acknowledgement latency of
-- the succeeded ones (from the event's time to the end of the successful attempt); and, whatever
-- the window, the pair's backlog (pending deliveries) and how long ago its oldest event occurred.
CREATE FUNCTION billhook.webhook_stats(
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
COMMENT ON FUNCTION billhook.webhook_stats(timestamptz, timestamptz) IS
    'Per webhook and event type: deliveries of the events in [since, until), outcomes, latency percentiles, backlog.';

-- A time series ready to plot: for each bucket of [since, until) (aligned to since, empty buckets
-- included), the attempts made in it, how many succeeded and failed, and the 95th percentile of the
-- commit → acknowledgement latency of the deliveries acknowledged in it; of one webhook, or of all.
CREATE FUNCTION billhook.delivery_report(
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
COMMENT ON FUNCTION billhook.delivery_report(timestamptz, timestamptz, interval, bigint) IS
    'Attempts, successes, failures and p95 latency per time bucket, for plotting.';
