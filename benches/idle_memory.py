#!/usr/bin/env python3
"""Memory per idle client connection: the gateway's RSS with N idle connections open, against
none. Two kinds, one after the other: keep-alive connections idle after one request, and new
connections that sent nothing.

    benches/idle_memory.py target/release/zkgate [N]     # N defaults to 5000

Starts the binary on free loopback ports with long deadlines (so nothing is closed while it
measures) and stops it at the end.
"""
import os, socket, subprocess, sys, tempfile, time, resource

binary = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

http, admin = free_port(), free_port()
tmp = tempfile.mkdtemp(prefix="zkgate-idle-")
conf = os.path.join(tmp, "zkgate.yaml")
with open(conf, "w") as f:
    f.write(f"""server: {{ threads: 2, grace_period: 1s, graceful_shutdown_timeout: 1s, upgrade_sock: {tmp}/up.sock }}
admin: {{ listen: "127.0.0.1:{admin}" }}
listeners:
  - name: web
    listen: "127.0.0.1:{http}"
    client_header_timeout: 300s
    keepalive_timeout: 300s
routes:
  - name: ping
    match: {{ path: /ping }}
    respond: {{ status: 200, body: "pong\\n" }}
""")
# A config with keys the binary does not know (an older build) is retried without them.
log = open(os.path.join(tmp, "log"), "w")
def start(path):
    p = subprocess.Popen([binary, "run", "-c", path], stdout=log, stderr=log)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", http), timeout=1).close(); return p
        except OSError:
            if p.poll() is not None: return None
            time.sleep(0.05)
    return p
proc = start(conf)
if proc is not None:
    proc.kill(); proc.wait()
else:
    text = open(conf).read().replace("    client_header_timeout: 300s\n", "").replace("    keepalive_timeout: 300s\n", "")
    with open(conf, "w") as f: f.write(text)
    proc = start(conf)
    proc.kill(); proc.wait()

def rss_kb():
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"): return int(line.split()[1])

def ping(s):
    s.sendall(b"GET /ping HTTP/1.1\r\nhost: a\r\n\r\n")
    got = b""
    while not got.endswith(b"pong\n"):
        d = s.recv(4096)
        if not d: raise RuntimeError("closed")
        got += d

def measure(kind):
    global proc
    proc = start(conf)
    try:
        # Warm up: threads, allocator arenas, the first requests.
        warm = [socket.create_connection(("127.0.0.1", http)) for _ in range(200)]
        for s in warm: ping(s)
        for s in warm: s.close()
        time.sleep(1.0)
        base = rss_kb()
        conns = []
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", http))
            if kind.startswith("keep"): ping(s)
            conns.append(s)
        time.sleep(1.0)
        held = rss_kb()
        for s in conns: s.close()
        time.sleep(1.5)
        after = rss_kb()
        print(f"{kind}: RSS {base} KiB with none, {held} KiB with {n} open: "
              f"{(held - base) * 1024 / n / 1000:.1f} KB each; {after} KiB after they closed")
    finally:
        proc.kill(); proc.wait()

# Each kind in a fresh process, so that neither reuses memory the other left.
for kind in ("keep-alive, idle after one request", "new, nothing sent"):
    measure(kind)
