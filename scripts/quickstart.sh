#!/usr/bin/env bash
# `make run`: the two demo backends conf/zkgate.yaml routes to, then the gateway in the foreground.
# Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
# The release binary where cargo put it (`make run` builds it and passes it in ZKGATE_BIN).
bin=${ZKGATE_BIN:-$(scripts/target-dir.sh)/release/zkgate}
[[ -x "$bin" ]] || { echo "no gateway binary at $bin: run \`cargo build --release\` or \`make run\`" >&2; exit 1; }
config=${CONFIG:-conf/zkgate.yaml}
pids=()
# Every client connection is a file descriptor: the soft limit goes up to the hard one (the
# gateway raises its own again at start, and logs it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM
for spec in 9001:backend-one 9002:backend-two; do
  python3 scripts/demo-backend.py "${spec%%:*}" "${spec#*:}" & pids+=($!)
done
for port in 9001 9002; do
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
done
cat <<'TXT'
zkgate quickstart; from another shell try:
  curl http://127.0.0.1:8080/ping
  curl 'http://127.0.0.1:8080/demo/hello?x=1'     (twice: round robin over both backends)
  curl http://127.0.0.1:9901/metrics
TXT
"$bin" run -c "$config" & pids+=($!)
wait "${pids[-1]}"
