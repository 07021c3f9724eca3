#!/usr/bin/env bash
# 100,000 idle game sessions held by one zkgate game listener: the gateway's RSS per session
# and the time to establish them (notes/game-router.md §5). `zkgate gameload --idle` opens the
# sessions from 127.0.0.2-127.0.0.9 (binding before connect with IP_BIND_ADDRESS_NO_PORT, so
# each source address has its own ephemeral ports), each established by its first frame
# answered by the test game server over two multiplexed links, then holds them.
#
# RSS per session = (gateway RSS with every session open - its RSS after a warm-up) / sessions.
# The kernel's socket memory (/proc/net/sockstat, both ends on loopback) is printed beside it.
#
# Env: SESSIONS (100000), HOLD (20s), ZKGATE_BIN, GAME_SERVER_BIN, THREADS (gateway, 1), QUEUE (the
# listener's per-session queue, 256), KEEP_TMP=1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
zk_init game-sessions

SESSIONS=${SESSIONS:-100000}
HOLD=${HOLD:-20s}
THREADS=${THREADS:-1}

# Three processes hold about SESSIONS fds each (generator, gateway; the server few): raise the
# hard limit as far as the kernel allows (root), then the soft one.
need=$((SESSIONS + 10000))
if (( $(ulimit -Hn) < need )); then
    ulimit -Hn "$(( need > $(cat /proc/sys/fs/nr_open) ? $(cat /proc/sys/fs/nr_open) : need ))" 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)" || true
if (( $(ulimit -n) < need )); then
    # A container without CAP_SYS_RESOURCE cannot raise its hard limit: measure what fits.
    zk_log "ulimit -n is $(ulimit -n) (hard), $need needed for $SESSIONS sessions: measuring $(( $(ulimit -n) - 1000 )) instead"
    SESSIONS=$(( $(ulimit -n) - 1000 ))
fi

ZKGATE="$(zk_zkgate_bin)"
if [[ -z "${GAME_SERVER_BIN:-}" ]]; then
    zk_log "building the test game server: cargo build --release --example game_server"
    (cd "$ZK_REPO_ROOT" && cargo build --release --example game_server >&2) || zk_die "build failed"
    GAME_SERVER_BIN="$(zk_target_dir)/release/examples/game_server"
fi

BACKEND_PORT="$(zk_free_port)"
zk_spawn "$ZK_TMP/backend.log" "$GAME_SERVER_BIN" --name backend --port "$BACKEND_PORT" --threads 1 --events
zk_wait_port "$BACKEND_PORT" 10 "$ZK_LAST_PID" "$ZK_TMP/backend.log" || zk_die "the game server did not start"

PROXY_PORT="$(zk_free_port)"
ADMIN_PORT="$(zk_free_port)"
cat >"$ZK_TMP/zkgate.yaml" <<YAML
server: { threads: $THREADS, upgrade_sock: $ZK_TMP/upgrade.sock }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
listeners:
  - name: game
    listen: "127.0.0.1:$PROXY_PORT"
    game:
      gateway_id: 1
      rules: [{ server_type: 1, upstream: game, links: 2 }]
      client_idle: off
      queue: ${QUEUE:-256}
      max_sessions: $((SESSIONS + 1000))
      first_frame_timeout: 60s
upstreams:
  - { name: game, backends: ["127.0.0.1:$BACKEND_PORT"] }
YAML
"$ZKGATE" check -c "$ZK_TMP/zkgate.yaml" >/dev/null || zk_die "zkgate config rejected"
zk_run_zkgate zkgate "$ZK_TMP/zkgate.yaml" "$ADMIN_PORT"
GW=$PROXY_PID

active() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" \
        | awk '/^zkgate_game_sessions_active/ { s += $2 } END { printf "%d\n", s }'
}
sockmem() { awk '/^TCP:/ { for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat; }

# Warm-up: a few sessions open the links and fault in the runtime's first pages.
"$ZKGATE" gameload --target "127.0.0.1:$PROXY_PORT" --sessions 100 --idle --duration 1s >/dev/null 2>&1 || true
sleep 1
RSS0="$(awk '/^VmRSS:/ { print $2 }' "/proc/$GW/status")"
MEM0="$(sockmem)"
zk_log "gateway RSS after warm-up: $((RSS0 / 1024)) MB; opening $SESSIONS sessions"

zk_spawn "$ZK_TMP/gameload.log" "$ZKGATE" gameload --target "127.0.0.1:$PROXY_PORT" \
    --sessions "$SESSIONS" --idle --duration "$HOLD" --sources 127.0.0.2-127.0.0.9 \
    --connect-concurrency 512 --threads 2 --timeout 30s
LOAD=$ZK_LAST_PID
start=$SECONDS
peak=0
while zk_alive "$LOAD"; do
    n="$(active)"
    (( n > peak )) && peak=$n
    if (( n >= SESSIONS )); then
        break
    fi
    (( SECONDS - start < 600 )) || zk_die "not all sessions open after 600 s ($n)"
    sleep 1
done
sleep 2
N="$(active)"
RSS1="$(awk '/^VmRSS:/ { print $2 }' "/proc/$GW/status")"
MEM1="$(sockmem)"
wait "$LOAD" 2>/dev/null || true
cat "$ZK_TMP/gameload.log"

printf '\nsessions held:        %d of %d\n' "$N" "$SESSIONS"
printf 'gateway RSS:          %d MB after warm-up, %d MB holding them\n' $((RSS0 / 1024)) $((RSS1 / 1024))
awk -v a="$RSS0" -v b="$RSS1" -v n="$N" 'BEGIN { if (n > 0) printf "gateway RSS/session:  %.2f KB (goal: under 4 KB)\n", (b - a) * 1.024 / n }'
awk -v a="$MEM0" -v b="$MEM1" -v n="$N" 'BEGIN { if (n > 0) printf "kernel TCP memory:    %.0f MB more (%.2f KB/session, both ends on loopback)\n", (b - a) * 4 / 1024, (b - a) * 4 * 1.024 / n }'
