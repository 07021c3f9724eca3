#!/usr/bin/env bash
# zkgate against nginx as TLS terminators in front of the same nginx backend, one worker each:
# new TLS handshakes per second (ECDSA P-256 and RSA 2048 certificates), keep-alive HTTPS
# requests per second, and HTTP/2 with 100 streams on 10 connections.
#
#   benches/tls-compare.sh                                  # 2 rounds of 10 s per figure
#   DURATION=5s ROUNDS=1 benches/tls-compare.sh             # quick look
#   ZKGATE_BIN=target/release/zkgate benches/tls-compare.sh # skip cargo build
#
# Environment: DURATION (default 10s), ROUNDS (default 2), CONNECTIONS (wrk -c, default 32),
# H2_REQUESTS (h2load -n, default 200000), PROXIES (default "zkgate nginx"), ZKGATE_BIN,
# KEEP_TMP=1.
#
# Handshakes: wrk sends `Connection: close`, so every request opens a connection with a full
# handshake (wrk offers no session to resume; nginx's session cache and tickets are off, and
# zkgate issues no tickets), TLS 1.3 on both sides. The figure is requests, i.e. handshakes, per
# second. Nothing is pinned: on a small machine wrk, the proxy and the backend share the cores,
# so compare the ratios of one run, not absolute numbers across runs. Exits non-zero if any run
# saw errors.
set -euo pipefail

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-32}
H2_REQUESTS=${H2_REQUESTS:-200000}
PROXIES=${PROXIES:-zkgate nginx}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || zk_die "ROUNDS must be a positive integer"

zk_init zkgate-tls-compare
zk_ensure_cmd nginx nginx-light
zk_ensure_cmd wrk wrk
zk_ensure_cmd h2load nghttp2-client
zk_ensure_cmd openssl openssl
if [[ " $PROXIES " == *" zkgate "* ]]; then ZKGATE="$(zk_zkgate_bin)" || exit 1; fi

RES="$ZK_TMP/results"
mkdir -p "$RES"
FAILED=0
NAME=bench.test

BACKEND_PORT="$(zk_free_port)"
zk_start_nginx_backend "$BACKEND_PORT"

# make_cert KIND: a self-signed certificate for $NAME in $ZK_TMP/KIND.{crt,key}.
make_cert() {
    local kind=$1 key="$ZK_TMP/$1.key" crt="$ZK_TMP/$1.crt"
    case "$kind" in
        ecdsa) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key" 2>/dev/null ;;
        rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$key" 2>/dev/null ;;
    esac
    openssl req -x509 -new -key "$key" -out "$crt" -days 2 -subj "/CN=$NAME" \
        -addext "subjectAltName=DNS:$NAME" 2>/dev/null || zk_die "openssl could not make the $kind certificate"
}

start_zkgate() { # KIND
    local kind=$1 dir="$ZK_TMP/zkgate-$1" admin
    rm -rf "$dir" && mkdir -p "$dir"
    PROXY_PORT="$(zk_free_port)"
    admin="$(zk_free_port)"
    cat >"$dir/zkgate.yaml" <<EOF
server: { threads: 1, work_stealing: false, grace_period: 1s, graceful_shutdown_timeout: 1s, upgrade_sock: $dir/upgrade.sock }
admin: { listen: "127.0.0.1:$admin" }
listeners:
  - name: web
    listen: "127.0.0.1:$PROXY_PORT"
    tls:
      certificates: [{ cert: "$ZK_TMP/$kind.crt", key: "$ZK_TMP/$kind.key" }]
upstreams:
  - { name: backend, backends: ["127.0.0.1:$BACKEND_PORT"] }
routes:
  - { name: all, match: { path_prefix: / }, upstream: backend }
EOF
    "$ZKGATE" check -c "$dir/zkgate.yaml" >"$dir/check.log" 2>&1 \
        || { cat "$dir/check.log" >&2; zk_die "zkgate check rejected its TLS config"; }
    zk_run_zkgate zkgate "$dir/zkgate.yaml" "$admin"
}

start_nginx() { # KIND
    local kind=$1 dir="$ZK_TMP/nginx-$1"
    rm -rf "$dir" && mkdir -p "$dir"
    PROXY_PORT="$(zk_free_port)"
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
        listen 127.0.0.1:$PROXY_PORT ssl http2 backlog=4096;
        ssl_certificate $ZK_TMP/$kind.crt;
        ssl_certificate_key $ZK_TMP/$kind.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        http2_max_concurrent_streams 128;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    zk_run_nginx "$dir" "$PROXY_PORT" "nginx TLS proxy"
    PROXY_PID=$ZK_LAST_PID
    PROXY_LOG="$dir/error.log"
}

fail() {
    zk_log "FAIL $*"
    echo "$*" >>"$RES/failures"
    FAILED=1
}

# run_wrk LABEL FILE [wrk args...]: one wrk run; records req/s in $RES/LABEL.rps.
run_wrk() {
    local label=$1 out=$2 non2xx sock rps
    shift 2
    timeout 300 wrk -t1 "$@" >"$out" 2>&1 || zk_log "wrk for $label exited $?"
    read -r non2xx sock < <(wrk_errors "$out")
    ((non2xx == 0 && sock == 0)) || fail "$label: $non2xx non-2xx/3xx, $sock socket errors"
    rps="$(wrk_rps "$out")"
    [[ -n "$rps" ]] || { fail "$label: no result"; return; }
    echo "$rps" >>"$RES/$label.rps"
    zk_log "$label: $rps req/s"
}

# run_h2load LABEL FILE: 100 streams on 10 connections; records req/s in $RES/LABEL.rps.
run_h2load() {
    local label=$1 out=$2 rps bad
    timeout 300 h2load -n "$H2_REQUESTS" -c 10 -m 10 -t 1 "https://127.0.0.1:$PROXY_PORT/" >"$out" 2>&1 \
        || zk_log "h2load for $label exited $?"

    rps="$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$out")"
    [[ -n "$rps" ]] || { fail "$label: no result"; return; }
    echo "$rps" >>"$RES/$label.rps"
    zk_log "$label: $rps req/s"
}

for kind in ecdsa rsa; do
    make_cert "$kind"
done

for round in $(seq 1 "$ROUNDS"); do
    for kind in ecdsa rsa; do
        for proxy in $PROXIES; do
            "start_$proxy" "$kind"
            url="https://127.0.0.1:$PROXY_PORT/"
            body="$(curl -sk --max-time 5 "$url" || true)"
            [[ "$body" == "$ZK_BACKEND_BODY" ]] || fail "$proxy $kind: GET $url answered '$body'"
            run_wrk "$proxy-$kind-handshakes" "$RES/$proxy-$kind-handshakes.$round.txt" \
                "-c$CONNECTIONS" "-d$DURATION" -H "Connection: close" "$url"
            if [[ "$kind" == ecdsa ]]; then
                run_wrk "$proxy-keepalive" "$RES/$proxy-keepalive.$round.txt" \
                    "-c$CONNECTIONS" "-d$DURATION" "$url"
                run_h2load "$proxy-h2" "$RES/$proxy-h2.$round.txt"
            fi
            zk_stop "$PROXY_PID" 15
        done
    done
done

median() { if [[ -s "$RES/$1.rps" ]]; then zk_median $(cat "$RES/$1.rps"); else echo 0; fi; }
printf '\n%-34s %12s %12s %8s\n' "median of $ROUNDS round(s), req/s" zkgate nginx ratio
for figure in ecdsa-handshakes rsa-handshakes keepalive h2; do
    z="$(median "zkgate-$figure")"
    n="$(median "nginx-$figure")"
    printf '%-34s %12.0f %12.0f %7.2fx\n' "$figure" "$z" "$n" \
        "$(awk -v z="$z" -v n="$n" 'BEGIN { print (n > 0 ? z / n : 0) }')"
done
if ((FAILED)); then
    zk_log "some runs failed:"
    cat "$RES/failures" >&2
    exit 1
fi
