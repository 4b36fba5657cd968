#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for tests and the demo.
#   pg-cluster.sh start DIR PORT [SETTING=VALUE ...]
#                                  initdb (if needed) and start, listening on 127.0.0.1:PORT;
#                                  settings are appended to postgresql.conf at initdb
#   pg-cluster.sh stop DIR         stop (fast) if running
# initdb and postgres refuse to run as root, so as root they run as user postgres.
set -euo pipefail
source "$(dirname "$0")/pg-config.sh"
BIN=$PG_BIN
action=$1 dir=$2

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$action" in
  start)
    port=$3
    shift 3
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir" && chmod 700 "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
      as_owner "$BIN/initdb" -D "$dir" -U postgres --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
      cat >> "$dir/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
shared_preload_libraries = 'billhook'
max_prepared_transactions = 10
log_min_messages = warning
CONF
      for setting in "$@"; do echo "$setting" >> "$dir/postgresql.conf"; done
    fi
    as_owner "$BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null
    ;;
  stop)
    [ -f "$dir/postmaster.pid" ] && as_owner "$BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    ;;
  *)
    echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
