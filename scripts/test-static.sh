#!/usr/bin/env bash
# Proves the optimized binary is static and serves from an empty root holding only itself and
# its config, as it would in a scratch container. Usage: scripts/test-static.sh PATH/TO/zkgate
set -euo pipefail
bin=${1:?usage: test-static.sh BINARY}
fail() { echo "test-static: FAIL: $*" >&2; exit 1; }

info=$(file -L "$bin")
echo "$info"
echo "$info" | grep -Eq 'statically linked|static-pie linked' || fail "not a static binary"
readelf -l "$bin" | grep -q INTERP && fail "has a program interpreter"
readelf -d "$bin" 2>/dev/null | grep -q NEEDED && fail "needs shared libraries"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
root=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$root"; }
trap cleanup EXIT

http=$(port); https=$(port); admin=$(port); backend=$(port)
python3 "$(dirname "$0")/demo-backend.py" "$backend" outside-the-root >/dev/null & pids+=($!)
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$backend/" >/dev/null 2>&1 && break; sleep 0.1; done
cp "$bin" "$root/zkgate"
# HTTPS from the same root: a certificate and key written next to the config (rustls, no C
# TLS library, so nothing more is needed in the root).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=static.test \
  -addext subjectAltName=DNS:static.test -keyout "$root/key.pem" -out "$root/cert.pem" 2>/dev/null \
  || fail "openssl could not make a certificate"
cat > "$root/zkgate.yaml" <<YAML
server: { threads: 1, grace_period: 1s, graceful_shutdown_timeout: 1s, upgrade_sock: /upgrade.sock }
admin: { listen: "127.0.0.1:$admin" }
listeners:
  - { name: web, listen: "127.0.0.1:$http" }
  - { name: web-tls, listen: "127.0.0.1:$https", tls: { certificates: [{ cert: /cert.pem, key: /key.pem }] } }
upstreams: [{ name: demo, backends: ["127.0.0.1:$backend"] }]
routes:
  - { name: ping, match: { path: /ping }, respond: { body: "pong\n" } }
  - { name: demo, match: { path_prefix: /demo/ }, rewrite: { strip_prefix: /demo }, upstream: demo }
YAML
echo "root holds: $(cd "$root" && ls)"

chroot_bin=$(command -v chroot || echo /usr/sbin/chroot)
if [ "$(id -u)" -eq 0 ]; then runner=("$chroot_bin" "$root"); else runner=(unshare -r "$chroot_bin" "$root"); fi
env -i "${runner[@]}" /zkgate run -c /zkgate.yaml > "$root.log" 2>&1 & pids+=($!)

for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
pong=$(curl -fsS "http://127.0.0.1:$http/ping") || { cat "$root.log"; fail "/ping did not answer"; }
[ "$pong" = "pong" ] || fail "/ping answered '$pong'"
proxied=$(curl -fsS "http://127.0.0.1:$http/demo/hello?x=1") || { cat "$root.log"; fail "/demo/hello did not answer"; }
echo "$proxied" | grep -q '"path": "/hello?x=1"' || fail "unexpected proxied answer: $proxied"
secure=$(curl -fsS --resolve "static.test:$https:127.0.0.1" --cacert "$root/cert.pem" "https://static.test:$https/ping") \
  || { cat "$root.log"; fail "/ping over HTTPS did not answer"; }
[ "$secure" = "pong" ] || fail "/ping over HTTPS answered '$secure'"
rm -f "$root.log"
echo "test-static: PASS: $(du -h "$bin" | cut -f1) static binary served /ping (HTTP and HTTPS) and proxied /demo/hello from an empty root"
