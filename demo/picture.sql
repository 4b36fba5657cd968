\echo '== what this demo did, on the pipeline of docs/architecture.md'
-- As the superuser: tenant isolation is on, and the picture counts every administration's rows.
SELECT format($picture$
 application's transactions                 background workers (2 for this database)
 row changes ─▶ triggers ─▶ change log ─▶ commit ─▶ events ─▶ fan-out ─▶ deliveries ─▶ HTTP ─▶ outcomes

   events written at commit      %s
   webhooks subscribed           %s
   deliveries made               %s
   HTTP attempts                 %s
   outcomes                      %s succeeded, %s failed, %s pending
$picture$,
    events, webhooks, deliveries, attempts, succeeded, failed, pending
) AS picture
FROM (SELECT (SELECT count(*) FROM billhook.events) AS events,
             (SELECT count(*) FROM billhook.webhooks) AS webhooks,
             (SELECT count(*) FROM billhook.deliveries) AS deliveries,
             (SELECT count(*) FROM billhook.delivery_attempts) AS attempts,
             count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
             count(*) FILTER (WHERE status = 'failed') AS failed,
             count(*) FILTER (WHERE status = 'pending') AS pending
      FROM billhook.deliveries) AS counts \gset
\echo :picture
