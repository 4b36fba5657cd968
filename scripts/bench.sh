#!/usr/bin/env bash
# make bench: release build of billhook, the bench receiver, then bench/run.py (writes bench/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg-config.sh
scripts/python-env.sh
scripts/setup.sh valgrind
scripts/install.sh --release
(cd bench/receiver && cargo build --release --quiet)
exec .venv/bin/python bench/run.py "$@"
