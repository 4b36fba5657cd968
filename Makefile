# billhook — every target sets itself up (scripts/setup.sh is idempotent).
SHELL := /bin/bash
export PGRX_HOME := $(CURDIR)/pgrx-config
PG_CONFIG := /usr/lib/postgresql/15/bin/pg_config
# cargo pgrx builds with these rustflags; unit tests use the same ones so one build serves both.
PGRX_RUSTFLAGS := --config "target.'cfg(all(target_family = \"unix\", not(target_os = \"macos\")))'.rustflags = [\"-C\", \"link-arg=-Wl,--no-gc-sections\"]"

.PHONY: setup install unit-test e2e-test test demo clean

setup:
	@scripts/setup.sh

install: setup
	@scripts/install.sh

unit-test: setup
	cargo test --lib $(PGRX_RUSTFLAGS)

e2e-test: install
	@scripts/e2e.sh

test: unit-test e2e-test

demo: install
	@scripts/demo.sh

clean:
	cargo clean
	rm -rf .venv tmp
