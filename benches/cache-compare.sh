#!/usr/bin/env bash
# Cache hits through zkgate's `cache` plugin against an nginx `proxy_cache` hit and a Varnish hit
# of the same objects (200 bytes of JSON and 20 KiB), one worker or thread pool each, in one run.
#
#   benches/cache-compare.sh                                   # 3 rounds of 10 s per figure
#   DURATION=5s ROUNDS=1 benches/cache-compare.sh              # quick look
#   ZKGATE_BIN=target/release/zkgate benches/cache-compare.sh  # skip cargo build
#   ROUNDS=0 benches/cache-compare.sh                          # zkgate's instruction counts only
#
# Environment: DURATION (default 10s), ROUNDS (default 3; 0 runs no wrk round), CONNECTIONS (wrk
# -c, default 64), PROXIES (default "zkgate nginx varnish"), MISSES (default 1; 0 skips the miss
# runs), INSTR_REQUESTS (default 20000; 0 skips the count), ZKGATE_BIN, KEEP_TMP=1.
#
# Every proxy runs pinned to CPU 1 and wrk to CPU 0 (`taskset`), since Varnish has no
# single-thread mode: the figure is what one CPU of each cache serves. A warm-up pass fills each
# cache first, and each run checks that the origin (an nginx that logs every request) saw no
# request during the measured run, so every counted answer was a hit. Exits non-zero on errors.
#
# CPU per request: user+sys of the proxy (every process of it: nginx's master and worker,
# Varnish's manager and child; every thread) from /proc/<pid>/stat over the measured run,
# divided by the requests wrk completed. Misses (zkgate only; MISSES=0 skips them): each request
# carries a query value of its own (`?miss=<round>-<n>`), so each is a miss that goes to the
# origin and is stored, the whole cost of a miss; the run checks that the origin saw at least
# as many requests as wrk counted.
#
# Instructions per request, a figure machine noise does not move: zkgate under valgrind's
# callgrind (all threads) over INSTR_REQUESTS hits of each object (h2load --h1 -c 16, after a
# warm-up that fills the cache), and as many misses of the small one, each stored (one
# connection walking a list of targets of their own, since h2load starts every connection at
# the top of its list). The origin's log is checked as for the wrk runs.
set -euo pipefail

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
PROXIES=${PROXIES:-zkgate nginx varnish}
MISSES=${MISSES:-1}
INSTR_REQUESTS=${INSTR_REQUESTS:-20000}
[[ "$ROUNDS" =~ ^[0-9]+$ ]] || zk_die "ROUNDS must be a non-negative integer"
[[ "$INSTR_REQUESTS" =~ ^[0-9]+$ ]] || zk_die "INSTR_REQUESTS must be a non-negative integer"

zk_init zkgate-cache-compare
# The origin nginx's worker and Varnish's unprivileged user read files under it (mktemp's 0700).
chmod 755 "$ZK_TMP"
zk_ensure_cmd nginx nginx-light
zk_ensure_cmd wrk wrk
zk_ensure_cmd taskset util-linux
if [[ " $PROXIES " == *" varnish "* ]]; then zk_ensure_cmd varnishd varnish; fi
if [[ " $PROXIES " == *" zkgate "* ]]; then ZKGATE="$(zk_zkgate_bin)" || exit 1; fi
if [[ " $PROXIES " == *" zkgate "* ]] && ((INSTR_REQUESTS > 0)); then
    zk_ensure_cmd valgrind valgrind
    zk_ensure_cmd h2load nghttp2-client
fi

RES="$ZK_TMP/results"
mkdir -p "$RES"
FAILED=0
PROXY_CPU=1
WRK_CPU=0
if (($(nproc) < 2)); then PROXY_CPU=0; fi

fail() {
    zk_log "FAIL $*"
    echo "$*" >>"$RES/failures"
    FAILED=1
}

# The origin: nginx serving two fixed objects with an access log, so hits can be proven.
ORIGIN_PORT="$(zk_free_port)"
ORIGIN="$ZK_TMP/origin"
mkdir -p "$ORIGIN/www"
python3 - "$ORIGIN/www" <<'EOF'
import json, sys
d = sys.argv[1]
small = json.dumps({"resourcePoolId": "7b9e3c3e-0000-4000-8000-000000000001", "name": "pool-a",
                    "oCloudSiteId": "site-1", "description": "x" * 60, "extensions": {}})
small = (small + " " * 200)[:200]
open(f"{d}/small", "w").write(small)
open(f"{d}/big", "w").write(("0123456789abcdef" * 1280)[:20480])
EOF
{
    zk_nginx_preamble "$ORIGIN"
    cat <<EOF
    keepalive_requests 1000000;
    log_format plain '\$request';
    server {
        listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
        access_log $ORIGIN/access.log plain;
        default_type application/json;
        root $ORIGIN/www;
    }
}
EOF
} >"$ORIGIN/nginx.conf"
zk_run_nginx "$ORIGIN" "$ORIGIN_PORT" "origin nginx"
origin_requests() { wc -l <"$ORIGIN/access.log" 2>/dev/null || echo 0; }

CLK_TCK="$(getconf CLK_TCK)"
# tree_ticks PID: user+sys clock ticks of PID and its descendants, all threads (a process's
# /proc/<pid>/stat sums its threads; utime and stime are fields 14 and 15, counted here after
# the ")" that closes the command name, which may hold spaces).
tree_ticks() {
    local pids=("$1") i=0 total=0 p fields
    while ((i < ${#pids[@]})); do
        for p in $(pgrep -P "${pids[i]}" || true); do pids+=("$p"); done
        i=$((i + 1))
    done
    for p in "${pids[@]}"; do
        fields="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
        fields="${fields##*) }"
        # shellcheck disable=SC2086
        set -- $fields
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}
wrk_requests() { awk '/ requests in / { print $1 }' "$1"; }
# cpu_us_per_req TICKS REQUESTS
cpu_us_per_req() {
    awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f\n", t / hz * 1e6 / n }'
}

# Every request of a miss run has a target of its own: `<path>?miss=<run>-<n>`.
cat >"$ZK_TMP/miss.lua" <<'LUA'
local run, n = "0", 0
function init(args) run = args[1] or "0" end
function request()
    n = n + 1
    return wrk.format("GET", wrk.path .. "?miss=" .. run .. "-" .. n)
end
LUA

# Each start_* sets PROXY_PORT, PROXY_PID and PROXY_LOG.
start_zkgate() {
    local dir="$ZK_TMP/zkgate" admin
    rm -rf "$dir" && mkdir -p "$dir"
    PROXY_PORT="$(zk_free_port)"
    admin="$(zk_free_port)"
    cat >"$dir/zkgate.yaml" <<EOF
server: { threads: 1, work_stealing: false, grace_period: 1s, graceful_shutdown_timeout: 1s, upgrade_sock: $dir/upgrade.sock }
admin: { listen: "127.0.0.1:$admin" }
listeners:
  - { name: web, listen: "127.0.0.1:$PROXY_PORT" }
upstreams:
  - { name: origin, backends: ["127.0.0.1:$ORIGIN_PORT"] }
routes:
  - name: all
    match: { path_prefix: / }
    upstream: origin
    plugin:
      cache:
        memory: 256MiB
        override_origin: true
        rules: [{ path: "/{object}", ttl: 10m }]
EOF
    "$ZKGATE" check -c "$dir/zkgate.yaml" >"$dir/check.log" 2>&1 \
        || { cat "$dir/check.log" >&2; zk_die "zkgate check rejected its cache config"; }
    zk_run_zkgate zkgate "$dir/zkgate.yaml" "$admin" taskset -c "$PROXY_CPU" "${WRAP[@]}"
}
WRAP=()

start_nginx() {
    local dir="$ZK_TMP/nginx"
    rm -rf "$dir" && mkdir -p "$dir"
    PROXY_PORT="$(zk_free_port)"
    {
        zk_nginx_preamble "$dir"
        cat <<EOF
    keepalive_requests 1000000;
    proxy_cache_path $dir/cache levels=1:2 keys_zone=z:10m max_size=256m inactive=60m use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache z;
            proxy_cache_key \$scheme\$host\$request_uri;
            proxy_cache_valid 200 10m;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
            proxy_cache_lock on;
            add_header X-Cache \$upstream_cache_status;
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    local nginx
    nginx="$(zk_nginx_bin)" || zk_die "nginx not found"
    "$nginx" -t -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" >/dev/null 2>&1 \
        || { cat "$dir/error.log" >&2; zk_die "nginx cache config rejected"; }
    zk_spawn "$dir/stderr.log" taskset -c "$PROXY_CPU" "$nginx" -e "$dir/error.log" -p "$dir" \
        -c "$dir/nginx.conf" -g 'daemon off;'
    PROXY_PID=$ZK_LAST_PID
    PROXY_LOG="$dir/error.log"
    zk_wait_port "$PROXY_PORT" 10 "$PROXY_PID" "$PROXY_LOG" || zk_die "nginx cache did not start"
}

start_varnish() {
    local dir="$ZK_TMP/varnish" varnishd
    rm -rf "$dir" && mkdir -p "$dir"
    PROXY_PORT="$(zk_free_port)"
    cat >"$dir/bench.vcl" <<EOF
vcl 4.1;
backend origin { .host = "127.0.0.1"; .port = "$ORIGIN_PORT"; }
sub vcl_recv { return (hash); }
sub vcl_backend_response { set beresp.ttl = 10m; unset beresp.http.Set-Cookie; }
EOF
    varnishd="$(command -v varnishd || echo /usr/sbin/varnishd)"
    PROXY_LOG="$dir/varnish.log"
    zk_spawn "$PROXY_LOG" taskset -c "$PROXY_CPU" "$varnishd" -F -a "127.0.0.1:$PROXY_PORT" \
        -n "$dir/n" -s malloc,256m -p thread_pools=1 -f "$dir/bench.vcl"
    PROXY_PID=$ZK_LAST_PID
    zk_wait_port "$PROXY_PORT" 20 "$PROXY_PID" "$PROXY_LOG" || zk_die "varnish did not start"
}

# measure PROXY OBJECT ROUND: warm, then one pinned wrk run; records req/s and p99.
measure() {
    local proxy=$1 object=$2 round=$3 out before after non2xx sock rps p99 label ticks cpu
    label="$proxy-$object"
    out="$RES/$label-$round.wrk"
    for _ in 1 2 3; do zk_http_body "http://127.0.0.1:$PROXY_PORT/$object" >/dev/null; done
    before="$(origin_requests)"
    ticks="$(tree_ticks "$PROXY_PID")"
    timeout 300 taskset -c "$WRK_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency \
        "http://127.0.0.1:$PROXY_PORT/$object" >"$out" 2>&1 || zk_log "wrk for $label exited $?"
    ticks=$(($(tree_ticks "$PROXY_PID") - ticks))
    after="$(origin_requests)"
    read -r non2xx sock < <(wrk_errors "$out")
    ((non2xx == 0 && sock == 0)) || fail "$label: $non2xx non-2xx/3xx, $sock socket errors"
    ((after == before)) || fail "$label: the origin saw $((after - before)) requests during the run (not all hits)"
    rps="$(wrk_rps "$out")"
    p99="$(wrk_p99_ms "$out")"
    [[ -n "$rps" ]] || { fail "$label: no result"; return; }
    cpu="$(cpu_us_per_req "$ticks" "$(wrk_requests "$out")")"
    echo "$rps" >>"$RES/$label.rps"
    echo "$p99" >>"$RES/$label.p99"
    echo "$cpu" >>"$RES/$label.cpu"
    zk_log "$label round $round: $rps req/s, p99 $p99 ms, $cpu us CPU/request"
}

# measure_miss PROXY OBJECT ROUND: one pinned wrk run where every request is a miss.
measure_miss() {
    local proxy=$1 object=$2 round=$3 out before after non2xx sock rps p99 label ticks cpu n
    label="$proxy-$object-miss"
    out="$RES/$label-$round.wrk"
    before="$(origin_requests)"
    ticks="$(tree_ticks "$PROXY_PID")"
    timeout 300 taskset -c "$WRK_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency \
        -s "$ZK_TMP/miss.lua" "http://127.0.0.1:$PROXY_PORT/$object" -- "$round" >"$out" 2>&1 \
        || zk_log "wrk for $label exited $?"
    ticks=$(($(tree_ticks "$PROXY_PID") - ticks))
    after="$(origin_requests)"
    read -r non2xx sock < <(wrk_errors "$out")
    ((non2xx == 0 && sock == 0)) || fail "$label: $non2xx non-2xx/3xx, $sock socket errors"
    n="$(wrk_requests "$out")"
    [[ -n "$n" ]] || { fail "$label: no result"; return; }
    ((after - before >= n)) || fail "$label: the origin saw $((after - before)) requests for $n answers (some were hits)"
    rps="$(wrk_rps "$out")"
    p99="$(wrk_p99_ms "$out")"
    cpu="$(cpu_us_per_req "$ticks" "$n")"
    echo "$rps" >>"$RES/$label.rps"
    echo "$p99" >>"$RES/$label.p99"
    echo "$cpu" >>"$RES/$label.cpu"
    zk_log "$label round $round: $rps req/s, p99 $p99 ms, $cpu us CPU/request"
}

# callgrind_total PHASE H2LOAD_ARGS...: zkgate's instructions per request over INSTR_REQUESTS
# requests into RES/zkgate-PHASE.instr (every request answered 2xx).
callgrind_total() {
    local phase=$1 ok instr
    shift
    read -r ok instr < <(zk_callgrind_count "$PROXY_PID" "$ZK_TMP/callgrind/zkgate" "$INSTR_REQUESTS" \
        "$ZK_TMP/callgrind/$phase.h2load" "$@")
    [[ "$ok" == "$INSTR_REQUESTS" ]] || fail "zkgate $phase under callgrind: $ok of $INSTR_REQUESTS answered 2xx"
    [[ -n "$instr" ]] || { fail "zkgate $phase: no callgrind totals"; return; }
    echo "$instr" >"$RES/zkgate-$phase.instr"
    zk_log "zkgate $phase: $instr instructions per request"
}

# count_instructions: zkgate under callgrind, hits of each object, then misses of the small one.
count_instructions() {
    local object before url
    mkdir -p "$ZK_TMP/callgrind"
    WRAP=(valgrind --tool=callgrind --cache-sim=no "--callgrind-out-file=$ZK_TMP/callgrind/zkgate.%p")
    start_zkgate
    WRAP=()
    for object in small big; do
        url="http://127.0.0.1:$PROXY_PORT/$object"
        # The warm-up fills the entry and lets valgrind translate the hit path before the count.
        h2load --h1 -n 2000 -c 16 "$url" >"$ZK_TMP/callgrind/$object.warmup" 2>&1 || true
        before="$(origin_requests)"
        callgrind_total "hit-$object" -c 16 "$url"
        (($(origin_requests) == before)) || fail "zkgate hit-$object under callgrind: the origin saw requests"
    done
    if [[ "$MISSES" != 0 ]]; then
        seq 1 "$INSTR_REQUESTS" | sed "s|^|http://127.0.0.1:$PROXY_PORT/small?miss=instr-|" >"$ZK_TMP/callgrind/misses"
        before="$(origin_requests)"
        callgrind_total miss-small -c 1 -i "$ZK_TMP/callgrind/misses"
        (($(origin_requests) - before >= INSTR_REQUESTS)) || fail "zkgate miss-small under callgrind: some were hits"
    fi
    zk_stop "$PROXY_PID" 30
}
if [[ " $PROXIES " == *" zkgate "* ]] && ((INSTR_REQUESTS > 0)); then
    zk_log "instructions per request: callgrind, h2load --h1 -n $INSTR_REQUESTS"
    count_instructions
fi

for proxy in $PROXIES; do
    ((ROUNDS > 0)) || break
    "start_$proxy"
    for round in $(seq 1 "$ROUNDS"); do
        for object in small big; do measure "$proxy" "$object" "$round"; done
        if [[ "$proxy" == zkgate && "$MISSES" != 0 ]]; then
            for object in small big; do measure_miss "$proxy" "$object" "$round"; done
        fi
    done
    zk_stop "$PROXY_PID" 10
done

median_of() { # FILE
    [[ -s "$1" ]] || { echo n/a; return; }
    # shellcheck disable=SC2046
    zk_median $(cat "$1")
}

if compgen -G "$RES/zkgate-*.instr" >/dev/null; then
    printf '\nzkgate, instructions per request (callgrind, all threads, %s requests each)\n' "$INSTR_REQUESTS"
    for phase in hit-small hit-big miss-small; do
        [[ -s "$RES/zkgate-$phase.instr" ]] && printf '  %-12s %9s\n' "$phase" "$(cat "$RES/zkgate-$phase.instr")"
    done
fi
((ROUNDS > 0)) || exit "$FAILED"
printf '\nCache hits, one CPU per proxy, wrk -c%s -d%s, median of %s rounds\n' "$CONNECTIONS" "$DURATION" "$ROUNDS"
printf '%-8s %-7s %12s %10s %14s\n' proxy object 'req/s' 'p99 ms' 'CPU us/req'
for object in small big; do
    for proxy in $PROXIES; do
        printf '%-8s %-7s %12s %10s %14s\n' "$proxy" "$object" "$(median_of "$RES/$proxy-$object.rps")" \
            "$(median_of "$RES/$proxy-$object.p99")" "$(median_of "$RES/$proxy-$object.cpu")"
    done
done
if [[ " $PROXIES " == *" zkgate "* && "$MISSES" != 0 ]]; then
    printf '\nCache misses through zkgate (a query value of its own per request, stored)\n'
    printf '%-8s %-7s %12s %10s %14s\n' proxy object 'req/s' 'p99 ms' 'CPU us/req'
    for object in small big; do
        printf '%-8s %-7s %12s %10s %14s\n' zkgate "$object" "$(median_of "$RES/zkgate-$object-miss.rps")" \
            "$(median_of "$RES/zkgate-$object-miss.p99")" "$(median_of "$RES/zkgate-$object-miss.cpu")"
    done
fi
if [[ " $PROXIES " == *" zkgate "* ]]; then
    for peer in nginx varnish; do
        [[ " $PROXIES " == *" $peer "* ]] || continue
        for object in small big; do
            z="$(median_of "$RES/zkgate-$object.rps")"
            p="$(median_of "$RES/$peer-$object.rps")"
            awk -v z="$z" -v p="$p" -v peer="$peer" -v o="$object" \
                'BEGIN { if (p > 0) printf "zkgate/%s %s: %.2fx\n", peer, o, z / p }'
        done
    done
fi
exit "$FAILED"
