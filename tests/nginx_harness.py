"""nginx for the end-to-end tests, and load through it.

`real_nginx()`: the production stack (tests/realnginx.py): nginx built with nginx-upsync-module and
nginx_upstream_check_module, following the Consul stand-in through a `ConsulLink` whose hold()/let_go()
freeze nginx's view. The tests that need it skip, saying how to get it, when it is not built.

The Python imitation below remains only for what does not need the real module (the benchmarks):
`NginxViews` stands in for what nginx reports (no nginx process): an HTTP server whose "workers" each
follow Consul as upsync's do (a blocking query, then `upsync_interval` plus 0-999 ms before the next)
and serves upsync's `upstream_show` text and nginx_upstream_check_module's `check_status` (json and
csv) for what they last read.

Load: wrk (many short POSTs) and `SlowUploads` (POSTs whose body arrives over about a second, so each
stays in flight at its backend that long: a node stopped while it still has requests fails them,
whatever the timing of nginx's reload)."""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

import httpx

from commands.addresses import ServerAddress
from commands.servers import ServerEntry
from tests.realnginx import UPSYNC_INTERVAL, ConsulLink, RealNginx, binary, skip_reason


def real_nginx(
    folder: Path, consul_url: str, servers: dict[str, bool], upstream: str = "app"
) -> tuple[RealNginx, ConsulLink]:
    """The real nginx started from `servers` ({address: down}, as Consul holds them) and following Consul
    through a `ConsulLink`; skips the test, saying how to get it, when it is not built."""
    if binary() is None:
        import pytest

        pytest.skip(skip_reason())
    link = ConsulLink(consul_url).start()
    try:
        return RealNginx(folder, link, upstream).start(servers), link
    except BaseException:
        link.stop()
        raise


class Follower(Protocol):
    """What follows Consul: a real nginx, or `NginxViews`."""

    upstream: str

    def render(self, servers: dict[str, bool]) -> bool: ...

    def reload(self) -> None: ...


class NginxViews:
    """nginx's two reports for one upstream, from what a `ConsulWatcher` last read (start both).

    GET /upstream_list[?<upstream>]            upsync's upstream_show text (eight leading spaces)
    GET /upstream_status?format=json|csv       check_status; every listed server "up" (the check
                                               module keeps checking drained servers: they stay up)"""

    def __init__(self, upstream: str = "app", port: int = 0, workers: int = 1) -> None:
        self.upstream = upstream
        self.servers: dict[str, bool] = {}  # worker 0's view (`render`)
        self._views: list[dict[str, bool]] = [self.servers] + [{} for _ in range(workers - 1)]
        self._turn = itertools.count()
        self._lock = threading.Lock()
        views = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as nginx answers
            # Headers and body go out in two writes: with Nagle's algorithm the second waits for the
            # client's delayed ACK (40 ms a request on Linux), which nginx does not make anyone wait.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                with views._lock:  # like nginx, one worker answers a request: they take turns
                    servers = dict(views._views[next(views._turn) % len(views._views)])
                if path == "/upstream_list":
                    body = views.upstream_show(servers, query or views.upstream)
                elif path == "/upstream_status":
                    body = views.check_status(servers, "csv" if "format=csv" in query else "json")
                else:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="nginx-views")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> NginxViews:
        self._thread.start()
        return self

    def serve(self) -> None:
        """In the foreground, until interrupted (its own process)."""
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def render(self, servers: dict[str, bool], worker: int = 0) -> bool:
        """What worker `worker` now holds; True when it changed."""
        with self._lock:
            view = self._views[worker]
            changed = servers != view
            view.clear()
            view.update(servers)
        return changed

    def worker(self, number: int) -> _Worker:
        """A `Follower` for one worker's view: give each its own `ConsulWatcher`, as upsync polls per worker."""
        return _Worker(self, number)

    def reload(self) -> None:
        return None  # the views answer from `servers` at once

    def upstream_show(self, servers: dict[str, bool], name: str) -> str:
        if name != self.upstream:
            return "The upstream you requested does not exist. Please double-check the name\n"
        lines = [
            f"        server {a} weight=1 max_fails=2 fail_timeout=10s{' down' if down else ''};"
            for a, down in servers.items()
        ]
        return f"Upstream name: {self.upstream}; Backend server count: {len(servers)}\n" + "\n".join(lines) + "\n"

    def check_status(self, servers: dict[str, bool], fmt: str) -> str:
        if fmt == "csv":
            return "".join(f"{i},{self.upstream},{a},up,10,0,http,0\n" for i, a in enumerate(servers))
        entries = [
            {
                "index": i,
                "upstream": self.upstream,
                "name": a,
                "status": "up",
                "rise": 10,
                "fall": 0,
                "type": "http",
                "port": 0,
            }
            for i, a in enumerate(servers)
        ]
        return json.dumps({"servers": {"total": len(entries), "generation": 1, "server": entries}})


class _Worker:
    def __init__(self, views: NginxViews, number: int) -> None:
        self.views, self.number, self.upstream = views, number, views.upstream

    def render(self, servers: dict[str, bool]) -> bool:
        return self.views.render(servers, self.number)

    def reload(self) -> None:
        return None


class ConsulWatcher(threading.Thread):
    """Follows `<prefix>/<upstream>/` with blocking queries and reloads nginx on each change. As each
    upsync worker does, it waits `interval` plus a random 0-999 ms after every answer before it asks
    again: a change reaches it at once while its query waits, one right after another a second later."""

    def __init__(
        self, consul_url: str, nginx: Follower, prefix: str = "upstreams", interval: float = UPSYNC_INTERVAL
    ) -> None:
        super().__init__(daemon=True, name="consul-watcher")
        self.consul_url = consul_url
        self.nginx = nginx
        self.interval = interval
        self._random = random.Random()
        self.folder = f"{prefix}/{nginx.upstream}/"
        self.reloads = 0
        self._halt = threading.Event()
        self._held = threading.Event()  # `hold()`: nginx keeps what it has (a slow or stuck upsync)

    def read(self, index: int = 0) -> tuple[int, dict[str, bool]]:
        params = {"recurse": "1", "index": str(index), "wait": "2s"} if index else {"recurse": "1"}
        response = httpx.get(f"{self.consul_url}/v1/kv/{self.folder}", params=params, timeout=10)
        new_index = int(response.headers.get("X-Consul-Index", "0"))
        if response.status_code == 404:
            return new_index, {}
        servers = {}
        for item in response.json():
            address = item["Key"].rsplit("/", 1)[-1]
            if not re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", address):
                continue
            # Read as upsync reads it (an odd value must not stop this watcher, nor be read otherwise).
            raw = base64.b64decode(item["Value"] or "")
            servers[address] = ServerEntry.from_kv(ServerAddress.parse(address), raw, 0).drained
        return new_index, servers

    def run(self) -> None:
        index = 0
        while not self._halt.is_set():
            try:
                new_index, servers = self.read(index)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if new_index < index:
                new_index = 0  # index went backwards: start over (Consul's rule)
            index = new_index
            if self._held.is_set():
                while self._held.is_set() and not self._halt.wait(0.05):
                    pass  # held: nothing read, nothing rendered (bounded by stop())
                index = 0  # let go: the next read answers at once with what Consul holds then
                continue
            if servers and self.nginx.render(servers):
                self.nginx.reload()
                self.reloads += 1
            self._halt.wait(self.interval + self._random.randint(0, 999) / 1000)  # upsync's interval + jitter

    def hold(self) -> None:
        """nginx stops following Consul (keeps routing as it did) until `let_go()`."""
        self._held.set()

    def let_go(self) -> None:
        self._held.clear()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def wrk(url: str, seconds: int, folder: Path) -> subprocess.Popen[str]:
    """Constant POST load without keep-alive (no connection reuse to hide an error); bounded by -d,
    and stopped earlier with SIGINT by `finish`, after which wrk still prints its summary."""
    script = folder / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.body = "x"\nwrk.headers["Connection"] = "close"\n')
    return subprocess.Popen(
        ["wrk", "-t", "2", "-c", "8", "-d", f"{seconds}s", "-s", str(script), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wrk_failures(output: str) -> tuple[int, int]:
    """(requests, failures) from wrk's summary: non-2xx/3xx responses plus socket errors."""
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    failures = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        failures += int(non2xx.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if errors:
        failures += sum(int(g) for g in errors.groups())
    return requests, failures


def finish(process: subprocess.Popen[str]) -> str:
    import signal

    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    return process.communicate(timeout=30)[0]


class SlowUploads:
    """`clients` threads, each POSTing over and over, one connection a request, a body of `chunks` bytes
    sent one byte every `seconds / chunks`. nginx passes the body on as it arrives, so the backend holds
    each request for about `seconds`: stopping a node that still has requests in flight fails them.
    Bounded: each thread stops at `stop()` or after `limit` seconds, and every socket has a timeout."""

    def __init__(
        self, url: str, clients: int = 24, seconds: float = 1.0, chunks: int = 10, limit: float = 180.0
    ) -> None:
        host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
        self.address = (host, int(port))
        self.clients, self.seconds, self.chunks, self.limit = clients, seconds, chunks, limit
        self.requests = 0
        self.failures = 0
        self.errors: list[str] = []  # the first few, to say what failed
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def start(self) -> SlowUploads:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> tuple[int, int]:
        """(requests, failures). Requests in flight finish first (at full speed once halted)."""
        self._halt.set()
        for thread in self._threads:
            thread.join(30)
        return self.requests, self.failures

    def _client(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._halt.is_set() and time.monotonic() < deadline:
            error = self._one()
            with self._lock:
                self.requests += 1
                if error is not None:
                    self.failures += 1
                    if len(self.errors) < 5:
                        self.errors.append(error)

    def _one(self) -> str | None:
        """One request; None when it got a 2xx, else what went wrong."""
        head = (
            f"POST / HTTP/1.1\r\nHost: {self.address[0]}\r\nContent-Length: {self.chunks}\r\n"
            "Content-Type: text/plain\r\nConnection: close\r\n\r\n"
        )
        try:
            with socket.create_connection(self.address, timeout=10) as sock:
                sock.sendall(head.encode())
                for _ in range(self.chunks):
                    sock.sendall(b"x")
                    self._halt.wait(self.seconds / self.chunks)  # pacing the upload (a halt sends the rest at once)
                answer = b""
                for _ in range(64):  # bounded: a few reads carry the whole small answer
                    data = sock.recv(65536)
                    if not data:
                        break
                    answer += data
        except OSError as error:
            return f"{type(error).__name__}: {error}"
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
        parts = status.split()
        if len(parts) >= 2 and parts[1].startswith("2"):
            return None
        return status or "no answer"


def main() -> None:
    """`python -m tests.nginx_harness views --consul URL --port N`: NginxViews following Consul, as
    its own process (a benchmark keeps it out of the measured process, as nginx is)."""
    import argparse

    parser = argparse.ArgumentParser(description="nginx's upstream_show and check_status views, following Consul")
    parser.add_argument("what", choices=["views"])
    parser.add_argument("--consul", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default="app")
    parser.add_argument("--prefix", default="upstreams")
    parser.add_argument("--workers", type=int, default=2, help="nginx workers, each polling Consul on its own")
    parser.add_argument("--upsync-interval", type=float, default=UPSYNC_INTERVAL, help="seconds (+ 0-999 ms jitter)")
    args = parser.parse_args()
    views = NginxViews(args.upstream, port=args.port, workers=args.workers)
    watchers = [
        ConsulWatcher(args.consul, views.worker(n), args.prefix, args.upsync_interval) for n in range(args.workers)
    ]
    for watcher in watchers:
        watcher.start()
    print(json.dumps({"listening": views.url}), flush=True)
    try:
        views.serve()
    except KeyboardInterrupt:
        pass
    finally:
        for watcher in watchers:
            watcher.stop()


if __name__ == "__main__":
    main()
