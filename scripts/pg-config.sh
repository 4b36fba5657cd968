# Sourced by every script: the one place that names the PostgreSQL installation billhook builds
# against and tests with. Override with PG_CONFIG=/path/to/pg_config (make passes it through).
export PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
PG_BIN="$("$PG_CONFIG" --bindir 2>/dev/null || dirname "$PG_CONFIG")"
export PG_BIN
