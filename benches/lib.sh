# shellcheck shell=bash
# Helpers shared by benches/compare.sh and scripts/load-test.sh. Source it, don't run it.
#
# Everything binds to 127.0.0.1 on ports picked at run time, writes into one temp dir
# ($ZK_TMP, made by zk_init) and every process started through zk_spawn is stopped by
# zk_cleanup, which zk_init installs as the EXIT trap.

ZK_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ZK_TMP=""
ZK_PIDS=()
ZK_USED_PORTS=" "
ZK_APT_UPDATED=0

zk_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
zk_die() { zk_log "error: $*"; exit 1; }

# zk_init PREFIX: make the temp dir and install the cleanup traps.
zk_init() {
    ZK_TMP="$(mktemp -d "${TMPDIR:-/tmp}/${1:-zkgate}.XXXXXX")"
    trap zk_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}

# Stop everything started through zk_spawn, then remove the temp dir (KEEP_TMP=1 keeps it).
zk_cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM HUP
    for pid in "${ZK_PIDS[@]}"; do
        zk_stop "$pid" 5
    done
    ZK_PIDS=()
    if [[ -n "$ZK_TMP" && -d "$ZK_TMP" ]]; then
        if [[ "${KEEP_TMP:-0}" == 1 ]]; then
            zk_log "keeping $ZK_TMP"
        else
            rm -rf -- "$ZK_TMP"
        fi
    fi
    exit "$rc"
}

zk_alive() { kill -0 "$1" 2>/dev/null; }

# zk_spawn LOGFILE CMD [ARGS...]: start CMD in the background, its stdout and stderr going
# to LOGFILE. The PID is left in ZK_LAST_PID (the command itself, not a subshell).
zk_spawn() {
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 </dev/null &
    ZK_LAST_PID=$!
    ZK_PIDS+=("$ZK_LAST_PID")
}

# zk_stop PID [TIMEOUT_S] [SIGNAL]: signal PID (default TERM), wait up to TIMEOUT_S (default 10)
# for it to exit, then SIGKILL. Only touches PIDs this script started.
zk_stop() {
    local pid=$1 timeout=${2:-10} sig=${3:-TERM} i keep=()
    if zk_alive "$pid"; then
        kill -s "$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < timeout * 10; i++)); do
            zk_alive "$pid" || break
            sleep 0.1
        done
        if zk_alive "$pid"; then
            zk_log "pid $pid still running after ${timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    for i in "${ZK_PIDS[@]}"; do
        [[ "$i" == "$pid" ]] || keep+=("$i")
    done
    ZK_PIDS=("${keep[@]}")
}

# zk_free_port: print a TCP port that is free on 127.0.0.1 and not handed out before by this
# script (the kernel may give the same ephemeral port twice once it is closed again).
zk_free_port() {
    local port i
    for ((i = 0; i < 50; i++)); do
        port="$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()')" || zk_die "python3 is needed to pick free ports"
        if [[ "$ZK_USED_PORTS" != *" $port "* ]]; then
            ZK_USED_PORTS+="$port "
            printf '%s\n' "$port"
            return 0
        fi
    done
    zk_die "could not find a free port"
}

# zk_wait_port PORT [TIMEOUT_S] [PID] [LOGFILE]: wait until 127.0.0.1:PORT accepts connections.
# Fails early (printing LOGFILE) if PID exits.
zk_wait_port() {
    local port=$1 timeout=${2:-20} pid=${3:-} logfile=${4:-} deadline
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if [[ -n "$pid" ]] && ! zk_alive "$pid"; then
            zk_log "process $pid exited before 127.0.0.1:$port opened"
            [[ -n "$logfile" && -f "$logfile" ]] && tail -n 30 "$logfile" >&2
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    zk_log "timed out after ${timeout}s waiting for 127.0.0.1:$port"
    [[ -n "$logfile" && -f "$logfile" ]] && tail -n 30 "$logfile" >&2
    return 1
}

# zk_wait_http_200 URL [TIMEOUT_S] [PID] [LOGFILE]: wait until GET URL answers 200.
zk_wait_http_200() {
    local url=$1 timeout=${2:-20} pid=${3:-} logfile=${4:-} deadline code=""
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if [[ -n "$pid" ]] && ! zk_alive "$pid"; then
            zk_log "process $pid exited before $url answered 200"
            [[ -n "$logfile" && -f "$logfile" ]] && tail -n 30 "$logfile" >&2
            return 1
        fi
        code="$(zk_http_code "$url")"
        [[ "$code" == 200 ]] && return 0
        sleep 0.2
    done
    zk_log "timed out after ${timeout}s waiting for 200 from $url (last status: ${code:-none})"
    [[ -n "$logfile" && -f "$logfile" ]] && tail -n 30 "$logfile" >&2
    return 1
}

# zk_run_zkgate NAME CONFIG ADMIN_PORT [PREFIX...]: starts `$ZKGATE run -c CONFIG` (behind PREFIX,
# e.g. taskset), logging next to CONFIG, and waits for its admin /readyz and for PROXY_PORT; sets
# PROXY_PID and PROXY_LOG. NAME is what a failure calls it.
zk_run_zkgate() {
    local name=$1 config=$2 admin=$3
    shift 3
    PROXY_LOG="$(dirname "$config")/zkgate.log"
    zk_spawn "$PROXY_LOG" "$@" "$ZKGATE" run -c "$config"
    PROXY_PID=$ZK_LAST_PID
    zk_wait_http_200 "http://127.0.0.1:$admin/readyz" 30 "$PROXY_PID" "$PROXY_LOG" \
        || zk_die "$name did not become ready"
    zk_wait_port "$PROXY_PORT" 10 "$PROXY_PID" "$PROXY_LOG" || zk_die "$name's listener did not open"
}

# zk_http_code URL: print the status code of GET URL (000 when nothing answered).
zk_http_code() {
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true
    else
        python3 - "$1" <<'EOF' || true
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status, end="")
except urllib.error.HTTPError as e:
    print(e.code, end="")
except Exception:
    print("000", end="")
EOF
    fi
}

# zk_http_body URL: print the body of GET URL.
zk_http_body() {
    if command -v curl >/dev/null 2>&1; then
        curl -s -m 2 "$1"
    else
        python3 -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=2).read())' "$1"
    fi
}

# zk_ensure_cmd CMD DEBIAN_PACKAGE: apt-get install the package when CMD is missing.
zk_ensure_cmd() {
    local cmd=$1 pkg=$2 sudo=()
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if [[ -x "/usr/sbin/$cmd" ]]; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || zk_die "$cmd is missing and apt-get is not available; install $pkg"
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || zk_die "$cmd is missing; install $pkg (needs root)"
        sudo=(sudo)
    fi
    if [[ "$ZK_APT_UPDATED" == 0 ]]; then
        zk_log "$cmd is missing: running apt-get update"
        "${sudo[@]}" apt-get update || zk_die "apt-get update failed"
        ZK_APT_UPDATED=1
    fi
    zk_log "installing $pkg"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$pkg" || zk_die "apt-get install $pkg failed"
    command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]] || zk_die "$cmd still missing after installing $pkg"
}

# zk_nginx_bin: print the nginx binary path (it lives in /usr/sbin, which may not be on PATH).
zk_nginx_bin() {
    if command -v nginx >/dev/null 2>&1; then
        command -v nginx
    elif [[ -x /usr/sbin/nginx ]]; then
        printf '/usr/sbin/nginx\n'
    else
        return 1
    fi
}

zk_haproxy_bin() {
    if command -v haproxy >/dev/null 2>&1; then
        command -v haproxy
    elif [[ -x /usr/sbin/haproxy ]]; then
        printf '/usr/sbin/haproxy\n'
    else
        return 1
    fi
}

# zk_target_dir: print where cargo builds to ($CARGO_TARGET_DIR and cargo config included).
zk_target_dir() {
    "$ZK_REPO_ROOT/scripts/target-dir.sh" || zk_die "cannot ask cargo for its target directory"
}

# zk_zkgate_bin: print the gateway binary: $ZKGATE_BIN if set, else `cargo build --release`.
zk_zkgate_bin() {
    if [[ -n "${ZKGATE_BIN:-}" ]]; then
        [[ -x "$ZKGATE_BIN" ]] || zk_die "ZKGATE_BIN=$ZKGATE_BIN is not an executable"
        printf '%s\n' "$ZKGATE_BIN"
        return 0
    fi
    zk_log "building zkgate: cargo build --release"
    (cd "$ZK_REPO_ROOT" && cargo build --release >&2) || zk_die "cargo build --release failed"
    printf '%s/release/zkgate\n' "$(zk_target_dir)"
}

# The body the nginx backend returns: 19 bytes.
ZK_BACKEND_BODY='hello from backend'  # + "\n" = 19 bytes

# zk_nginx_preamble DIR: the start of an nginx.conf (one worker, pid, logs and temp paths under
# DIR, access log off) up to inside its http block, for the backend and the proxy alike.
zk_nginx_preamble() {
    local dir=$1
    cat <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
EOF
}

# zk_run_nginx DIR PORT WHAT: checks DIR/nginx.conf, starts nginx on it in the foreground and
# waits for PORT; dies naming WHAT if either fails. Sets ZK_LAST_PID; its log is DIR/error.log.
zk_run_nginx() {
    local dir=$1 port=$2 what=$3 nginx
    nginx="$(zk_nginx_bin)" || zk_die "nginx not found"
    "$nginx" -t -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" >/dev/null 2>&1 \
        || { cat "$dir/error.log" >&2; zk_die "$what config rejected"; }
    zk_spawn "$dir/stderr.log" "$nginx" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;'
    zk_wait_port "$port" 10 "$ZK_LAST_PID" "$dir/error.log" || zk_die "$what did not start"
}

# zk_start_nginx_backend PORT: one nginx worker on 127.0.0.1:PORT answering every request with
# a fixed 19-byte body, keepalive on. Sets ZK_BACKEND_PID.
zk_start_nginx_backend() {
    local port=$1 dir="$ZK_TMP/nginx-backend"
    mkdir -p "$dir"
    {
        zk_nginx_preamble "$dir"
        cat <<EOF
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$port reuseport backlog=4096;
        default_type text/plain;
        location / { return 200 "$ZK_BACKEND_BODY\n"; }
    }
}
EOF
    } >"$dir/nginx.conf"
    zk_run_nginx "$dir" "$port" "nginx backend"
    ZK_BACKEND_PID=$ZK_LAST_PID
    local body
    body="$(zk_http_body "http://127.0.0.1:$port/")"
    [[ "$body" == "$ZK_BACKEND_BODY" ]] || zk_die "nginx backend answered '$body'"
    zk_log "nginx backend on 127.0.0.1:$port (pid $ZK_BACKEND_PID)"
}

# zk_rss_mb PID: print VmRSS of PID in MB (one decimal).
zk_rss_mb() {
    awk '/^VmRSS:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || printf 'n/a\n'
}

# zk_callgrind_count PID PREFIX N LOG H2LOAD_ARGS...: for a process under callgrind (started
# with --callgrind-out-file=PREFIX.%p), zeroes its counters, sends N requests with `h2load --h1`
# (output in LOG), dumps the counters and prints two fields: how many requests were answered 2xx
# and the instructions per request (empty when callgrind wrote no totals).
zk_callgrind_count() {
    local pid=$1 prefix=$2 n=$3 log=$4 ok dump total
    shift 4
    callgrind_control -z "$pid" >/dev/null 2>&1 || zk_die "callgrind_control could not zero $pid's counters"
    h2load --h1 -n "$n" "$@" >"$log" 2>&1 || true
    callgrind_control -d "$pid" >/dev/null 2>&1 || zk_die "callgrind_control could not dump $pid's counters"
    ok="$(awk '/^status codes:/ { gsub(/,/, ""); print $3; exit }' "$log")"
    # The newest dump: a process counted in several phases writes one per phase.
    # shellcheck disable=SC2012
    dump="$(ls -t "$prefix.$pid".* 2>/dev/null | head -n1)"
    total="$(awk '/^totals:/ { print $2; exit }' "$dump" 2>/dev/null)"
    awk -v ok="${ok:-0}" -v t="$total" -v n="$n" \
        'BEGIN { if (t != "") printf "%s %.0f\n", ok, t / n; else print ok }'
}

# zk_median V1 V2 ...: print the median of numbers (mean of the middle two for an even count).
zk_median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "n/a"; exit }
        if (NR % 2) printf "%.2f\n", v[(NR + 1) / 2]
        else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# zk_gateway_config FILE DIR ADMIN_PORT PORT BACKEND_PORT THREADS WORK_STEALING: the config both
# benchmarks run zkgate ($ZKGATE) with: one catch-all route to one backend, checked with `zkgate check`.
zk_gateway_config() { # FILE DIR ADMIN PORT BACKEND THREADS WORK_STEALING [FEATURES]
    # FEATURES=1 adds what production configs carry: a health check, outlier detection, a
    # circuit breaker, retries, a rate limit keyed by client too high to refuse anything and a
    # cap on requests in flight, so that their cost on the request path shows (all of them on
    # the HTTP/1 fast path, which retries after send would leave). FEATURES=full: the default
    # config with the fast path off, every request through Pingora's proxy phases.
    local file=$1 dir=$2 admin=$3 port=$4 backend=$5 threads=$6 ws=$7 features=${8:-0}
    local upstream_extra="" route_extra="" listener_extra=""
    [[ "$features" == full ]] && listener_extra='
    http1_fast_path: false'
    if [[ "$features" == 1 ]]; then
        upstream_extra='
    health_check: { type: tcp, interval: 1s, timeout: 500ms }
    outlier_detection: { consecutive_failures: 5 }
    circuit_breaker: { consecutive_failures: 20 }'
        route_extra='
    retry: { attempts: 3 }
    rate_limit: { per_second: 10000000, burst: 10000000, key: client_ip }
    max_in_flight: 100000'
    fi
    cat >"$file" <<EOF
server:
  threads: $threads
  work_stealing: $ws
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  upgrade_sock: $dir/upgrade.sock
admin:
  listen: 127.0.0.1:$admin
listeners:
  - name: web
    listen: 127.0.0.1:$port$listener_extra
upstreams:
  - name: backend
    backends: ["127.0.0.1:$backend"]$upstream_extra
routes:
  - name: all
    match: { path_prefix: / }
    upstream: backend$route_extra
EOF
    "$ZKGATE" check -c "$file" >"$dir/check.log" 2>&1 \
        || { cat "$dir/check.log" >&2; zk_die "zkgate check rejected $file"; }
}

# wrk output parsing.

# wrk_errors FILE: print "non2xx socket_errors" from a wrk report.
wrk_errors() {
    awk '
        /Non-2xx or 3xx responses:/ { non2xx += $NF }
        /Socket errors:/ { gsub(/,/, ""); sock += $4 + $6 + $8 + $10 }
        END { printf "%d %d\n", non2xx, sock }' "$1"
}

# wrk_rps FILE / wrk_p99_ms FILE
wrk_rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
wrk_p99_ms() {
    awk '$1 == "99%" {
        v = $2; u = v; sub(/^[0-9.]+/, "", u); n = v + 0
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000
        else if (u == "m") n *= 60000; else if (u == "h") n *= 3600000
        printf "%.3f\n", n }' "$1"
}
