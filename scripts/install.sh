#!/usr/bin/env bash
# Builds billhook (debug profile unless arguments say otherwise) and installs it into the Debian
# PostgreSQL 15. A running cluster that preloads billhook needs a restart to load the new library.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg-config.sh
export PGRX_HOME="$PWD/pgrx-config"
sudo_flag=()
[ "$(id -u)" -eq 0 ] || sudo_flag=(--sudo)
if ! output=$(cargo pgrx install --pg-config "$PG_CONFIG" "${sudo_flag[@]}" "$@" 2>&1); then
  echo "$output" >&2
  exit 1
fi
grep -E 'Finished|Copying shared library' <<<"$output" || true
# Earlier versions' install scripts, so that an install of an earlier version can be made and
# upgraded (tests/test_upgrade.py); the upgrade scripts themselves come from sql/.
extension_dir="$("$PG_CONFIG" --sharedir)/extension"
for script in tests/fixtures/billhook--*.sql; do
  if [ "$(id -u)" -eq 0 ]; then install -m 644 "$script" "$extension_dir/"; else sudo -n install -m 644 "$script" "$extension_dir/"; fi
done
