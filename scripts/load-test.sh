#!/usr/bin/env bash
# `make load-test`: ApacheBench through the gateway to a local backend.
#
#   scripts/load-test.sh                         # ab -k -n 100000 -c 100
#   N=20000 C=50 scripts/load-test.sh
#   ZKGATE_BIN=target/release/zkgate scripts/load-test.sh   # skip cargo build
#
# The backend is one nginx worker with a fixed 19-byte body when nginx is installed, else
# scripts/demo-backend.py (much slower: it then limits what is measured). Exits non-zero if ab
# reports failed requests or non-2xx responses. BACKEND=python forces the Python backend;
# THREADS sets the gateway's server.threads (default 1); KEEP_TMP=1 keeps configs and logs.
set -euo pipefail

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../benches/lib.sh"

N=${N:-100000}
C=${C:-100}
THREADS=${THREADS:-1}
[[ "$N" =~ ^[1-9][0-9]*$ && "$C" =~ ^[1-9][0-9]*$ ]] || zk_die "N and C must be positive integers"

zk_init zkgate-load-test

zk_ensure_cmd ab apache2-utils
command -v python3 >/dev/null 2>&1 || zk_die "python3 is needed"
ZKGATE="$(zk_zkgate_bin)" || exit 1

BACKEND_PORT="$(zk_free_port)"
if [[ "${BACKEND:-auto}" != python ]] && zk_nginx_bin >/dev/null; then
    zk_start_nginx_backend "$BACKEND_PORT"
    BACKEND_DESC="nginx (1 worker)"
else
    [[ "${BACKEND:-auto}" == python ]] || zk_log "nginx not installed: falling back to scripts/demo-backend.py (slow)"
    zk_spawn "$ZK_TMP/demo-backend.log" python3 "$ZK_REPO_ROOT/scripts/demo-backend.py" "$BACKEND_PORT" load-test
    zk_wait_port "$BACKEND_PORT" 10 "$ZK_LAST_PID" "$ZK_TMP/demo-backend.log" || zk_die "demo backend did not start"
    BACKEND_DESC="scripts/demo-backend.py"
fi

PORT="$(zk_free_port)"
ADMIN="$(zk_free_port)"
CONF="$ZK_TMP/zkgate.yaml"
LOG="$ZK_TMP/zkgate.log"
zk_gateway_config "$CONF" "$ZK_TMP" "$ADMIN" "$PORT" "$BACKEND_PORT" "$THREADS" false
zk_spawn "$LOG" "$ZKGATE" run -c "$CONF"
GATEWAY_PID=$ZK_LAST_PID
zk_wait_http_200 "http://127.0.0.1:$ADMIN/readyz" 30 "$GATEWAY_PID" "$LOG" || zk_die "zkgate did not become ready"
zk_wait_port "$PORT" 10 "$GATEWAY_PID" "$LOG" || zk_die "zkgate listener did not open"
code="$(zk_http_code "http://127.0.0.1:$PORT/")"
[[ "$code" == 200 ]] || zk_die "GET through the gateway answered $code"

zk_log "zkgate (threads: $THREADS) on :$PORT -> $BACKEND_DESC on :$BACKEND_PORT; ab -k -n $N -c $C"
OUT="$ZK_TMP/ab.txt"
rc=0
# ab's own -t would cap the request count at 50000; bound the time with timeout(1) instead.
timeout "${AB_TIMEOUT:-600}" ab -k -q -n "$N" -c "$C" "http://127.0.0.1:$PORT/" >"$OUT" 2>"$ZK_TMP/ab.err" || rc=$?
# The summary, without ab's banner.
sed -n '/^Server Software:/,$p' "$OUT"
[[ -s "$ZK_TMP/ab.err" ]] && cat "$ZK_TMP/ab.err" >&2

failed="$(awk -F: '/^Failed requests:/ { gsub(/ /, "", $2); print $2 }' "$OUT")"
non2xx="$(awk -F: '/^Non-2xx responses:/ { gsub(/ /, "", $2); print $2 }' "$OUT")"
warnings="$(grep -cE ' (WARN|ERROR) ' "$LOG" || true)"
if ((warnings > 0)); then
    zk_log "zkgate logged $warnings warning/error lines, first ones:"
    grep -E ' (WARN|ERROR) ' "$LOG" | head -n 5 >&2
fi

status=0
if ((rc != 0)); then
    zk_log "FAIL: ab exited $rc"
    status=1
fi
if [[ -z "$failed" ]]; then
    zk_log "FAIL: ab printed no 'Failed requests' line"
    status=1
elif [[ "$failed" != 0 ]]; then
    zk_log "FAIL: ab reported $failed failed requests"
    status=1
fi
if [[ -n "$non2xx" && "$non2xx" != 0 ]]; then
    zk_log "FAIL: ab reported $non2xx non-2xx responses"
    status=1
fi
zk_stop "$GATEWAY_PID" 15
((status == 0)) && zk_log "load test passed"
exit "$status"
