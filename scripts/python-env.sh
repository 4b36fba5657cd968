#!/usr/bin/env bash
# Creates .venv with the test and demo dependencies, once per change of requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.requirements
if [ -f "$stamp" ] && cmp -s requirements.txt "$stamp"; then exit 0; fi
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
cp requirements.txt "$stamp"
