#!/usr/bin/env python3
"""A test O2 IMS server for zkgate's cache tests: one of three dialects (`oran`, `pti`,
`netweave`), an API listener and a control listener on loopback.

    python3 server.py --dialect oran --dir /tmp/x [--headers none|no-store|rfc] ...

When both listeners are up it writes jwks.json into --dir and prints one JSON line on stdout:
{"api": port, "control": port, "jwks": path, "dialect": ..., "base": ...}. The API answers the
dialect's GET paths, subscriptions and (oran) monitoring writes; the control port is described
in control.py. Every request to the API is counted, by method, path+query, token subject and
status. Stdlib only, plus `cryptography` for the JWT keys.
"""

import argparse
import json
import os
import socket
import stat
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# No __pycache__ next to the sources in the repository.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import control  # noqa: E402
from base import Req  # noqa: E402
from netweave import Netweave  # noqa: E402
from o2common import HttpError, State, etag_of, roles_of  # noqa: E402
from oran import Oran  # noqa: E402
from pti import Pti  # noqa: E402

DIALECTS = {"oran": Oran, "pti": Pti, "netweave": Netweave}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "o2ims-fake"
    state = None
    # TCP_NODELAY, as Go's net/http (oran-o2ims) sets: the headers and the body go out in two
    # writes, and without it Nagle holds the body until the client's delayed ACK of the headers
    # (40 ms on Linux) on a kept-alive connection such as a gateway's pooled one.
    disable_nagle_algorithm = True

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        log = getattr(self.state, "log", None)
        if log:
            log.write("%s %s\n" % (self.address_string(), fmt % args))
            log.flush()

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline().strip():
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        n = self.headers.get("Content-Length")
        if n is None:
            return b""
        try:
            return self.rfile.read(int(n))
        except ValueError:
            return b""

    def send(self, status, body, content_type="application/json", headers=None,
             head_only=False):
        data = b"" if body is None else (body if isinstance(body, bytes)
                                         else json.dumps(body).encode())
        self.send_response(status)
        if data or status not in (204, 304):
            self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head_only and status not in (204, 304):
            self.wfile.write(data)


class ApiHandler(Handler):
    def handle_any(self):
        state = self.state
        req = Req(self.command, self.path, self.headers, self.read_body())
        req.sub = None
        answer = self.answer(req)
        # Counted before the answer leaves: a test that has its answer sees it counted.
        state.count(self.command, self.path, req.sub, answer[0] if answer else 0)
        if answer is None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        status, data, ctype, headers = answer
        self.send(status, data, ctype, headers, head_only=req.method == "HEAD")

    def answer(self, req):
        """(status, body, content type, headers), or None to hang up without answering."""
        state = self.state
        dialect = state.dialect
        try:
            with state.lock:
                rule = dict(state.behaviour)
            if rule and rule["rx"].search(self.path):
                if rule.get("latency_ms"):
                    time.sleep(rule["latency_ms"] / 1000)
                if rule.get("close"):
                    return None
                if rule.get("status"):
                    raise HttpError(rule["status"], f"injected status {rule['status']}")
            if state.args.auth == "jwt":
                auth = self.headers.get("Authorization", "")
                scheme, _, tok = auth.partition(" ")
                claims = state.keys.verify(tok.strip()) if scheme.lower() == "bearer" else None
                if claims is None:
                    raise HttpError(401, "missing or invalid bearer token",
                                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
                req.claims = claims
                req.sub = claims.get("sub")
            roles, handler = dialect.route(req)
            if roles is not None and state.args.auth == "jwt":
                if not roles & roles_of(req.claims):
                    raise HttpError(403, "the token's groups grant none of "
                                         f"{sorted('role:' + r for r in roles)}")
            status, body, headers = handler(req)
            headers = dict(headers)
            data = b"" if body is None else json.dumps(body).encode()
            mode = state.args.headers
            if mode == "no-store":
                headers["Cache-Control"] = "no-store"
            elif mode == "rfc" and status == 200 and req.method in ("GET", "HEAD"):
                tag = etag_of(data)
                headers["ETag"] = tag
                headers["Cache-Control"] = f"max-age={state.args.max_age}"
                inm = self.headers.get("If-None-Match")
                if inm and (inm.strip() == "*" or tag in [t.strip() for t in inm.split(",")]):
                    status = 304
                    data = b""
            return status, data or None, "application/json", headers
        except HttpError as e:
            ctype, body = dialect.error(e.status, e.detail, e.extra, req)
            headers = dict(e.headers)
            if state.args.headers == "no-store":
                headers["Cache-Control"] = "no-store"
            return e.status, body, ctype, headers
        except Exception as e:  # the fake's own bug: answer 500 and say what
            ctype, body = dialect.error(500, f"fake server error: {type(e).__name__}: {e}",
                                        None, req)
            return 500, body, ctype, {}

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


class ControlHandler(Handler):
    def handle_any(self):
        raw = self.read_body()
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise HttpError(400, "body must be a JSON object")
            status, out = control.handle(self.state, self.command, self.path.split("?")[0],
                                         body)
        except ValueError as e:
            status, out = 400, {"error": f"body is not JSON: {e}"}
        except HttpError as e:
            status, out = e.status, {"error": e.detail}
        except Exception as e:
            status, out = 500, {"error": f"{type(e).__name__}: {e}"}
        self.send(status, out)

    do_GET = do_POST = do_DELETE = handle_any


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dialect", choices=sorted(DIALECTS), required=True)
    p.add_argument("--dir", required=True, help="where jwks.json and server.log go")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--api-port", type=int, default=0)
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--headers", choices=["none", "no-store", "rfc"],
                   help="caching headers: none (oran, pti), no-store (netweave), or rfc "
                        "(ETag, max-age, If-None-Match)")
    p.add_argument("--max-age", type=int, default=60, help="max-age in rfc mode")
    p.add_argument("--auth", choices=["jwt", "none"], default="jwt")
    p.add_argument("--smo-host", default=None, help="the only callback host oran accepts")
    p.add_argument("--allow-http", action="store_true", help="oran: accept http callbacks")
    p.add_argument("--allow-loopback", action="store_true",
                   help="oran: accept callbacks that resolve to loopback")
    p.add_argument("--callback-ca", default=None, help="CA file to trust for https callbacks")
    args = p.parse_args()
    dialect = DIALECTS[args.dialect]()
    if args.headers is None:
        args.headers = dialect.DEFAULT_HEADERS
    state = State(args, dialect)
    dialect.state = state
    os.makedirs(args.dir, exist_ok=True)
    state.log = open(os.path.join(args.dir, "server.log"), "a")
    jwks = os.path.join(args.dir, "jwks.json")
    with open(jwks + ".tmp", "w") as f:
        json.dump(state.keys.jwks(), f)
    os.replace(jwks + ".tmp", jwks)

    api_handler = type("Api", (ApiHandler,), {"state": state})
    control_handler = type("Control", (ControlHandler,), {"state": state})
    api = Server((args.host, args.api_port), api_handler)
    ctl = Server((args.host, args.control_port), control_handler)
    for srv in (api, ctl):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    ready = {"api": api.server_address[1], "control": ctl.server_address[1], "jwks": jwks,
             "dialect": dialect.NAME, "base": dialect.BASE, "headers": args.headers}
    with open(os.path.join(args.dir, "ports.json"), "w") as f:
        json.dump(ready, f)
    print(json.dumps(ready), flush=True)
    try:
        if stat.S_ISFIFO(os.fstat(0).st_mode):
            # A pipe from the test: its end (the test process gone, even killed) ends us too.
            sys.stdin.read()
        else:
            threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
