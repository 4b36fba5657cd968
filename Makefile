# billhook — every target sets itself up (scripts/setup.sh is idempotent).
SHELL := /bin/bash
export PGRX_HOME := $(CURDIR)/pgrx-config

.PHONY: setup install lint unit-test package e2e-test test demo bench clean

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

demo: install
	@scripts/demo.sh

# Not part of test: installs the release build (make test reinstalls the debug one).
bench: setup
	@scripts/bench.sh

clean:
	cargo clean
	rm -rf .venv bench/receiver/target
