#!/usr/bin/env bash
# make demo: a throwaway cluster with billhook preloaded (two delivery workers), a receiver that
# checks signatures, an invoice lifecycle, the deliveries as SQL sees them, a load chart, tenant
# isolation, and the pipeline's picture with this run's numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/python-env.sh
DIR=/tmp/billhook-demo
PORT=${BILLHOOK_DEMO_PORT:-55439}
RECEIVER_PORT=${BILLHOOK_DEMO_RECEIVER_PORT:-18439}

scripts/pg-cluster.sh stop "$DIR/data" 2>/dev/null || true
rm -rf "$DIR" && mkdir -p "$DIR" && chmod 755 "$DIR"
scripts/pg-cluster.sh start "$DIR/data" "$PORT" \
  "billhook.database = 'postgres'" "billhook.workers = 2" "billhook.allow_private_targets = on" \
  "billhook.retry_schedule = '1s,2s,4s'"
receiver_pid=
cleanup() {
  [ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null
  scripts/pg-cluster.sh stop "$DIR/data"
}
trap cleanup EXIT

.venv/bin/python demo/receiver.py "$RECEIVER_PORT" "host=127.0.0.1 port=$PORT user=postgres dbname=postgres" &
receiver_pid=$!
sleep 0.5

psql=(psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
"${psql[@]}" -c "CREATE EXTENSION billhook"
"${psql[@]}" -v receiver="http://127.0.0.1:$RECEIVER_PORT" -f demo/lifecycle.sql

echo "== waiting for the worker to deliver everything (the /flaky webhook needs two retries)"
for _ in $(seq 1 100); do
  pending=$("${psql[@]}" -At -c "SELECT count(*) FROM billhook.deliveries WHERE status = 'pending'")
  [ "$pending" = 0 ] && break
  sleep 0.2
done
"${psql[@]}" -f demo/report.sql

echo "== load: invoices of a second administration committed in batches for 10 seconds, to its own webhook"
"${psql[@]}" -v receiver="http://127.0.0.1:$RECEIVER_PORT" -f demo/load.sql
load_webhook=$("${psql[@]}" -At -c "SELECT max(id) FROM billhook.webhooks")
since=$("${psql[@]}" -At -c "SELECT date_trunc('second', now())")
for batch in 20 40 80 120 160 160 120 80 40 20; do
  "${psql[@]}" -c "INSERT INTO billhook.invoices (administration_id, customer_id, reference)
                   SELECT administration_id, id, 'Load ' || n FROM billhook.customers, generate_series(1, $batch) AS n
                   WHERE company_name = 'Load B.V.'"
  sleep 1
done
for _ in $(seq 1 150); do
  pending=$("${psql[@]}" -At -c "SELECT count(*) FROM billhook.deliveries WHERE status = 'pending'")
  [ "$pending" = 0 ] && break
  sleep 0.2
done
.venv/bin/python demo/chart.py "host=127.0.0.1 port=$PORT user=postgres dbname=postgres" "$load_webhook" "$since" \
  "$DIR/deliveries.html"
"${psql[@]}" -f demo/tenants.sql
"${psql[@]}" -f demo/picture.sql
