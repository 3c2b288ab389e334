"""A sample HTTP service for the demo and the tests: `/ping` -> `pong by IP:PORT`, `/` -> `hello world by IP:PORT`.

Run as its own process: `python -m bot.sample_service --port 9001`.
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, with_body: bool) -> None:
        host, port = self.server.server_address[:2]
        if self.path.split("?")[0] == "/ping":
            body = f"pong by {host}:{port}\n"
        elif self.path.split("?")[0] == "/":
            body = f"hello world by {host}:{port}\n"
        else:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._answer(True)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the demo's terminal is the chat
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="sample HTTP service (loopback)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), _Handler)
    server.daemon_threads = True
    print(f"listening on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
