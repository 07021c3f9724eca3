#!/usr/bin/env bash
# Game frames through zkgate's game listener and through HAProxy in `mode tcp`, one thread
# each, with the same test game server behind both (examples/game_server.rs: the backend
# framing behind zkgate, the client framing behind HAProxy, which passes bytes through), loaded
# by `zkgate gameload` with 64-byte payloads on 127.0.0.x sources.
#
# For each proxy: a closed-loop run finds the saturation (frames/s answered with WINDOW frames
# in flight per session), then an open-loop run at half of it gives the p99 round trip; then a
# ladder of rising rates. Prints msgs/s at saturation, p99 at half, and zkgate's ratio to
# HAProxy. Everything runs on 127.0.0.1 ports picked here and is stopped at the end.
#
# Env: ZKGATE_BIN (default: cargo build --release), GAME_SERVER_BIN (default: built),
# SESSIONS (100), WINDOW (8), SECONDS_PER_RUN (5), PAYLOAD (64), KEEP_TMP=1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
zk_init game-compare

SESSIONS=${SESSIONS:-100}
WINDOW=${WINDOW:-8}
SECS=${SECONDS_PER_RUN:-5}
PAYLOAD=${PAYLOAD:-64}

"$ZK_REPO_ROOT/scripts/ensure-packages.sh" haproxy >&2 || zk_ensure_cmd haproxy haproxy
HAPROXY="$(zk_haproxy_bin)" || zk_die "haproxy not found"
ZKGATE="$(zk_zkgate_bin)"
if [[ -z "${GAME_SERVER_BIN:-}" ]]; then
    zk_log "building the test game server: cargo build --release --example game_server"
    (cd "$ZK_REPO_ROOT" && cargo build --release --example game_server >&2) || zk_die "build failed"
    GAME_SERVER_BIN="$(zk_target_dir)/release/examples/game_server"
fi
ulimit -n 65536 2>/dev/null || true

# start_game NAME ARGS...: a test game server on a free port; sets GAME_PORT.
start_game() {
    local name=$1
    shift
    GAME_PORT="$(zk_free_port)"
    zk_spawn "$ZK_TMP/$name.log" "$GAME_SERVER_BIN" --name "$name" --port "$GAME_PORT" --threads 1 "$@"
    zk_wait_port "$GAME_PORT" 10 "$ZK_LAST_PID" "$ZK_TMP/$name.log" || zk_die "$name did not start"
}

start_game backend --events
BACKEND_PORT=$GAME_PORT
start_game plain --client
PLAIN_PORT=$GAME_PORT

ZK_PORT="$(zk_free_port)"
ADMIN_PORT="$(zk_free_port)"
cat >"$ZK_TMP/zkgate.yaml" <<YAML
server: { threads: 1, upgrade_sock: $ZK_TMP/upgrade.sock }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
listeners:
  - name: game
    listen: "127.0.0.1:$ZK_PORT"
    game:
      gateway_id: 1
      rules: [{ server_type: 1, upstream: game, links: 2 }]
      client_idle: off
      queue: 1024
upstreams:
  - { name: game, backends: ["127.0.0.1:$BACKEND_PORT"] }
YAML
"$ZKGATE" check -c "$ZK_TMP/zkgate.yaml" >/dev/null || zk_die "zkgate config rejected"
PROXY_PORT=$ZK_PORT
zk_run_zkgate zkgate "$ZK_TMP/zkgate.yaml" "$ADMIN_PORT"
ZKGATE_PID=$PROXY_PID

HA_PORT="$(zk_free_port)"
cat >"$ZK_TMP/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 8000

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

listen game
    bind 127.0.0.1:$HA_PORT
    server s1 127.0.0.1:$PLAIN_PORT
CFG
"$HAPROXY" -c -q -f "$ZK_TMP/haproxy.cfg" >/dev/null || zk_die "haproxy config rejected"
zk_spawn "$ZK_TMP/haproxy.log" "$HAPROXY" -db -f "$ZK_TMP/haproxy.cfg"
HAPROXY_PID=$ZK_LAST_PID
zk_wait_port "$HA_PORT" 10 "$HAPROXY_PID" "$ZK_TMP/haproxy.log" || zk_die "haproxy did not start"

# load PORT SECONDS ARGS...: one gameload run, its JSON report on stdout.
load() {
    local port=$1 secs=$2
    shift 2
    "$ZKGATE" gameload --target "127.0.0.1:$port" --sessions "$SESSIONS" --payload "$PAYLOAD" \
        --sources 127.0.0.2-127.0.0.9 --duration "${secs}s" --threads 1 --json "$@" 2>/dev/null
}
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); v=d
for k in sys.argv[1].split("."): v=(v or {}).get(k)
print(v if v is not None else "n/a")' "$1"; }
failures() { python3 -c 'import json,sys; d=json.load(sys.stdin); f=d["failures"]
print(f["refused"]+f["closed"]+f["mismatched"]+f["lost"])'; }

declare -A SAT P99 CPU
for target in zkgate haproxy; do
    port=$ZK_PORT pid=$ZKGATE_PID
    [[ $target == haproxy ]] && port=$HA_PORT pid=$HAPROXY_PID
    load "$port" 1 --rate 0 --window 1 >/dev/null  # warm-up: links, caches
    t0="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
    out="$(load "$port" "$SECS" --rate 0 --window "$WINDOW")"
    t1="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
    SAT[$target]="$(field frames_per_second <<<"$out")"
    CPU[$target]="$(awk -v a="$t0" -v b="$t1" -v s="$SECS" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", (b - a) / hz / s * 100 }')"
    zk_log "$target saturation: ${SAT[$target]} frames/s (proxy CPU ${CPU[$target]} %), failures $(failures <<<"$out")"
    half="$(awk -v s="${SAT[$target]}" 'BEGIN { printf "%d", s / 2 }')"
    out="$(load "$port" "$SECS" --rate "$half")"
    P99[$target]="$(field rtt_us.p99 <<<"$out")"
    zk_log "$target at $half frames/s: p50 $(field rtt_us.p50 <<<"$out") us, p99 ${P99[$target]} us, failures $(failures <<<"$out")"
    for rate in 5000 10000 20000 40000 80000; do
        out="$(load "$port" 3 --rate "$rate")"
        zk_log "$target ladder $rate/s: answered $(field frames_per_second <<<"$out")/s, p99 $(field rtt_us.p99 <<<"$out") us"
    done
done

printf '\n%-10s %18s %14s %10s\n' proxy "frames/s (sat.)" "p99 at half" "proxy CPU"
for target in zkgate haproxy; do
    printf '%-10s %18.0f %11s us %9s%%\n' "$target" "${SAT[$target]}" "${P99[$target]}" "${CPU[$target]}"
done
awk -v z="${SAT[zkgate]}" -v h="${SAT[haproxy]}" 'BEGIN { if (h > 0) printf "\nzkgate / haproxy at saturation: %.2fx\n", z / h }'
# The generator (one thread) may saturate before either proxy does on 2 cores: frames per CPU
# second of the proxy itself is the per-core comparison.
awk -v z="${SAT[zkgate]}" -v h="${SAT[haproxy]}" -v zc="${CPU[zkgate]}" -v hc="${CPU[haproxy]}" 'BEGIN {
    if (zc > 0 && hc > 0) printf "frames per proxy CPU-second: zkgate %.0f, haproxy %.0f: %.2fx\n", z / zc * 100, h / hc * 100, (z / zc) / (h / hc) }'
printf 'zkgate RSS %s MB, haproxy RSS %s MB; %s sessions, %s frames in flight each, %s-byte payloads\n' \
    "$(zk_rss_mb "$ZKGATE_PID")" "$(zk_rss_mb "$HAPROXY_PID")" "$SESSIONS" "$WINDOW" "$PAYLOAD"
