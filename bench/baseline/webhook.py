#!/usr/bin/env python3
"""A minimal stand-in for the datapack service's webhook: accepts POSTs, counts them, answers 200.

    webhook.py PORT_FILE

Binds a free loopback port, writes it to PORT_FILE, serves until terminated. It reads each body
(so the client's send completes) and keeps only a count and the last body's sha256 field, so
it adds no work to the measured handler. GET /count returns the count.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNT = 0
LAST_SHA = ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global COUNT, LAST_SHA
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        COUNT += 1
        try:
            LAST_SHA = json.loads(body).get("sha256", "")
        except ValueError:
            pass
        self._answer(b"{}")

    def do_GET(self):
        self._answer(json.dumps({"count": COUNT, "last_sha256": LAST_SHA}).encode())

    def _answer(self, payload):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[1], "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
