"""A real HTTP server for responses the OpenAI test server is built not to give: every POST
answered with one fixed 200 body (malformed or oddly shaped JSON), counted."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def json_200_server(body: bytes) -> tuple[ThreadingHTTPServer, list[int]]:
    """A started server answering every POST with ``body``, and the list each call appends
    to; ``srv.shutdown()`` stops it."""
    calls: list[int] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            calls.append(1)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, calls
