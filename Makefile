# kai — developer entry points. `make run` starts a node on the embedded defaults;
# `make test` installs what the tests need and runs every test.

CARGO ?= cargo
VENV  := target/venv
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# Test dependencies: the reference memcached and its tools, the packaging toolchain, and
# the stock binary-protocol clients (Ruby's Dalli, PHP's Memcached, pylibmc; SASL PLAIN
# needs libsasl2-modules on the client side); FUSE for the disk whose syncs fail
# (tests/common/sync_failing_fs.py, with fusepy from the venv).
APT_PACKAGES := memcached libmemcached-tools python3-venv shellcheck mandoc lintian nftables rpm faketime openssl \
                rpmlint systemd-container ruby ruby-dalli php-cli php-memcached python3-pylibmc \
                libsasl2-modules libfuse2 fuse3
# memjs, Node's binary-protocol client, from npm (pinned).
MEMJS := memjs@1.3.2
PREFIX  ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= /lib/systemd/system
export KAI_TEST_PYTHON := $(CURDIR)/$(VENV)/bin/python3

.PHONY: run build test deps lint bench fuzz clean install dist deb rpm package-test

run:
	$(CARGO) run --release

build:
	$(CARGO) build --release

deps:
	scripts/install-test-deps.sh $(APT_PACKAGES)
	command -v cargo-deb >/dev/null || $(CARGO) install --locked cargo-deb
	test -x $(VENV)/bin/python3 || python3 -m venv $(VENV)
	$(VENV)/bin/python3 -c 'import pymemcache, meta_memcache, pytest, fuse' 2>/dev/null || \
		$(VENV)/bin/pip install --quiet pymemcache==4.0.0 meta-memcache==4.3.0 pytest fusepy==3.0.1
	command -v npm >/dev/null || scripts/install-test-deps.sh nodejs npm
	test -d target/npm/node_modules/memjs || \
		npm install --silent --no-audit --no-fund --prefix target/npm $(MEMJS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test: deps lint
	$(CARGO) build --release
	$(CARGO) test --release
	# The protocol and client suites again, against the disk engine.
	KAI_TEST_ENGINE=disk $(CARGO) test --release --test differential --test clients --test limits
	# The fault suite's summary (tests/faults.rs; docs/fault-tests.md keeps a copy).
	@printf '| scenario | writes acknowledged | lost | keys with siblings | time to converge |\n|---|---|---|---|---|\n'
	@cat target/tmp/fault-summary/*.row
	# The rolling upgrade's figures (tests/upgrade.rs).
	@grep -v '^failure' target/tmp/upgrade-summary.txt | tail -12
	$(MAKE) package-test

# Installs the node the way the packages lay it out; never overwrites an existing config.
install: build
	install -D -m 755 target/release/kai $(DESTDIR)$(PREFIX)/bin/kai
	install -D -m 644 systemd/kai.service $(DESTDIR)$(UNITDIR)/kai.service
	install -D -m 755 init.d/kai $(DESTDIR)$(SYSCONFDIR)/init.d/kai
	install -D -m 644 man/kai.8 $(DESTDIR)$(PREFIX)/share/man/man8/kai.8
	install -D -m 644 man/kai.toml.5 $(DESTDIR)$(PREFIX)/share/man/man5/kai.toml.5
	install -d -m 755 $(DESTDIR)$(SYSCONFDIR)/kai/conf.d
	test -e $(DESTDIR)$(SYSCONFDIR)/kai/kai.toml || \
		install -m 644 etc/kai/kai.toml $(DESTDIR)$(SYSCONFDIR)/kai/kai.toml
	test -e $(DESTDIR)$(SYSCONFDIR)/default/kai || \
		install -D -m 644 etc/default/kai $(DESTDIR)$(SYSCONFDIR)/default/kai

# Source tarball for rpmbuild: the tracked tree as committed.
dist:
	mkdir -p target/dist
	git archive --format=tar.gz --prefix=kai-$(VERSION)/ -o target/dist/kai-$(VERSION).tar.gz HEAD

deb: build
	$(CARGO) deb --no-build --strip -o target/debian/

# --nodeps: the build host's packages come from dpkg, so rpm cannot see cargo (BuildRequires).
rpm: dist
	rpmbuild -bb kai.spec --nodeps --define "_topdir $(CURDIR)/target/rpmbuild" \
		--define "_sourcedir $(CURDIR)/target/dist" --define "kai_version $(VERSION)" \
		--define "cargo_target_dir $(CURDIR)/target"

# Installs the built packages for real (dpkg on this machine, rpm, and a booted systemd in
# a container) and checks them; see packaging/test/.
package-test: build
	packaging/test/install.sh
	rm -rf target/debian
	$(CARGO) deb --no-build --strip -o target/debian/old/
	$(CARGO) deb --no-build --strip --deb-version $(VERSION)-99 -o target/debian/new/
	lintian --fail-on error,warning target/debian/old/kai_$(VERSION)-1_amd64.deb
	packaging/test/deb.sh target/debian/old/kai_$(VERSION)-1_amd64.deb \
		target/debian/new/kai_$(VERSION)-99_amd64.deb
	$(MAKE) rpm
	packaging/test/rpm.sh target/rpmbuild/RPMS/x86_64/kai-$(VERSION)-1.x86_64.rpm
	scripts/previous-release.sh packages
	packaging/test/systemd.sh target/debian/old/kai_$(VERSION)-1_amd64.deb \
		target/rpmbuild/RPMS/x86_64/kai-$(VERSION)-1.x86_64.rpm \
		target/v0.1.0/packages/kai_0.1.0-1_amd64.deb target/v0.1.0/packages/kai-0.1.0-1.x86_64.rpm

bench: deps
	$(CARGO) build --release --bins --examples
	scripts/bench.sh

# libFuzzer needs a nightly toolchain (rustup toolchain install nightly).
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for target in parse meta binary_frame rpc_frame handshake config; do \
		$(CARGO) +nightly fuzz run $$target -- -max_total_time=$${FUZZ_SECONDS:-60} || exit 1; \
	done

clean:
	$(CARGO) clean
