"""The production stack for the end-to-end tests: nginx built with nginx-upsync-module and
nginx_upstream_check_module (`make realnginx`, from third_party/realnginx/build.sh), with its own prefix
under a temp folder, 2 workers, listening on a free 127.0.0.1 port, its upstream read live from the
Consul stand-in by upsync and health-checked by the check module, configured as the bot expects it
(docs: third_party/realnginx/README.md, docs/nginx.md):

    upsync 127.0.0.1:<port>/v1/kv/upstreams/<upstream>/ upsync_timeout=6m upsync_interval=500ms
           upsync_type=consul strong_dependency=off;
    upsync_dump_path ...; include ...;
    check interval=1000 rise=2 fall=2 timeout=1000 type=http default_down=false;
    location /upstream_list { upstream_show; }   location /upstream_status { check_status; }

upsync reaches Consul through `ConsulLink`, a plain TCP relay in front of the stand-in (each upsync
request is one HTTP/1.0 connection; the relay passes its bytes both ways unchanged). The relay is what
lets a test freeze nginx's view, as a stuck or slow link to Consul would: `hold()` keeps every answer
from reaching nginx (a blocking query answered meanwhile is asked again once let go, and then answers
with what Consul holds at that moment), `let_go()` ends that. It also counts the changes nginx was
handed (distinct `X-Consul-Index` values of 200 answers).

The binary: $UPSTREAM_BOT_REALNGINX, else `.cache/realnginx/sbin/nginx` in the repository (what
`make realnginx` builds, and `make test` first). Without it the tests that need it skip, saying how
to get it (`SKIP_REASON`)."""

from __future__ import annotations

import functools
import os
import re
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import httpx

from bot.processes import free_port

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "third_party" / "realnginx" / "build.sh"
CACHED = REPO / ".cache" / "realnginx" / "sbin" / "nginx"
UPSYNC_INTERVAL = 0.5  # seconds, as in the configuration below (the apps' nginx.upsync_interval)


def binary() -> Path | None:
    """The real nginx to run, or None (also when it lacks either module: a half-done build skips, it
    does not fail every test that starts it)."""
    given = os.environ.get("UPSTREAM_BOT_REALNGINX")
    path = Path(given) if given else CACHED
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None
    return path if _has_modules(str(path)) else None


@functools.cache
def _has_modules(path: str) -> bool:
    try:
        built = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10, check=False).stderr
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "nginx-upsync-module" in built and "nginx_upstream_check_module" in built


def skip_reason() -> str:
    where = os.environ.get("UPSTREAM_BOT_REALNGINX") or str(CACHED)
    how = (
        "run `make realnginx` (root: it apt-gets build dependencies and `apt-get source nginx`)"
        if BUILD_SCRIPT.is_file()
        else f"it is built by third_party/realnginx/build.sh, which is not here ({BUILD_SCRIPT}); restore it "
        "from the repository and run `make realnginx` as root, or build nginx 1.22 with "
        "nginx-upsync-module and nginx_upstream_check_module (PR #93) and set UPSTREAM_BOT_REALNGINX"
    )
    return f"no nginx with nginx-upsync-module and nginx_upstream_check_module at {where}: {how}"


class ConsulLink(socketserver.ThreadingTCPServer):
    """A TCP relay between upsync and the Consul stand-in; `hold()` / `let_go()` freeze nginx's view."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, consul_url: str) -> None:
        host, port = consul_url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        self.consul = (host, int(port))
        self.changes = 0  # distinct X-Consul-Index values handed to nginx in 200 answers
        self.requests = 0
        self._indexes: set[int] = set()
        self._lock = threading.Lock()
        self._held = threading.Event()
        self._halt = threading.Event()
        super().__init__(("127.0.0.1", 0), _Relay)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="consul-link")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def start(self) -> ConsulLink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self.shutdown()
        self.server_close()

    def hold(self) -> None:
        """nginx stops following Consul (keeps routing as it did) until `let_go()`."""
        self._held.set()

    def let_go(self) -> None:
        self._held.clear()

    @property
    def held(self) -> bool:
        return self._held.is_set()

    def wait_free(self) -> None:
        """Returns once not held (or stopping); bounded by the link's life."""
        while self._held.is_set() and not self._halt.wait(0.05):
            pass

    def ask(self, request: bytes) -> bytes:
        """The stand-in's whole answer to one request (HTTP/1.0: it closes the connection at the end)."""
        with socket.create_connection(self.consul, timeout=420) as sock:  # > a blocking query's 5 min
            sock.sendall(request)
            chunks = []
            for _ in range(100_000):  # bounded: KV answers here are a few KB
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)

    def record(self, answer: bytes) -> None:
        head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        index = re.search(r"(?im)^X-Consul-Index:\s*(\d+)", head)
        if head.startswith("HTTP/1.") and head.split()[1] == "200" and index:
            with self._lock:
                if int(index.group(1)) not in self._indexes:
                    self._indexes.add(int(index.group(1)))
                    self.changes += 1


class _Relay(socketserver.BaseRequestHandler):
    server: ConsulLink

    def handle(self) -> None:
        link = self.server
        self.request.settimeout(30)
        request = b""
        for _ in range(64):  # upsync's GET is one small write; bounded
            data = self.request.recv(65536)
            if not data:
                return
            request += data
            if b"\r\n\r\n" in request:
                break
        with link._lock:
            link.requests += 1
        answer = b""
        for _ in range(10_000):  # each round is one answer from Consul; a hold repeats the question
            link.wait_free()
            try:
                answer = link.ask(request)
            except OSError:
                return  # Consul gone: upsync sees the connection close, as with a dead agent
            if not link.held:
                break
        link.record(answer)
        try:
            self.request.sendall(answer)
        except OSError:
            pass


def _dump_line(address: str, down: bool) -> str:
    return f"server {address} weight=1 max_fails=2 fail_timeout=10s{' down' if down else ''};\n"


class RealNginx:
    """nginx with upsync and the check module, following `link`; its own prefix in `folder`."""

    def __init__(self, folder: Path, link: ConsulLink, upstream: str = "app", prefix: str = "upstreams") -> None:
        found = binary()
        if found is None:
            raise RuntimeError(skip_reason())
        self.binary = found
        self.prefix = folder
        self.upstream = upstream
        self.link = link
        self.port = free_port()
        for sub in ("logs", "tmp", "conf"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(folder / sub, 0o777)
        self.conf = folder / "conf" / "nginx.conf"
        self.dump = folder / "conf" / f"{upstream}-dump.conf"
        interval_ms = int(UPSYNC_INTERVAL * 1000)
        self.conf.write_text(f"""
user root root;  # the test prefix lives under private temp folders
worker_processes 2;
pid {folder}/nginx.pid;
error_log {folder}/logs/error.log notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/tmp/body;
    proxy_temp_path {folder}/tmp/proxy;
    fastcgi_temp_path {folder}/tmp/fastcgi;
    uwsgi_temp_path {folder}/tmp/uwsgi;
    scgi_temp_path {folder}/tmp/scgi;
    upstream {upstream} {{
        upsync {link.address}/v1/kv/{prefix}/{upstream}/ upsync_timeout=6m upsync_interval={interval_ms}ms
               upsync_type=consul strong_dependency=off;
        upsync_dump_path {self.dump};
        include {self.dump};
        check interval=1000 rise=2 fall=2 timeout=1000 type=http default_down=false;
        check_http_send "GET /ping HTTP/1.0\\r\\n\\r\\n";
        check_http_expect_alive http_2xx http_3xx;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location /upstream_list {{ upstream_show; }}
        location /upstream_status {{ check_status; }}
        location / {{
            proxy_pass http://{upstream};
            proxy_next_upstream off;   # no silent retry on another server: every failure shows
            proxy_request_buffering off;  # a body is passed on as it arrives: slow uploads stay in flight
            proxy_connect_timeout 2s;
        }}
    }}
}}
""")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), "-p", str(self.prefix), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def start(self, servers: dict[str, bool]) -> RealNginx:
        """Starts from `servers` ({address: down}) in the dump file, as after a restart with
        strong_dependency=off, then follows Consul (which should hold the same)."""
        self.dump.write_text("".join(_dump_line(a, d) for a, d in servers.items()))
        os.chmod(self.dump, 0o666)
        started = self._run()
        if started.returncode != 0:
            raise RuntimeError(f"nginx did not start: {started.stderr}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/upstream_list", timeout=1, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not answer: {self.error_log()}")

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def workers(self) -> int:
        """How many worker processes nginx runs (children of its master)."""
        pid = (self.prefix / "nginx.pid").read_text().strip()
        children = Path(f"/proc/{pid}/task/{pid}/children")
        return len(children.read_text().split()) if children.exists() else 0

    def stop(self) -> None:
        self._run("-s", "stop")
        pid_file = self.prefix / "nginx.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
