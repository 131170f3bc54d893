# kai — developer entry points. `make run` starts a node on the embedded defaults;
# `make test` installs what the tests need and runs every test.

CARGO ?= cargo
VENV  := target/venv
APT_PACKAGES := memcached libmemcached-tools python3-venv shellcheck mandoc
export KAI_TEST_PYTHON := $(CURDIR)/$(VENV)/bin/python3

.PHONY: run build test deps lint unit bench fuzz clean

run:
	$(CARGO) run --release

build:
	$(CARGO) build --release

deps:
	scripts/install-test-deps.sh $(APT_PACKAGES)
	test -x $(VENV)/bin/python3 || python3 -m venv $(VENV)
	$(VENV)/bin/python3 -c 'import pymemcache' 2>/dev/null || $(VENV)/bin/pip install --quiet pymemcache

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test: deps lint
	$(CARGO) build --release
	$(CARGO) test --release

bench: deps
	$(CARGO) build --release
	scripts/bench.sh

# libFuzzer needs a nightly toolchain (rustup toolchain install nightly).
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && $(CARGO) +nightly fuzz run parse -- -max_total_time=$${FUZZ_SECONDS:-60}

clean:
	$(CARGO) clean
