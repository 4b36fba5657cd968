#!/usr/bin/env bash
# Installs everything billhook needs to build and test on Debian 12, idempotently and
# without prompts: apt packages (and those named as arguments, such as valgrind for make bench),
# cargo-pgrx 0.18.1, and the pgrx home in pgrx-config/.
set -euo pipefail
cd "$(dirname "$0")/.."

PGRX_VERSION=0.18.1
source scripts/pg-config.sh
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo python3 python3-venv "$@")

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
  echo "setup: installing cargo-pgrx ${PGRX_VERSION} (takes several minutes)"
  cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
fi

export PGRX_HOME="$PWD/pgrx-config"
if ! grep -q "pg15 = \"${PG_CONFIG}\"" "$PGRX_HOME/config.toml" 2>/dev/null; then
  cargo pgrx init --pg15 "$PG_CONFIG"
fi
echo "setup: ready"
