#!/usr/bin/env bash
# Compare zkgate with nginx and HAProxy as reverse proxies in front of the same nginx backend.
#
#   benches/compare.sh                          # 3 rounds of 10 s per proxy
#   DURATION=5s ROUNDS=1 benches/compare.sh     # quick look
#   ZKGATE_BIN=target/release/zkgate benches/compare.sh   # skip cargo build
#
# Environment: DURATION (wrk -d, default 10s), ROUNDS (default 3), WARMUP (default 2s),
# CONNECTIONS (wrk -c, default 64), ZKGATE_BIN, KEEP_TMP=1 (keep configs and logs).
#
# Each proxy gets one thread/worker; the backend is one nginx worker answering a fixed 19-byte
# body. Nothing is pinned, so on a small machine wrk, the proxy and the backend share cores:
# compare the ratios, not the absolute numbers. Exits non-zero if any run saw non-2xx/3xx
# responses or socket errors.
set -euo pipefail

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
WRK_ARGS=(-t1 "-c$CONNECTIONS" "-d$DURATION" --latency)
WARMUP_ARGS=(-t1 "-c$CONNECTIONS" "-d$WARMUP")

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || zk_die "ROUNDS must be a positive integer"

zk_init zkgate-compare

zk_ensure_cmd nginx nginx-light
zk_ensure_cmd haproxy haproxy
zk_ensure_cmd wrk wrk
command -v python3 >/dev/null 2>&1 || zk_die "python3 is needed"
HAPROXY="$(zk_haproxy_bin)"
ZKGATE="$(zk_zkgate_bin)" || exit 1
BARE="${BARE_BIN:-$(zk_target_dir)/release/examples/bare_pingora}"
if [[ -z "${BARE_BIN:-}" ]]; then
    (cd "$ZK_REPO_ROOT" && cargo build --release --example bare_pingora >&2) || zk_die "cannot build examples/bare_pingora"
fi

RES="$ZK_TMP/results"
mkdir -p "$RES"
FAILED=0

BACKEND_PORT="$(zk_free_port)"
zk_start_nginx_backend "$BACKEND_PORT"

# ---------------------------------------------------------------------------------------------
# Proxies. Each start_* sets PROXY_PID, PROXY_PORT and PROXY_LOG.

start_zkgate() { # VARIANT: "zkgate", "zkgate-nows" (work_stealing: false) or "zkgate-features"
    local variant=$1 dir admin
    dir="$ZK_TMP/$variant"
    rm -rf "$dir" && mkdir -p "$dir"
    PROXY_PORT="$(zk_free_port)"
    admin="$(zk_free_port)"
    local ws=true features=0
    [[ "$variant" == zkgate-nows || "$variant" == zkgate-features ]] && ws=false
    [[ "$variant" == zkgate-features ]] && features=1
    zk_gateway_config "$dir/zkgate.yaml" "$dir" "$admin" "$PROXY_PORT" "$BACKEND_PORT" 1 "$ws" "$features"
    zk_run_zkgate "$variant" "$dir/zkgate.yaml" "$admin"
}

start_bare() { # VARIANT: "pingora" or "pingora-nows": the engine alone (examples/bare_pingora.rs)
    local variant=$1 dir ws=true
    dir="$ZK_TMP/$variant"
    rm -rf "$dir" && mkdir -p "$dir"
    [[ "$variant" == pingora-nows ]] && ws=false
    PROXY_PORT="$(zk_free_port)"
    PROXY_LOG="$dir/bare.log"
    zk_spawn "$PROXY_LOG" "$BARE" "127.0.0.1:$PROXY_PORT" "127.0.0.1:$BACKEND_PORT" 1 "$ws"
    PROXY_PID=$ZK_LAST_PID
    zk_wait_port "$PROXY_PORT" 10 "$PROXY_PID" "$PROXY_LOG" || zk_die "$variant did not start"
}

start_nginx_proxy() {
    local dir="$ZK_TMP/nginx-proxy"
    rm -rf "$dir" && mkdir -p "$dir"
    PROXY_PORT="$(zk_free_port)"
    # keepalive_requests is raised on both sides because zkgate and HAProxy put no per-connection
    # request cap on keepalive; nginx's default of 1000 would make it reconnect more often.
    {
        zk_nginx_preamble "$dir"
        cat <<EOF
    keepalive_requests 1000000;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    zk_run_nginx "$dir" "$PROXY_PORT" "nginx proxy"
    PROXY_PID=$ZK_LAST_PID
    PROXY_LOG="$dir/error.log"
}

start_haproxy() {
    local dir="$ZK_TMP/haproxy"
    rm -rf "$dir" && mkdir -p "$dir"
    PROXY_PORT="$(zk_free_port)"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend web
    bind 127.0.0.1:$PROXY_PORT
    default_backend backend

backend backend
    server b1 127.0.0.1:$BACKEND_PORT
EOF
    "$HAPROXY" -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 \
        || { cat "$dir/check.log" >&2; zk_die "haproxy config rejected"; }
    PROXY_LOG="$dir/haproxy.log"
    zk_spawn "$PROXY_LOG" "$HAPROXY" -db -f "$dir/haproxy.cfg"
    PROXY_PID=$ZK_LAST_PID
    zk_wait_port "$PROXY_PORT" 10 "$PROXY_PID" "$PROXY_LOG" || zk_die "haproxy did not start"
}

# ---------------------------------------------------------------------------------------------
# check_wrk FILE LABEL: record a failure if the report shows errors or no throughput.
check_wrk() {
    local file=$1 label=$2 non2xx sock
    read -r non2xx sock < <(wrk_errors "$file")
    if ((non2xx > 0 || sock > 0)); then
        zk_log "FAIL $label: $non2xx non-2xx/3xx responses, $sock socket errors"
        grep -E 'Socket errors|Non-2xx' "$file" >&2 || true
        FAILED=1
        echo "$label: non2xx=$non2xx socket_errors=$sock" >>"$RES/failures"
    fi
    if [[ -z "$(wrk_rps "$file")" ]]; then
        zk_log "FAIL $label: wrk printed no Requests/sec"
        cat "$file" >&2
        FAILED=1
        echo "$label: no result" >>"$RES/failures"
    fi
}

# bench NAME ROUND: warm up, then load the running proxy on PROXY_PORT and record the figures.
bench() {
    local name=$1 round=$2 url="http://127.0.0.1:$PROXY_PORT/" out body
    body="$(zk_http_body "$url")" || true
    [[ "$body" == "$ZK_BACKEND_BODY" ]] || {
        zk_log "FAIL $name: GET $url answered '$body'"
        FAILED=1
        echo "$name round $round: bad body" >>"$RES/failures"
    }
    out="$RES/$name.warmup.$round.txt"
    timeout 120 wrk "${WARMUP_ARGS[@]}" "$url" >"$out" 2>&1 || zk_log "wrk warm-up for $name exited $?"
    check_wrk "$out" "$name warm-up round $round"
    out="$RES/$name.$round.txt"
    timeout 600 wrk "${WRK_ARGS[@]}" "$url" >"$out" 2>&1 || zk_log "wrk for $name exited $?"
    check_wrk "$out" "$name round $round"
    local rps p99
    rps="$(wrk_rps "$out")"
    p99="$(wrk_p99_ms "$out")"
    [[ -n "$rps" ]] && echo "$rps" >>"$RES/$name.rps"
    [[ -n "$p99" ]] && echo "$p99" >>"$RES/$name.p99"
    zk_log "$name round $round: ${rps:-?} req/s, p99 ${p99:-?} ms"
}

# stop_proxy NAME: stop the proxy and show any warnings/errors it logged.
stop_proxy() {
    local name=$1 round=$2 n
    zk_stop "$PROXY_PID" 15
    case "$name" in
        zkgate*) n="$(grep -cE ' (WARN|ERROR) ' "$PROXY_LOG" || true)" ;;
        *) n="$(grep -ciE 'warn|error|alert|emerg|crit' "$PROXY_LOG" || true)" ;;
    esac
    if ((n > 0)); then
        # Group the lines by message, with timestamps and numbers (ports, counts) blanked out.
        zk_log "$name logged $n warning/error lines:"
        grep -iE 'warn|error|alert|emerg|crit' "$PROXY_LOG" \
            | sed -E 's/^\[[0-9T:.Z-]+ /[/; s/^[0-9\/]+ [0-9:]+ //; s/[0-9]+/N/g' | cut -c1-200 \
            | sort | uniq -c | sort -rn | head -n 5 >&2 || true
        echo "$name round $round: $n warning/error log lines (log: ${PROXY_LOG#"$ZK_TMP"/})" >>"$RES/log-warnings"
    fi
}

PROXIES=(zkgate zkgate-nows zkgate-features pingora pingora-nows nginx haproxy)

zk_log "wrk ${WRK_ARGS[*]} (warm-up ${WARMUP}), $ROUNDS round(s), backend nginx on :$BACKEND_PORT"
for ((round = 1; round <= ROUNDS; round++)); do
    for name in "${PROXIES[@]}"; do
        case "$name" in
            zkgate | zkgate-nows | zkgate-features)
                start_zkgate "$name"
                sleep 1
                idle="$(zk_rss_mb "$PROXY_PID")"
                echo "$idle" >>"$RES/$name.rss_idle"
                bench "$name" "$round"
                loaded="$(zk_rss_mb "$PROXY_PID")"
                echo "$loaded" >>"$RES/$name.rss_loaded"
                zk_log "$name round $round: RSS idle ${idle} MB, after load ${loaded} MB"
                ;;
            pingora | pingora-nows) start_bare "$name" && bench "$name" "$round" ;;
            nginx) start_nginx_proxy && bench "$name" "$round" ;;
            haproxy) start_haproxy && bench "$name" "$round" ;;
        esac
        stop_proxy "$name" "$round"
    done
done

# ---------------------------------------------------------------------------------------------
# Report.

med() { if [[ -s "$1" ]]; then zk_median $(cat "$1"); else echo n/a; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }'; }

label() {
    case "$1" in
        zkgate) echo "zkgate (threads: 1, work_stealing: true)" ;;
        zkgate-nows) echo "zkgate (threads: 1, work_stealing: false: default)" ;;
        zkgate-features) echo "zkgate + health/outlier/breaker/retry/rate limit" ;;
        pingora) echo "bare Pingora (threads: 1)" ;;
        pingora-nows) echo "bare Pingora (threads: 1, no work stealing)" ;;
        nginx) echo "nginx (1 worker, keepalive 256)" ;;
        haproxy) echo "haproxy (nbthread 1, http-reuse always)" ;;
    esac
}

nginx_rps="$(med "$RES/nginx.rps")"
nginx_p99="$(med "$RES/nginx.p99")"

echo
echo "wrk ${WRK_ARGS[*]} http://127.0.0.1:PORT/  -- median of $ROUNDS round(s), $(nproc) CPUs, nothing pinned"
echo "backend: nginx, 1 worker, 19-byte body, keepalive"
printf '%-44s %12s %10s %14s %14s\n' proxy "requests/s" "p99 (ms)" "req/s / nginx" "p99 / nginx"
printf '%-44s %12s %10s %14s %14s\n' "$(printf '%.0s-' {1..44})" "------------" "----------" "--------------" "--------------"
for name in "${PROXIES[@]}"; do
    rps="$(med "$RES/$name.rps")"
    p99="$(med "$RES/$name.p99")"
    printf '%-44s %12s %10s %14s %14s\n' "$(label "$name")" "$rps" "$p99" \
        "$(ratio "$rps" "$nginx_rps")" "$(ratio "$p99" "$nginx_p99")"
done
echo
echo "zkgate resident memory (VmRSS, MB, median):"
for name in zkgate zkgate-nows zkgate-features; do
    printf '  %-44s idle after start-up: %6s   after load: %6s\n' "$(label "$name")" \
        "$(med "$RES/$name.rss_idle")" "$(med "$RES/$name.rss_loaded")"
done
if [[ -s "$RES/log-warnings" ]]; then
    echo
    echo "log warnings/errors (KEEP_TMP=1 keeps the logs):"
    sed 's/^/  /' "$RES/log-warnings"
fi
if [[ "$FAILED" != 0 ]]; then
    echo
    echo "FAILED:"
    sed 's/^/  /' "$RES/failures"
    exit 1
fi
