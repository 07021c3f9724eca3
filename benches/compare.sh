#!/usr/bin/env bash
# Compare zkgate with bare Pingora, nginx and HAProxy as reverse proxies in front of the same
# nginx backend: requests per second, p99, p99 at half the proxy's own saturation rate, CPU time
# per request, and instructions per request.
#
#   benches/compare.sh                          # 3 rounds of 10 s per proxy, then the counts
#   DURATION=5s ROUNDS=1 benches/compare.sh     # quick look
#   ROUNDS=0 PROXIES="zkgate pingora" benches/compare.sh   # instructions only, two proxies
#   THREADS=2 INSTR_REQUESTS=0 benches/compare.sh          # two threads/workers each
#   ZKGATE_BIN=target/release/zkgate BARE_BIN=... benches/compare.sh   # skip cargo build
#
# Environment: DURATION (wrk -d, default 10s), ROUNDS (default 3; 0 skips the wrk runs),
# WARMUP (default 2s), CONNECTIONS (wrk -c, default 64), THREADS (threads or workers of each
# proxy, default 1), PROXIES (default "zkgate zkgate-full zkgate-features pingora nginx haproxy":
# zkgate-full is zkgate with the HTTP/1 fast path off; also zkgate-ws and pingora-ws, with work
# stealing), HALF (1: runs at half of each proxy's saturation rate for its p99, paced by wrk
# and by h2load, default 1), INSTR_REQUESTS (requests counted under callgrind,
# default 20000; 0 skips), ZKGATE_BIN, BARE_BIN, KEEP_TMP=1 (keep configs and logs).
#
# The backend is one nginx worker answering a fixed 19-byte body. Nothing is pinned, so wrk, the
# proxy and the backend share the cores: compare the ratios, not the absolute numbers.
#
# CPU per request is the proxy's user and system time (every thread, and nginx's workers) over
# the measured run, from /proc, divided by the requests wrk completed: 1e6 / that is the
# requests one core of the proxy serves, whatever the machine's load. Instructions per request
# are counted by valgrind's callgrind over INSTR_REQUESTS keep-alive requests (h2load --h1, 16
# connections) after a warm-up, the counters zeroed in between: a figure no noise moves, for
# A/B tests of a change. Exits non-zero if any run saw non-2xx/3xx responses or socket errors.
set -euo pipefail

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
HALF=${HALF:-1}
INSTR_REQUESTS=${INSTR_REQUESTS:-20000}
read -r -a PROXIES <<<"${PROXIES:-zkgate zkgate-full zkgate-features pingora nginx haproxy}"
WRK_ARGS=(-t1 "-c$CONNECTIONS" "-d$DURATION" --latency)
WARMUP_ARGS=(-t1 "-c$CONNECTIONS" "-d$WARMUP")
INSTR_CONNECTIONS=16

[[ "$ROUNDS" =~ ^[0-9]+$ ]] || zk_die "ROUNDS must be a whole number"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || zk_die "THREADS must be a positive integer"
[[ "$INSTR_REQUESTS" =~ ^[0-9]+$ ]] || zk_die "INSTR_REQUESTS must be a whole number"
for name in "${PROXIES[@]}"; do
    case "$name" in
        zkgate | zkgate-ws | zkgate-features | zkgate-full | pingora | pingora-ws | nginx | haproxy) ;;
        *) zk_die "unknown proxy '$name' in PROXIES" ;;
    esac
done

zk_init zkgate-compare

zk_ensure_cmd nginx nginx-light
zk_ensure_cmd haproxy haproxy
zk_ensure_cmd wrk wrk
if ((INSTR_REQUESTS > 0)); then
    zk_ensure_cmd valgrind valgrind
fi
if ((INSTR_REQUESTS > 0)) || [[ "$HALF" == 1 ]]; then
    zk_ensure_cmd h2load nghttp2-client
fi
command -v python3 >/dev/null 2>&1 || zk_die "python3 is needed"
HAPROXY="$(zk_haproxy_bin)"
ZKGATE="$(zk_zkgate_bin)" || exit 1
BARE="${BARE_BIN:-$(zk_target_dir)/release/examples/bare_pingora}"
if [[ -z "${BARE_BIN:-}" && " ${PROXIES[*]} " == *" pingora "* ]]; then
    (cd "$ZK_REPO_ROOT" && cargo build --release --example bare_pingora >&2) || zk_die "cannot build examples/bare_pingora"
fi
CLK_TCK="$(getconf CLK_TCK)"

RES="$ZK_TMP/results"
mkdir -p "$RES"
FAILED=0

BACKEND_PORT="$(zk_free_port)"
zk_start_nginx_backend "$BACKEND_PORT"

# ---------------------------------------------------------------------------------------------
# Proxies. Each start_* sets PROXY_PID, PROXY_PORT and PROXY_LOG. WRAP, when set, is the command
# a proxy runs under (valgrind for the instruction counts); it then runs as one process.
WRAP=()

start_zkgate() { # VARIANT: zkgate (the default config), zkgate-ws (work stealing), zkgate-full
    # (http1_fast_path: false) or zkgate-features
    local variant=$1 dir admin ws=false features=0
    dir="$ZK_TMP/$variant"
    rm -rf "$dir" && mkdir -p "$dir"
    PROXY_PORT="$(zk_free_port)"
    admin="$(zk_free_port)"
    [[ "$variant" == zkgate-ws ]] && ws=true
    [[ "$variant" == zkgate-features ]] && features=1
    [[ "$variant" == zkgate-full ]] && features=full
    zk_gateway_config "$dir/zkgate.yaml" "$dir" "$admin" "$PROXY_PORT" "$BACKEND_PORT" "$THREADS" "$ws" "$features"
    zk_run_zkgate "$variant" "$dir/zkgate.yaml" "$admin" "${WRAP[@]}"
}

start_bare() { # VARIANT: pingora or pingora-ws: the engine alone (examples/bare_pingora.rs)
    local variant=$1 dir ws=false
    dir="$ZK_TMP/$variant"
    rm -rf "$dir" && mkdir -p "$dir"
    [[ "$variant" == pingora-ws ]] && ws=true
    PROXY_PORT="$(zk_free_port)"
    PROXY_LOG="$dir/bare.log"
    zk_spawn "$PROXY_LOG" "${WRAP[@]}" "$BARE" "127.0.0.1:$PROXY_PORT" "127.0.0.1:$BACKEND_PORT" "$THREADS" "$ws"
    PROXY_PID=$ZK_LAST_PID
    zk_wait_port "$PROXY_PORT" 60 "$PROXY_PID" "$PROXY_LOG" || zk_die "$variant did not start"
}

start_nginx_proxy() {
    local dir="$ZK_TMP/nginx-proxy" nginx
    rm -rf "$dir" && mkdir -p "$dir"
    PROXY_PORT="$(zk_free_port)"
    # keepalive_requests is raised on both sides because zkgate and HAProxy put no per-connection
    # request cap on keepalive; nginx's default of 1000 would make it reconnect more often.
    {
        zk_nginx_preamble "$dir" | sed "s/^worker_processes 1;/worker_processes $THREADS;/"
        cat <<EOF2
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
EOF2
    } >"$dir/nginx.conf"
    PROXY_LOG="$dir/error.log"
    if ((${#WRAP[@]} == 0)); then
        zk_run_nginx "$dir" "$PROXY_PORT" "nginx proxy"
    else
        # Under valgrind the one worker is the process itself (no master).
        nginx="$(zk_nginx_bin)"
        zk_spawn "$dir/stderr.log" "${WRAP[@]}" "$nginx" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" \
            -g 'daemon off; master_process off;'
        zk_wait_port "$PROXY_PORT" 60 "$ZK_LAST_PID" "$dir/stderr.log" || zk_die "nginx proxy did not start"
    fi
    PROXY_PID=$ZK_LAST_PID
}

start_haproxy() {
    local dir="$ZK_TMP/haproxy"
    rm -rf "$dir" && mkdir -p "$dir"
    PROXY_PORT="$(zk_free_port)"
    cat >"$dir/haproxy.cfg" <<EOF2
global
    nbthread $THREADS
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
EOF2
    "$HAPROXY" -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 \
        || { cat "$dir/check.log" >&2; zk_die "haproxy config rejected"; }
    PROXY_LOG="$dir/haproxy.log"
    zk_spawn "$PROXY_LOG" "${WRAP[@]}" "$HAPROXY" -db -f "$dir/haproxy.cfg"
    PROXY_PID=$ZK_LAST_PID
    zk_wait_port "$PROXY_PORT" 60 "$PROXY_PID" "$PROXY_LOG" || zk_die "haproxy did not start"
}

start_proxy() {
    case "$1" in
        zkgate | zkgate-ws | zkgate-features | zkgate-full) start_zkgate "$1" ;;
        pingora | pingora-ws) start_bare "$1" ;;
        nginx) start_nginx_proxy ;;
        haproxy) start_haproxy ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# CPU time from /proc: a process and its children (nginx's workers), every thread.

# proc_tree PID: PID and its children.
proc_tree() {
    local pid=$1
    echo "$pid"
    cat /proc/"$pid"/task/*/children 2>/dev/null | tr ' ' '\n' | sed '/^$/d' || true
}

# cpu_ticks PID: "user system" clock ticks of PID and its children, dead threads included.
cpu_ticks() {
    local p u=0 s=0 pu ps
    for p in $(proc_tree "$1"); do
        # Fields after the command name, which may hold spaces: utime is the 12th, stime the 13th.
        read -r pu ps < <(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12, $13 }') || continue
        u=$((u + ${pu:-0}))
        s=$((s + ${ps:-0}))
    done
    echo "$u $s"
}

# thread_ticks PID: one line per thread of PID and its children, "pid/tid name ticks".
thread_ticks() {
    local p t
    for p in $(proc_tree "$1"); do
        for t in /proc/"$p"/task/*; do
            [[ -r "$t/stat" ]] || continue
            awk -v id="${t#/proc/}" '{
                    name = $0; sub(/^[^(]*\(/, "", name); sub(/\).*$/, "", name); gsub(/ /, "_", name)
                    rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
                    print id, name, f[12] + f[13] }' "$t/stat"
        done
    done
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

# wrk's delay() paces each connection: all of them together send about RATE requests a second.
cat >"$ZK_TMP/pace.lua" <<'EOF2'
local pause = tonumber(os.getenv("ZK_PAUSE_MS") or "0")
function delay() return pause end
EOF2
pause_ms() { awk -v c="$CONNECTIONS" -v r="$1" 'BEGIN { d = c * 1000 / r; printf "%d\n", (d < 1 ? 1 : d) }'; }

# measure NAME ROUND OUT [PAUSE_MS]: one wrk run against the running proxy, its CPU time taken
# from /proc before and after; records req/s, p99 and CPU per request under RES/NAME[-half].
measure() {
    local name=$1 round=$2 out=$3 pause=${4:-} tag=$1 args=("${WRK_ARGS[@]}") b_u b_s a_u a_s total
    if [[ -n "$pause" ]]; then
        tag="$name-half"
        args+=(-s "$ZK_TMP/pace.lua")
    fi
    thread_ticks "$PROXY_PID" >"$out.threads.before"
    read -r b_u b_s < <(cpu_ticks "$PROXY_PID")
    ZK_PAUSE_MS="${pause:-0}" timeout 600 wrk "${args[@]}" "http://127.0.0.1:$PROXY_PORT/" >"$out" 2>&1 \
        || zk_log "wrk for $tag exited $?"
    read -r a_u a_s < <(cpu_ticks "$PROXY_PID")
    thread_ticks "$PROXY_PID" >"$out.threads.after"
    check_wrk "$out" "$tag round $round"
    local rps p99
    rps="$(wrk_rps "$out")"
    p99="$(wrk_p99_ms "$out")"
    total="$(awk '/requests in/ { print $1; exit }' "$out")"
    [[ -n "$rps" ]] && echo "$rps" >>"$RES/$tag.rps"
    [[ -n "$p99" ]] && echo "$p99" >>"$RES/$tag.p99"
    if [[ -n "$total" && "$total" -gt 0 ]]; then
        awk -v u=$((a_u - b_u)) -v s=$((a_s - b_s)) -v n="$total" -v hz="$CLK_TCK" \
            'BEGIN { printf "%.2f %.2f\n", u / hz * 1e6 / n, s / hz * 1e6 / n }' >>"$RES/$tag.cpu"
    fi
    zk_log "$tag round $round: ${rps:-?} req/s, p99 ${p99:-?} ms, CPU per request (user system µs): $(tail -n1 "$RES/$tag.cpu" 2>/dev/null)"
}

# measure_paced NAME ROUND RATE: the half-rate p99 again, each of the CONNECTIONS connections
# sending RATE / CONNECTIONS requests a second on h2load's timer (--rps), latencies from its
# per-request log. wrk's delay() counts whole milliseconds: the pause is rounded down (a rate
# above the one asked), and the connections whose answers came in the same millisecond send their
# next requests together, so its figure is the time to drain such bursts. h2load keeps each
# connection's own phase. Records p50, p99 and p99.9 (ms), the rate reached and CPU per request
# under RES/NAME-paced.
measure_paced() {
    local name=$1 round=$2 rate=$3 out="$RES/$1.paced.$2" per b_u b_s a_u a_s total
    per="$(awk -v r="$rate" -v c="$CONNECTIONS" 'BEGIN { printf "%.3f\n", r / c }')"
    read -r b_u b_s < <(cpu_ticks "$PROXY_PID")
    timeout 600 h2load --h1 -t1 "-c$CONNECTIONS" "--rps=$per" -D "$DURATION" --log-file="$out.log" \
        "http://127.0.0.1:$PROXY_PORT/" >"$out.txt" 2>&1 || zk_log "h2load for $name-paced exited $?"
    read -r a_u a_s < <(cpu_ticks "$PROXY_PID")
    total="$(wc -l <"$out.log" 2>/dev/null || echo 0)"
    if ((total == 0)) || ! grep -qE '^status codes: [0-9]+ 2xx' "$out.txt" || grep -qE '[1-9][0-9]* (failed|errored)' "$out.txt"; then
        zk_log "FAIL $name-paced round $round: h2load saw failures"
        cat "$out.txt" >&2
        FAILED=1
        echo "$name-paced round $round: failures" >>"$RES/failures"
    fi
    ((total > 0)) || return 0
    sort -n -k3,3 "$out.log" | awk -v n="$total" -v d="${DURATION%s}" '
        function at(p) { i = int(n * p); if (i < n * p) i++; return v[i > 0 ? i : 1] / 1000 }
        { v[NR] = $3 }
        END { printf "%.3f %.3f %.3f %.0f\n", at(0.5), at(0.99), at(0.999), n / d }' >>"$RES/$name-paced.lat"
    awk -v u=$((a_u - b_u)) -v s=$((a_s - b_s)) -v n="$total" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.2f %.2f\n", u / hz * 1e6 / n, s / hz * 1e6 / n }' >>"$RES/$name-paced.cpu"
    zk_log "$name-paced round $round: p50 p99 p99.9 (ms) and req/s: $(tail -n1 "$RES/$name-paced.lat"); CPU per request: $(tail -n1 "$RES/$name-paced.cpu")"
}

# bench NAME ROUND: warm up, load the running proxy on PROXY_PORT, then (HALF=1) load it again
# at half the rate it just reached.
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
    measure "$name" "$round" "$out"
    # The busiest threads of the run, for the report (pidstat -t's view, from /proc).
    join <(sort "$out.threads.before") <(sort "$out.threads.after") 2>/dev/null \
        | awk '{ d = $5 - $3; if (d > 0) print $2, d }' \
        | awk '{ t[$1] += $2 } END { for (n in t) print t[n], n }' | sort -rn >"$RES/$name.threads"
    if [[ "$HALF" == 1 ]]; then
        local rps
        rps="$(wrk_rps "$out")"
        [[ -n "$rps" ]] && measure "$name" "$round" "$RES/$name.half.$round.txt" "$(pause_ms "$(awk -v r="$rps" 'BEGIN { print r / 2 }')")"
        [[ -n "$rps" ]] && measure_paced "$name" "$round" "$(awk -v r="$rps" 'BEGIN { print r / 2 }')"
    fi
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

# count_instructions NAME: the proxy under callgrind; prints instructions per request into
# RES/NAME.instr (h2load's counts checked: every request answered 2xx).
count_instructions() {
    local name=$1 dir="$ZK_TMP/callgrind" url ok instr
    mkdir -p "$dir"
    WRAP=(valgrind --tool=callgrind --cache-sim=no "--callgrind-out-file=$dir/$name.%p")
    start_proxy "$name"
    WRAP=()
    url="http://127.0.0.1:$PROXY_PORT/"
    # The warm-up also lets valgrind translate the request path's code before the count.
    h2load --h1 -n 2000 -c "$INSTR_CONNECTIONS" "$url" >"$dir/$name.h2load.warmup" 2>&1 || true
    read -r ok instr < <(zk_callgrind_count "$PROXY_PID" "$dir/$name" "$INSTR_REQUESTS" \
        "$dir/$name.h2load" -c "$INSTR_CONNECTIONS" "$url")
    if [[ "$ok" != "$INSTR_REQUESTS" ]]; then
        zk_log "FAIL $name under callgrind: $ok of $INSTR_REQUESTS requests answered 2xx"
        FAILED=1
        echo "$name callgrind: $ok of $INSTR_REQUESTS answered 2xx" >>"$RES/failures"
    fi
    if [[ -n "$instr" ]]; then
        echo "$instr" >"$RES/$name.instr"
        zk_log "$name: $instr instructions per request ($INSTR_REQUESTS requests)"
    fi
    stop_proxy "$name" callgrind
}

if ((ROUNDS > 0)); then
    zk_log "wrk ${WRK_ARGS[*]} (warm-up ${WARMUP}), $ROUNDS round(s), $THREADS thread(s) per proxy, backend nginx on :$BACKEND_PORT"
fi
for ((round = 1; round <= ROUNDS; round++)); do
    for name in "${PROXIES[@]}"; do
        start_proxy "$name"
        if [[ "$name" == zkgate* ]]; then
            sleep 1
            idle="$(zk_rss_mb "$PROXY_PID")"
            echo "$idle" >>"$RES/$name.rss_idle"
        fi
        bench "$name" "$round"
        if [[ "$name" == zkgate* ]]; then
            loaded="$(zk_rss_mb "$PROXY_PID")"
            echo "$loaded" >>"$RES/$name.rss_loaded"
            zk_log "$name round $round: RSS idle ${idle} MB, after load ${loaded} MB"
        fi
        stop_proxy "$name" "$round"
    done
done
if ((INSTR_REQUESTS > 0)); then
    zk_log "instructions per request: callgrind, h2load --h1 -n $INSTR_REQUESTS -c $INSTR_CONNECTIONS"
    for name in "${PROXIES[@]}"; do
        count_instructions "$name"
    done
fi

# ---------------------------------------------------------------------------------------------
# Report.

med() { if [[ -s "$1" ]]; then zk_median $(cat "$1"); else echo n/a; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }'; }
# cpu FILE COLUMN: the median of user (1), system (2) or their sum (3) per request.
cpu() {
    if [[ -s "$1" ]]; then
        zk_median $(awk -v c="$2" '{ print (c == 3 ? $1 + $2 : $c) }' "$1")
    else
        echo n/a
    fi
}
per_core() { awk -v c="$1" 'BEGIN { if (c == "n/a" || c + 0 == 0) print "n/a"; else printf "%.0f\n", 1e6 / c }'; }

label() {
    case "$1" in
        zkgate) echo "zkgate (default: no work stealing)" ;;
        zkgate-ws) echo "zkgate (work_stealing: true)" ;;
        zkgate-features) echo "zkgate + health/outlier/breaker/retry/limit" ;;
        zkgate-full) echo "zkgate, fast path off (full proxy)" ;;
        pingora) echo "bare Pingora (no work stealing)" ;;
        pingora-ws) echo "bare Pingora (work stealing)" ;;
        nginx) echo "nginx (keepalive 256)" ;;
        haproxy) echo "haproxy (http-reuse always)" ;;
    esac
}

nginx_rps="$(med "$RES/nginx.rps")"
nginx_core="$(per_core "$(cpu "$RES/nginx.cpu" 3)")"
bare_core="$(per_core "$(cpu "$RES/pingora.cpu" 3)")"

echo
if ((ROUNDS > 0)); then
    echo "wrk ${WRK_ARGS[*]} http://127.0.0.1:PORT/  -- median of $ROUNDS round(s), $(nproc) CPUs, nothing pinned"
    echo "each proxy: $THREADS thread(s) or worker(s); backend: nginx, 1 worker, 19-byte body, keepalive"
    echo "CPU: the proxy's user+system time per request (all threads); per core: 1e6 / that"
    printf '%-44s %9s %8s %9s %9s %9s %8s %8s %8s\n' proxy "req/s" "p99 ms" "half p99" "CPU µs" "usr/sys" "per core" "/ nginx" "/ bare"
    for name in "${PROXIES[@]}"; do
        c="$(cpu "$RES/$name.cpu" 3)"
        core="$(per_core "$c")"
        printf '%-44s %9s %8s %9s %9s %9s %8s %8s %8s\n' "$(label "$name")" \
            "$(med "$RES/$name.rps" | cut -d. -f1)" "$(med "$RES/$name.p99")" "$(med "$RES/$name-half.p99")" \
            "$c" "$(cpu "$RES/$name.cpu" 1 | cut -d. -f1)/$(cpu "$RES/$name.cpu" 2 | cut -d. -f1)" \
            "$core" "$(ratio "$core" "$nginx_core")" "$(ratio "$core" "$bare_core")"
    done
    echo "req/s / nginx's: $(for n in "${PROXIES[@]}"; do printf '%s %s  ' "$n" "$(ratio "$(med "$RES/$n.rps")" "$nginx_rps")"; done)"
    if [[ "$HALF" == 1 ]]; then
        echo "half p99: each proxy again with wrk's connections paced to half the req/s it reached (closed loop);"
        echo "  rates reached: $(for n in "${PROXIES[@]}"; do printf '%s %s  ' "$n" "$(med "$RES/$n-half.rps" | cut -d. -f1)"; done)"
        echo
        echo "at half of saturation, paced by h2load (--rps per connection, $CONNECTIONS connections; latency in ms):"
        printf '%-44s %9s %8s %8s %8s %9s\n' proxy "req/s" "p50" "p99" "p99.9" "CPU µs"
        for name in "${PROXIES[@]}"; do
            [[ -s "$RES/$name-paced.lat" ]] || continue
            printf '%-44s %9s %8s %8s %8s %9s\n' "$(label "$name")" \
                "$(zk_median $(awk '{ print $4 }' "$RES/$name-paced.lat"))" \
                "$(zk_median $(awk '{ print $1 }' "$RES/$name-paced.lat"))" \
                "$(zk_median $(awk '{ print $2 }' "$RES/$name-paced.lat"))" \
                "$(zk_median $(awk '{ print $3 }' "$RES/$name-paced.lat"))" \
                "$(cpu "$RES/$name-paced.cpu" 3)"
        done
    fi
    echo
    echo "busiest threads in the last round (CPU ticks of $CLK_TCK/s over the measured run):"
    for name in "${PROXIES[@]}"; do
        [[ -s "$RES/$name.threads" ]] && printf '  %-16s %s\n' "$name" "$(head -n 4 "$RES/$name.threads" | awk '{ printf "%s %s  ", $2, $1 }')"
    done
    echo
    echo "zkgate resident memory (VmRSS, MB, median):"
    for name in "${PROXIES[@]}"; do
        [[ "$name" == zkgate* ]] || continue
        printf '  %-44s idle after start-up: %6s   after load: %6s\n' "$(label "$name")" \
            "$(med "$RES/$name.rss_idle")" "$(med "$RES/$name.rss_loaded")"
    done
fi
if ((INSTR_REQUESTS > 0)); then
    echo
    echo "instructions per request (callgrind, all threads, $INSTR_REQUESTS keep-alive requests, h2load --h1 -c $INSTR_CONNECTIONS):"
    for name in "${PROXIES[@]}"; do
        [[ -s "$RES/$name.instr" ]] && printf '  %-44s %9s\n' "$(label "$name")" "$(cat "$RES/$name.instr")"
    done
fi
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
