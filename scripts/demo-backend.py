#!/usr/bin/env python3
"""A tiny HTTP backend for the quickstart: answers every request with who it is and what it got."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "zkgate-demo-backend"

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = json.dumps(
            {
                "backend": self.server.name,
                "method": self.command,
                "path": self.path,
                "x-forwarded-for": self.headers.get("x-forwarded-for"),
                "body_bytes": len(body),
            }
        ).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else f"backend-{port}"
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.name = name
    print(f"demo backend {name} on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
