#!/usr/bin/env bash
# make demo: a throwaway cluster with billhook, an invoice lifecycle, and what it emitted.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=/tmp/billhook-demo
PORT=${BILLHOOK_DEMO_PORT:-55439}

scripts/pg-cluster.sh stop "$DIR/data" 2>/dev/null || true
rm -rf "$DIR" && mkdir -p "$DIR" && chmod 755 "$DIR"
scripts/pg-cluster.sh start "$DIR/data" "$PORT"
trap 'scripts/pg-cluster.sh stop "$DIR/data"' EXIT

psql=(psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
"${psql[@]}" -c "CREATE EXTENSION billhook"
"${psql[@]}" -v receiver_url="https://receiver.example/billhook" -f demo/lifecycle.sql
"${psql[@]}" -f demo/report.sql
echo
echo "The cluster is stopped on exit; its data stays in $DIR until the next make demo."
