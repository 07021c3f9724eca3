#!/usr/bin/env bash
# Alertmanager webhook throughput: a 10-alert payload posted to the alert_webhook plugin, split
# per alert (10 messages rendered and delivered per webhook) to a fast local destination (one
# nginx worker), against the same zkgate proxying the same payload 1:1 to the same nginx, in the
# same run. Then the p99 of each at about half its saturation rate.
#
# Environment: DURATION (wrk -d, default 10s), CONNECTIONS (default 16), ZKGATE_BIN, KEEP_TMP=1.
#
# wrk cannot send at a fixed rate; the half-rate runs pace each connection with wrk's delay()
# hook, so the rate printed is what was achieved and the latencies are closed-loop ones (a
# stall delays the next request instead of queueing it).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}

zk_init zkgate-webhook
zk_ensure_cmd nginx nginx-light
zk_ensure_cmd wrk wrk
ZKGATE="$(zk_zkgate_bin)"

BACKEND_PORT="$(zk_free_port)"
HTTP_PORT="$(zk_free_port)"
ADMIN_PORT="$(zk_free_port)"
zk_start_nginx_backend "$BACKEND_PORT"

PAYLOAD="$ZK_TMP/payload.json"
python3 - "$PAYLOAD" <<'EOF'
import json, sys
alerts = [{
    "status": "firing",
    "labels": {"alertname": f"HighLatency{i}", "severity": "critical", "instance": f"api-{i}:9100",
               "job": "api", "namespace": "prod", "cluster": "eu-1"},
    "annotations": {"summary": f"p99 latency above 500ms on api-{i}",
                    "description": "The API answers slowly.", "runbook_url": "https://runbooks.local/latency"},
    "startsAt": "2026-11-22T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://prometheus.local/graph?g0.expr=latency", "fingerprint": ""}
    for i in range(10)]
json.dump({"version": "4", "groupKey": "{}:{alertname=\"HighLatency\"}", "truncatedAlerts": 0,
           "status": "firing", "receiver": "zkgate", "groupLabels": {"alertname": "HighLatency"},
           "commonLabels": {"severity": "critical", "job": "api"}, "commonAnnotations": {},
           "externalURL": "http://alertmanager.local", "alerts": alerts}, open(sys.argv[1], "w"))
EOF

CONFIG="$ZK_TMP/zkgate.yaml"
cat >"$CONFIG" <<EOF
server: { threads: 1, upgrade_sock: $ZK_TMP/upgrade.sock }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
listeners: [{ name: web, listen: "127.0.0.1:$HTTP_PORT" }]
upstreams:
  - { name: sink, backends: ["127.0.0.1:$BACKEND_PORT"] }
routes:
  - name: proxy
    match: { path_prefix: /proxy }
    upstream: sink
  - name: alerts
    match: { path_prefix: /alerts }
    plugin:
      alert_webhook:
        auth: { bearer: { token: bench } }
        destinations:
          - { name: sink, upstream: sink, path: /hook, template: { builtin: generic }, split: per_alert, parallel: 10 }
EOF
"$ZKGATE" check -c "$CONFIG" >/dev/null || zk_die "config rejected"
zk_spawn "$ZK_TMP/zkgate.log" "$ZKGATE" run -c "$CONFIG"
ZKGATE_PID=$ZK_LAST_PID
zk_wait_port "$HTTP_PORT" 20 "$ZKGATE_PID" "$ZK_TMP/zkgate.log" || zk_die "zkgate did not start"

cat >"$ZK_TMP/post.lua" <<'EOF'
wrk.method = "POST"
local f = assert(io.open(os.getenv("PAYLOAD"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
local pause = tonumber(os.getenv("DELAY_MS") or "0")
if pause > 0 then
    function delay() return pause end
end
EOF

# run NAME PATH DELAY_MS: one wrk run; prints "req/s p99_ms" and keeps the report.
run() {
    local name=$1 path=$2 pause=$3 out="$ZK_TMP/$1.txt"
    PAYLOAD="$PAYLOAD" DELAY_MS="$pause" timeout 300 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" \
        --latency -s "$ZK_TMP/post.lua" "http://127.0.0.1:$HTTP_PORT$path" >"$out" 2>&1 \
        || zk_die "wrk $name failed: $(cat "$out")"
    read -r non2xx sock < <(wrk_errors "$out")
    if ((non2xx > 0 || sock > 0)); then
        zk_log "$name: $non2xx non-2xx answers, $sock socket errors"
        FAILED=1
    fi
    printf '%s %s\n' "$(wrk_rps "$out")" "$(wrk_p99_ms "$out")"
}

FAILED=0
# Warm both paths (connection pools, allocator) before measuring.
DURATION=2s run warm-alerts /alerts/sink 0 >/dev/null
DURATION=2s run warm-proxy /proxy/hook 0 >/dev/null
read -r alert_rps alert_p99 < <(run alerts /alerts/sink 0)
read -r proxy_rps proxy_p99 < <(run proxy /proxy/hook 0)

# Pace each connection so that all of them together send about half the saturation rate.
half_delay() { awk -v c="$CONNECTIONS" -v r="$1" 'BEGIN { d = c * 1000 / (r / 2); printf "%d\n", (d < 1 ? 1 : d) }'; }
read -r alert_half_rps alert_half_p99 < <(run alerts-half /alerts/sink "$(half_delay "$alert_rps")")
read -r proxy_half_rps proxy_half_p99 < <(run proxy-half /proxy/hook "$(half_delay "$proxy_rps")")

metrics="$(zk_http_body "http://127.0.0.1:$ADMIN_PORT/metrics")"
received="$(awk '/^zkgate_alert_alerts_total.*result="received"/ { print $2 }' <<<"$metrics")"
delivered="$(awk '/^zkgate_alert_alerts_total.*result="delivered"/ { print $2 }' <<<"$metrics")"
render="$(awk '/^zkgate_alert_render_duration_seconds_sum/ { s = $2 } /^zkgate_alert_render_duration_seconds_count/ { n = $2 } END { if (n) printf "%.1f", s / n * 1e6 }' <<<"$metrics")"

echo
echo "Webhook throughput: 10 alerts per webhook, split per alert, one nginx worker as the destination,"
echo "wrk -t1 -c$CONNECTIONS -d$DURATION, zkgate on one thread. Same process, same payload, same run."
printf '%-34s %12s %10s %22s\n' "" "req/s" "p99" "at ~half rate: req/s p99"
printf '%-34s %12.0f %8.2fms %14.0f %6.2fms\n' "alert_webhook (10 messages each)" "$alert_rps" "$alert_p99" "$alert_half_rps" "$alert_half_p99"
printf '%-34s %12.0f %8.2fms %14.0f %6.2fms\n' "plain proxy of the same payload" "$proxy_rps" "$proxy_p99" "$proxy_half_rps" "$proxy_half_p99"
awk -v a="$alert_rps" -v p="$proxy_rps" 'BEGIN { printf "ratio (webhooks / proxied requests): %.2f; messages delivered per second: %.0f\n", a / p, a * 10 }'
echo "alerts received ${received:-?}, delivered ${delivered:-?}; mean render time per webhook ${render:-?} us"
if [[ "${received:-0}" != "${delivered:-1}" ]]; then
    zk_log "not every alert received was delivered"
    FAILED=1
fi
exit "$FAILED"
