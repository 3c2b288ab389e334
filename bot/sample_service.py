"""A sample HTTP service for the demo and the tests: `/ping` -> `pong by IP:PORT`, `/` -> `hello world by IP:PORT`.

    python -m bot.sample_service [serve] --port 9001 [--state-dir D]   # in the foreground
    python -m bot.sample_service start   --port 9001 --state-dir D     # in the background, until /ping answers
    python -m bot.sample_service stop    --port 9001 --state-dir D     # until the process is gone
    python -m bot.sample_service deploy  --port 9001 --state-dir D --version 2

`start`, `stop` and `deploy` are what the demo's release steps run (local executor): they really stop
and start the process. The deployed version is served in the `X-App-Version` header and at `/version`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _pidfile(state: Path, port: int) -> Path:
    return state / f"sample-{port}.pid"


def _versionfile(state: Path, port: int) -> Path:
    return state / f"sample-{port}.version"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    version = "1"

    def _answer(self, with_body: bool) -> None:
        host, port = self.server.server_address[:2]
        path = self.path.split("?")[0]
        if path == "/ping":
            body = f"pong by {host}:{port}\n"
        elif path == "/":
            body = f"hello world by {host}:{port}\n"
        elif path == "/version":
            body = f"{self.version}\n"
        else:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App-Version", self.version)
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


def serve(host: str, port: int, state: Path | None) -> None:
    if state is not None:
        version = _versionfile(state, port)
        _Handler.version = version.read_text().strip() if version.exists() else "1"
    ThreadingHTTPServer.request_queue_size = 128  # the default backlog of 5 drops bursts of probes
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    if state is not None:
        _pidfile(state, port).write_text(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if state is not None:
            _pidfile(state, port).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0; /proc tells it is gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def start(host: str, port: int, state: Path, timeout: float = 10.0) -> int:
    import httpx

    pidfile = _pidfile(state, port)
    if pidfile.exists() and _alive(int(pidfile.read_text() or 0)):
        print(f"already running on {host}:{port} (pid {pidfile.read_text()})")
        return 0
    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bot.sample_service",
            "serve",
            "--host",
            host,
            "--port",
            str(port),
            "--state-dir",
            str(state),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # outlives the step that started it
    )
    for _ in range(int(timeout / 0.05)):
        try:
            httpx.get(f"http://{host}:{port}/ping", timeout=1, trust_env=False)
            print(f"started on {host}:{port}")
            return 0
        except httpx.HTTPError:
            time.sleep(0.05)
    print(f"did not answer on {host}:{port} within {timeout:g} s", file=sys.stderr)
    return 1


def stop(port: int, state: Path, timeout: float = 10.0) -> int:
    pidfile = _pidfile(state, port)
    if not pidfile.exists():
        print(f"not running on port {port}")
        return 0
    pid = int(pidfile.read_text() or 0)
    if pid > 1 and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(int(timeout / 0.05)):
            if not _alive(pid):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    print(f"stopped on port {port}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="sample HTTP service (loopback)")
    parser.add_argument("action", nargs="?", default="serve", choices=["serve", "start", "stop", "deploy"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, default=None, help="pid and version files")
    parser.add_argument("--version", default=None, help="with deploy: the version to serve after the next start")
    args = parser.parse_args()
    if args.action == "serve":
        serve(args.host, args.port, args.state_dir)
        return
    if args.state_dir is None:
        parser.error(f"{args.action} needs --state-dir")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    if args.action == "start":
        sys.exit(start(args.host, args.port, args.state_dir))
    if args.action == "stop":
        sys.exit(stop(args.port, args.state_dir))
    if not args.version:
        parser.error("deploy needs --version")
    _versionfile(args.state_dir, args.port).write_text(args.version)
    print(f"deployed version {args.version} for port {args.port}")


if __name__ == "__main__":
    main()
