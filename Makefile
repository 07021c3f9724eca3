# zkgate: the one entry point. `make run` and `make test` install what they need themselves.

CARGO        ?= cargo
MUSL_TARGET  := x86_64-unknown-linux-musl
# Where cargo builds to, as cargo resolves it ($CARGO_TARGET_DIR, a cargo config, or target/);
# asked once, and only by the targets that need a built binary.
TARGET_DIR    = $(eval TARGET_DIR := $$(shell CARGO=$(CARGO) scripts/target-dir.sh))$(TARGET_DIR)
STATIC_BIN    = $(TARGET_DIR)/$(MUSL_TARGET)/dist/zkgate
CONFIG       ?= conf/zkgate.yaml
ENSURE       := scripts/ensure-packages.sh

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := config alert_payload zk_instance path proxy_protocol notification game_frames fast_head redis_entry

.PHONY: help fuzz run test lint doc unit-and-e2e test-static build build-optimized load-test bench bench-propagation bench-scale bench-compare bench-pgo bench-tls bench-webhook bench-cache bench-cache-propagation bench-game docker deps deps-test deps-musl zk-up zk-down clean

# `make` alone installs the build's packages, as it always has; `make help` lists the targets.
.DEFAULT_GOAL := deps

## help: this list of targets
help:
	@awk '/^## [a-z][a-z0-9 \/-]*: / { sub(/^## /, ""); i = index($$0, ": "); \
		printf "  %-18s %s\n", substr($$0, 1, i - 1), substr($$0, i + 2); next } \
		/^## / { sub(/^## /, ""); printf "  %-18s %s\n", "", $$0 }' $(MAKEFILE_LIST)

## deps: the Debian packages the build needs (cmake, a C toolchain, curl, openssl, python3)
deps:
	@$(ENSURE) cmake build-essential curl openssl python3

# The end-to-end tests start real servers: ZooKeeper (with its JRE), Alertmanager and nginx (the
# reference for the hardening tests) among them.
## deps-test: deps, and the real servers and clients the end-to-end tests start (ZooKeeper,
##   Alertmanager, nginx, h2load, Redis, Varnish; Python's websockets, grpcio and cryptography)
deps-test: deps
	@$(ENSURE) zookeeper prometheus-alertmanager nginx-light nghttp2-client redis-server varnish
	@python3 -c 'import websockets, grpc, cryptography' 2>/dev/null || python3 -m pip install -q -r tests/requirements.txt

## deps-musl: deps, and musl-tools with the Rust musl target for the static binary
deps-musl: deps
	@$(ENSURE) musl-tools file
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET)

## build: the release binary (where cargo builds to: $CARGO_TARGET_DIR is honoured)
build: deps
	$(CARGO) build --release

## run: build and start the gateway on conf/zkgate.yaml, with the two demo backends it routes to
run: build
	ZKGATE_BIN=$(TARGET_DIR)/release/zkgate CONFIG=$(CONFIG) scripts/quickstart.sh

## test: formatting, lints, docs, unit and end-to-end tests, and the static binary in an empty root
# The static binary's fat-LTO build is the longest single step, and its last minutes run on one
# core; it starts first, at the lowest CPU priority, so that it takes what lint, doc and the tests
# leave idle (the tests mostly wait on the servers they start) rather than time of their own.
# Its output is kept in a file and shown if it fails; its own lock (target/*/dist) is not the tests'.
test: deps-test deps-musl
	@set -e; log=$$(mktemp); \
	setsid nice -n 19 $(CARGO) build --profile dist --target $(MUSL_TARGET) >$$log 2>&1 & dist=$$!; \
	trap 'kill -- -$$dist 2>/dev/null || true; rm -f $$log' EXIT; \
	$(MAKE) --no-print-directory lint doc unit-and-e2e; \
	echo "waiting for the static build (make build-optimized), started in the background"; \
	wait $$dist || { cat $$log; exit 1; }; \
	$(MAKE) --no-print-directory test-static

## lint: rustfmt check and clippy on every target, warnings as errors
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## doc: the API docs of both crates, warnings (broken links among them) as errors
doc: deps
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

## unit-and-e2e: every unit and end-to-end test of the workspace, benches and examples built too
unit-and-e2e: deps-test
	$(CARGO) test --workspace --all-targets

## test-static: the static binary started in an empty root with only its config
test-static: build-optimized
	scripts/test-static.sh $(STATIC_BIN)

## build-optimized: static, stripped musl binary with LTO
build-optimized: deps-musl
	$(CARGO) build --profile dist --target $(MUSL_TARGET)
	@ls -l $(STATIC_BIN) | awk '{printf "static binary: %s (%.1f MB)\n", $$9, $$5/1048576}'

## load-test: ApacheBench through the gateway to a local nginx backend (N, C, THREADS)
load-test: build
	ZKGATE_BIN=$(TARGET_DIR)/release/zkgate scripts/load-test.sh

## bench: criterion micro-benchmarks of the request-path pieces and the admission limits
bench: deps
	$(CARGO) bench --bench hot_path
	$(CARGO) bench --bench limits
	$(CARGO) bench --bench alert

## bench-propagation: znode change to first request routed by the new set, p50/p99 over 200 changes
bench-propagation: deps-test
	$(CARGO) bench --bench propagation

## bench-scale: 500 services x 20 instances against 5 x 20: memory, full resync time, time and CPU of one change
bench-scale: deps-test
	$(CARGO) bench --bench scale

## bench-compare: zkgate against bare Pingora, nginx and HAProxy, one thread each, same backend:
##   req/s, p99 (and at half rate), CPU per request (wrk), instructions per request (callgrind)
bench-compare: build
	$(CARGO) build --release --example bare_pingora
	ZKGATE_BIN=$(TARGET_DIR)/release/zkgate BARE_BIN=$(TARGET_DIR)/release/examples/bare_pingora \
		benches/compare.sh

## bench-pgo: the static binary with profile-guided optimisation against without: size, instructions per request
bench-pgo: deps-musl
	benches/pgo.sh

## bench-tls: zkgate against nginx as TLS terminators: new handshakes (ECDSA, RSA), keep-alive HTTPS, h2load
bench-tls: build deps-test
	ZKGATE_BIN=$(TARGET_DIR)/release/zkgate benches/tls-compare.sh

## bench-webhook: Alertmanager webhooks through the alert plugin against proxying the same payload
bench-webhook: build
	ZKGATE_BIN=$(TARGET_DIR)/release/zkgate benches/webhook.sh

## bench-cache: cache hits through zkgate against nginx proxy_cache and Varnish, 200 B and 20 KiB, one CPU each; zkgate's instructions per hit and per miss
bench-cache: build deps-test
	ZKGATE_BIN=$(TARGET_DIR)/release/zkgate benches/cache-compare.sh

## bench-cache-propagation: O2 notification to eviction on 3 replicas (ZooKeeper), p50/p99 over 200 rounds
bench-cache-propagation: deps-test
	$(CARGO) bench --bench cache-propagation

## bench-game: the game listener: codec and forwarding criterion benches, 64-byte frames against
##   HAProxy mode tcp (one thread each), and 100,000 idle sessions (RSS per session, time to open)
bench-game: build
	$(CARGO) bench --bench game_codec
	$(CARGO) build --release --example game_server
	ZKGATE_BIN=$(TARGET_DIR)/release/zkgate GAME_SERVER_BIN=$(TARGET_DIR)/release/examples/game_server benches/game-compare.sh
	ZKGATE_BIN=$(TARGET_DIR)/release/zkgate GAME_SERVER_BIN=$(TARGET_DIR)/release/examples/game_server benches/game-sessions.sh

## docker: the scratch image (needs a container engine; see README)
docker: build-optimized
	mkdir -p dist/tmp && cp $(STATIC_BIN) dist/zkgate && cp /etc/ssl/certs/ca-certificates.crt dist/
	docker build -f Dockerfile.scratch -t zkgate:latest .

## fuzz: each fuzz target (config, alert_payload, zk_instance, path, proxy_protocol, notification, game_frames, fast_head, redis_entry) for FUZZ_SECONDS (default 60) from
## its corpus in fuzz/corpus. cargo-fuzz is installed if missing; RUSTC_BOOTSTRAP lets the stable
## toolchain take its sanitizer flags. New inputs go to target/fuzz-corpus (the committed corpora
## stay small); a crash or an input slower than 10 s is saved under fuzz/artifacts and fails.
fuzz: deps
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$t && \
		echo "fuzz $$t for $(FUZZ_SECONDS) s" && \
		(cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t ../target/fuzz-corpus/$$t corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 -print_final_stats=1) || exit 1; \
	done

## zk-up: a local ZooKeeper on 127.0.0.1:2181 for trying discovery by hand
zk-up:
	scripts/zk.sh up

## zk-down: stop the ZooKeeper of zk-up
zk-down:
	scripts/zk.sh down

## clean: cargo clean
clean:
	$(CARGO) clean
