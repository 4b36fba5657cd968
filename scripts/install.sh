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
# The first version's install script, frozen (tests/fixtures): every later version installs from it
# through the chain of upgrade scripts in sql/, as `CREATE EXTENSION billhook VERSION '0.5.0'` does.
# Any other version's full install script left by an earlier build is removed, so that such an
# install takes the chain here as it does on a fresh machine.
extension_dir="$("$PG_CONFIG" --sharedir)/extension"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
"${as_root[@]}" install -m 644 tests/fixtures/billhook--0.1.0.sql "$extension_dir/"
for script in "$extension_dir"/billhook--*.sql; do
  name=$(basename "$script")
  if [[ "$name" =~ ^billhook--[0-9.]+\.sql$ && "$name" != "billhook--0.1.0.sql" && "$name" != "billhook--$version.sql" ]]; then
    "${as_root[@]}" rm -f "$script"
  fi
done
