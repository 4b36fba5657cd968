# billhook — every target sets itself up (scripts/setup.sh is idempotent).
SHELL := /bin/bash
export PGRX_HOME := $(CURDIR)/pgrx-config
PG_CONFIG := /usr/lib/postgresql/15/bin/pg_config

.PHONY: setup install unit-test e2e-test test demo bench clean

setup:
	@scripts/setup.sh

install: setup
	@scripts/install.sh

unit-test: setup
	cargo test --lib

e2e-test: install
	@scripts/e2e.sh

test: unit-test e2e-test

demo: install
	@scripts/demo.sh

# Not part of test: installs the release build (make test reinstalls the debug one).
bench: setup
	@scripts/bench.sh

clean:
	cargo clean
	rm -rf .venv bench/receiver/target
