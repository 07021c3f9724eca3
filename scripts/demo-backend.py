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
        head = (
            "HTTP/1.1 200 OK\r\n"
            f"server: {self.server_version}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(reply)}\r\n\r\n"
        ).encode()
        # Head and body in one write: a backend killed while it answers then leaves a proxy
        # either the whole answer or nothing (which it may retry elsewhere), never a head whose
        # body cannot come. The failover tests kill backends under load and count on that.
        self.wfile.write(head if self.command == "HEAD" else head + reply)

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
