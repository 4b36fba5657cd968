#!/usr/bin/env bash
# make package: the `cargo pgrx package` tree (release build) and, from it, the Debian package
# target/package/postgresql-15-billhook_<version>_amd64.deb (built with dpkg-deb, depends on
# postgresql-15). Both carry the upgrade scripts from sql/, so ALTER EXTENSION billhook UPDATE works
# from every earlier version after installing the package.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg-config.sh
export PGRX_HOME="$PWD/pgrx-config"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
pg_major="$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
tree="target/release/billhook-pg${pg_major}"
rm -rf "$tree"
if ! output=$(cargo pgrx package --pg-config "$PG_CONFIG" 2>&1); then
  echo "$output" >&2
  exit 1
fi
# cargo pgrx package puts billhook--<version>.sql, the control file and the upgrade scripts of sql/
# in the tree, as cargo pgrx install does (tests/test_package.py checks they are there).
echo "package: $tree"

deb_root="target/package/root"
deb="target/package/postgresql-${pg_major}-billhook_${version}_amd64.deb"
rm -rf "$deb_root" "$deb"
mkdir -p "$deb_root/DEBIAN"
cp -a "$tree/." "$deb_root/"
installed_kib="$(du -sk "$deb_root" | cut -f1)"
cat > "$deb_root/DEBIAN/control" <<CONTROL
Package: postgresql-${pg_major}-billhook
Version: ${version}
Architecture: amd64
Maintainer: billhook maintainers <maintainers@billhook.invalid>
Depends: postgresql-${pg_major}, libc6 (>= 2.36)
Section: database
Priority: optional
Installed-Size: ${installed_kib}
Homepage: https://pgxn.org/dist/billhook/
Description: webhooks delivered from inside PostgreSQL ${pg_major}
 billhook is a PostgreSQL extension: an invoicing schema whose committed changes
 become webhook events, delivered by a background worker with retries,
 signatures and idempotency keys. Add billhook to shared_preload_libraries,
 then CREATE EXTENSION billhook.
CONTROL
dpkg-deb --root-owner-group --build "$deb_root" "$deb" >/dev/null
echo "package: $deb"
