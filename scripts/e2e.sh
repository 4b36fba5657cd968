#!/usr/bin/env bash
# Runs the end-to-end tests (tests/*.py) against throwaway clusters with billhook installed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg-config.sh
scripts/python-env.sh
exec .venv/bin/python -m pytest -q tests "$@"
