#!/usr/bin/env bash
# Profile-guided optimisation of the shipped static binary, measured rather than shipped: builds
# the static binary (`make build-optimized`'s profile and target) instrumented, trains it on
# bench-compare's load (the fast path, the full proxy and the production-features config),
# builds it again with the merged profile, and prints both binaries' sizes and instructions per
# request (callgrind, as bench-compare counts them).
#
#   benches/pgo.sh        # `make bench-pgo`: three fat-LTO builds, about half an hour on 2 cores
#
# The builds go to TARGET/pgo (CARGO_TARGET_DIR), so the usual ones are left alone. Needs
# rustup's llvm-tools (llvm-profdata of rustc's own LLVM; Debian's is older), added if missing.
# Environment: TRAIN (wrk -d per config while training, default 5s), INSTR_REQUESTS (default
# 20000), KEEP_TMP=1.
set -euo pipefail

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TRAIN=${TRAIN:-5s}
INSTR_REQUESTS=${INSTR_REQUESTS:-20000}
MUSL=x86_64-unknown-linux-musl

zk_init zkgate-pgo
host="$(rustc -vV | awk '/^host:/ { print $2 }')"
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
    rustup component add llvm-tools >&2 || zk_die "rustup could not add llvm-tools (llvm-profdata)"
fi
target="$(zk_target_dir)"
pgo_target="$target/pgo"
data="$ZK_TMP/profiles"
mkdir -p "$data"

build() { # RUSTFLAGS: the dist build into TARGET/pgo with these flags
    (cd "$ZK_REPO_ROOT" && RUSTFLAGS="$1" CARGO_TARGET_DIR="$pgo_target" \
        cargo build --profile dist --target "$MUSL" >&2) || zk_die "cargo build with RUSTFLAGS=$1 failed"
}

zk_log "baseline: cargo build --profile dist --target $MUSL"
(cd "$ZK_REPO_ROOT" && cargo build --profile dist --target "$MUSL" >&2) || zk_die "the baseline build failed"
baseline="$ZK_TMP/zkgate.baseline"
cp "$target/$MUSL/dist/zkgate" "$baseline"

zk_log "instrumented build (-Cprofile-generate)"
build "-Cprofile-generate=$data"
instrumented="$ZK_TMP/zkgate.instrumented"
cp "$pgo_target/$MUSL/dist/zkgate" "$instrumented"

zk_log "training: bench-compare's configs for $TRAIN each"
# Each zkgate writes its profile when it exits (bench-compare stops it with SIGTERM).
LLVM_PROFILE_FILE="$data/zkgate-%p.profraw" ZKGATE_BIN="$instrumented" BARE_BIN=/nonexistent \
    ROUNDS=1 DURATION="$TRAIN" WARMUP=1s HALF=0 INSTR_REQUESTS=0 \
    PROXIES="zkgate zkgate-full zkgate-features" "$ZK_REPO_ROOT/benches/compare.sh" >"$ZK_TMP/train.txt" \
    || zk_die "training failed: $(tail -n 20 "$ZK_TMP/train.txt")"
ls "$data"/*.profraw >/dev/null 2>&1 || zk_die "the instrumented zkgate wrote no profile"
"$profdata" merge -o "$ZK_TMP/zkgate.profdata" "$data"/*.profraw || zk_die "llvm-profdata merge failed"

zk_log "optimised build (-Cprofile-use)"
build "-Cprofile-use=$ZK_TMP/zkgate.profdata"
optimised="$ZK_TMP/zkgate.pgo"
cp "$pgo_target/$MUSL/dist/zkgate" "$optimised"

count() { # BINARY: bench-compare's instruction counts of the fast path and the full proxy
    ZKGATE_BIN="$1" BARE_BIN=/nonexistent ROUNDS=0 INSTR_REQUESTS="$INSTR_REQUESTS" \
        PROXIES="zkgate zkgate-full" "$ZK_REPO_ROOT/benches/compare.sh" 2>/dev/null \
        | awk '/^  zkgate \(default/ { fast = $NF } /^  zkgate, fast path off/ { full = $NF }
               END { print fast, full }'
}
read -r base_fast base_full < <(count "$baseline")
read -r pgo_fast pgo_full < <(count "$optimised")

echo
echo "static binary (musl, dist profile) without and with PGO; instructions per request from"
echo "callgrind over $INSTR_REQUESTS keep-alive requests (h2load --h1 -c 16), trained for $TRAIN per config"
printf '%-28s %12s %16s %16s\n' build bytes "fast path" "full proxy"
printf '%-28s %12s %16s %16s\n' "fat LTO (make build-optimized)" "$(stat -c %s "$baseline")" "$base_fast" "$base_full"
printf '%-28s %12s %16s %16s\n' "fat LTO + PGO" "$(stat -c %s "$optimised")" "$pgo_fast" "$pgo_full"
