# billhook — every target sets itself up (scripts/setup.sh is idempotent).
SHELL := /bin/bash
export PGRX_HOME := $(CURDIR)/pgrx-config

.PHONY: setup install lint unit-test package e2e-test test fuzz demo bench clean

setup:
	@scripts/setup.sh

install: setup
	@scripts/install.sh

# The house style (rustfmt.toml) and clippy's lints, as errors.
lint: setup
	cargo fmt --check
	cargo clippy --lib --tests -- -D warnings

unit-test: setup
	cargo test --lib

# The cargo pgrx package tree and the Debian package, under target/ (tests/test_package.py).
package: setup
	@scripts/package.sh

e2e-test: install
	@scripts/e2e.sh

test: lint unit-test package e2e-test

# The release build, as a user would run it (make test reinstalls the debug one).
demo: setup
	@scripts/install.sh --release
	@scripts/demo.sh

# Not part of test: the hostile suite (tests/test_hostile.py) with many random examples, shrunk when
# one fails (make test runs a few, the same every time). FUZZ_EXAMPLES=N sets how many per property.
FUZZ_EXAMPLES ?= 500
fuzz: install
	@source scripts/pg-config.sh && scripts/python-env.sh && \
		BILLHOOK_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) .venv/bin/python -m pytest -q tests/test_hostile.py

# Not part of test: installs the release build (make test reinstalls the debug one).
bench: setup
	@scripts/bench.sh

clean:
	cargo clean
	rm -rf .venv bench/receiver/target
