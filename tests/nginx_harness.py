"""A real nginx (Debian's package) with its own prefix on 127.0.0.1, whose upstream follows Consul the
way nginx-upsync-module does: a watcher does blocking queries on the prefix and, on every change,
rewrites an include file and runs `nginx -s reload`. It also writes what nginx loaded in upsync's
`upstream_show` format, which nginx itself serves at /upstream_list."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx

from bot.processes import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    def __init__(self, folder: Path, upstream: str = "app") -> None:
        self.prefix = folder
        self.upstream = upstream
        self.port = free_port()
        for sub in ("logs", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(folder / sub, 0o777)
        self.conf = folder / "nginx.conf"
        self.include = folder / "upstream.conf"
        self.listing = folder / "upstream_list.txt"
        self.conf.write_text(f"""
user root root;  # the test prefix lives under private temp folders
worker_processes 2;
pid {folder}/nginx.pid;
error_log {folder}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/tmp/body;
    proxy_temp_path {folder}/tmp/proxy;
    fastcgi_temp_path {folder}/tmp/fastcgi;
    uwsgi_temp_path {folder}/tmp/uwsgi;
    scgi_temp_path {folder}/tmp/scgi;
    include {self.include};
    server {{
        listen 127.0.0.1:{self.port};
        location = /upstream_list {{ default_type text/plain; alias {self.listing}; }}
        location / {{
            proxy_pass http://{upstream};
            proxy_next_upstream off;   # no silent retry on another server: every failure shows
            proxy_connect_timeout 2s;
        }}
    }}
}}
""")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def render(self, servers: dict[str, bool]) -> bool:
        """Write the upstream for {address: down}; True when it changed."""
        lines = [f"    server {a} max_fails=0{' down' if down else ''};" for a, down in sorted(servers.items())]
        text = f"upstream {self.upstream} {{\n" + "\n".join(lines) + "\n}\n"
        if self.include.exists() and self.include.read_text() == text:
            return False
        self.include.write_text(text)
        show = [
            f"        server {a} weight=1 max_fails=2 fail_timeout=10s{' down' if down else ''};"
            for a, down in sorted(servers.items())
        ]
        self.listing.write_text(
            f"Upstream name: {self.upstream}; Backend server count: {len(servers)}\n" + "\n".join(show) + "\n"
        )
        return True

    def start(self, servers: dict[str, bool]) -> Nginx:
        self.render(servers)
        subprocess.run([NGINX, "-p", str(self.prefix), "-c", str(self.conf)], check=True, capture_output=True)
        for _ in range(200):
            try:
                httpx.get(f"{self.url}/upstream_list", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start: {(self.prefix / 'logs/error.log').read_text()}")

    def reload(self) -> None:
        subprocess.run(
            [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-s", "reload"], check=True, capture_output=True
        )

    def stop(self) -> None:
        subprocess.run([NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-s", "quit"], capture_output=True)


class ConsulWatcher(threading.Thread):
    """Follows `<prefix>/<upstream>/` with blocking queries and reloads nginx on each change."""

    def __init__(self, consul_url: str, nginx: Nginx, prefix: str = "upstreams") -> None:
        super().__init__(daemon=True, name="consul-watcher")
        self.consul_url = consul_url
        self.nginx = nginx
        self.folder = f"{prefix}/{nginx.upstream}/"
        self.reloads = 0
        self._halt = threading.Event()

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
            value = json.loads(base64.b64decode(item["Value"] or "") or b"{}")
            servers[address] = bool(int(value.get("down", 0)))
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
            if servers and self.nginx.render(servers):
                self.nginx.reload()
                self.reloads += 1

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
