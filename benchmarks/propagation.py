"""How long a Consul KV change takes to reach EVERY nginx worker, on the real stack.

nginx 1.22.1 with nginx-upsync-module and nginx_upstream_check_module (`make realnginx`; the binary
is found as tests/realnginx.py finds it), 2 worker processes, following the Consul stand-in
(bot/standins/consul.py) with the configuration docs/nginx.md gives (`upsync_interval=500ms`). Three
servers in `upstreams/app/`, none running: upstream_show does not need them (the check module marks
them down, which is not upstream_show's ` down`: that one is the KV flag).

Each worker answers `upstream_show` for itself. The location adds `X-Worker: $pid`, nginx listens with
`reuseport` and closes every connection (`keepalive_timeout 0`; one new connection per read), so the
kernel spreads the reads over the workers and each answer names its worker. A change has reached every
worker when, for each worker pid (the master's children, all seen answering before the first change),
the latest answer from that pid shows it (the server listed with, or without, ` down`). Reads every
2 ms, up to a 5 s deadline per change.

Each round (--rounds, default 50; about 3 s each):
- quiet: at least `upsync_interval` + 1 s + 0.3 s since the last change reached every worker, so every
  worker is in its blocking query again; then the floor: the time to read upstream_show from every
  worker once with no change pending (the same reads, so the measurement's own resolution);
- single: one server's `down` set to 1 (the server rotates over the 3), timed from just before the PUT
  to the read that completes "every worker shows it" (expected: tens of ms);
- back-to-back: as soon as that change is seen by every worker, `down` back to 0, timed the same way.
  upsync re-polls `upsync_interval` + random 0-999 ms after each answer, so this one waits for each
  worker's next poll (expected: up to `upsync_interval` + 1 s).

Prints p50/p99 of each (p99 of 50 is the maximum), their ratios to `upsync_interval` + 1 s (the bound
the bot waits for: NginxSettings.propagation) and to the floor, and a JSON line at the end. Exits 2,
saying why, when there is no such nginx. No assertion: figures only.

tests/realnginx.RealNginx is not used: its configuration has no per-worker header, no `reuseport`, and
reaches Consul through a relay (one more hop); this benchmark writes its own (the README's minimal one).

Run: .venv/bin/python benchmarks/propagation.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.processes import free_port, stop, wait_http
from commands.servers import DEFAULTS, encode
from commands.settings import NginxSettings

UPSYNC_INTERVAL = 0.5  # seconds, as in the configuration below
SERVERS = 3
POLL_EVERY = 0.002  # one upstream_show read per 2 ms
DEADLINE = 5.0  # per change
QUIET_MARGIN = 0.3  # beyond upsync_interval + 1 s: each worker's next blocking query has been sent
WORKERS = 2
REQUEST = b"GET /upstream_list HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
LINGER_RESET = struct.pack("ii", 1, 0)  # close with RST: ~500 reads/s leave no TIME_WAIT behind


def nginx_binary() -> tuple[Path | None, str]:
    """The real nginx as tests/realnginx.py finds it ($UPSTREAM_BOT_REALNGINX, else .cache/realnginx)."""
    try:
        from tests.realnginx import binary, skip_reason

        return binary(), skip_reason()
    except (ImportError, AttributeError) as error:  # that module is missing or changed: the same lookup
        given = os.environ.get("UPSTREAM_BOT_REALNGINX")
        path = Path(given) if given else Path(__file__).resolve().parents[1] / ".cache/realnginx/sbin/nginx"
        found = path if path.is_file() and os.access(path, os.X_OK) else None
        return found, f"no nginx with nginx-upsync-module at {path} (tests/realnginx.py: {error}); run `make realnginx`"


def nginx_conf(folder: Path, port: int, consul_port: int, dump: Path) -> str:
    user = "user root root;  # the prefix is a private temp folder\n" if os.geteuid() == 0 else ""
    interval_ms = int(UPSYNC_INTERVAL * 1000)
    temp = "".join(f"    {kind}_temp_path {folder}/tmp/{kind};\n" for kind in ("proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}worker_processes {WORKERS};
pid {folder}/nginx.pid;
error_log {folder}/logs/error.log notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_timeout 0;
    client_body_temp_path {folder}/tmp/body;
{temp}    upstream app {{
        upsync 127.0.0.1:{consul_port}/v1/kv/upstreams/app/ upsync_timeout=6m upsync_interval={interval_ms}ms
               upsync_type=consul strong_dependency=off;
        upsync_dump_path {dump};
        include {dump};
        check interval=1000 rise=2 fall=2 timeout=1000 type=http default_down=false;
        check_http_send "GET /ping HTTP/1.0\\r\\n\\r\\n";
        check_http_expect_alive http_2xx http_3xx;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location /upstream_list {{ upstream_show; add_header X-Worker $pid always; }}
        location /upstream_status {{ check_status; }}
        location / {{ proxy_pass http://app; proxy_next_upstream off; }}
    }}
}}
"""


def read_list(port: int) -> tuple[int, str]:
    """One upstream_show answer on a new connection: (the worker's pid, the body)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
        sock.sendall(REQUEST)
        chunks = []
        for _ in range(256):  # bounded: the answer is a few hundred bytes
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    worker = re.search(rb"(?im)^X-Worker:\s*(\d+)", head)
    if not head.startswith(b"HTTP/1.1 200") or worker is None:
        raise RuntimeError(f"unexpected upstream_show answer: {head[:200]!r}")
    return int(worker.group(1)), body.decode("latin-1")


def shows(body: str, server: str, down: bool) -> bool:
    line = re.search(rf"(?m)^\s*server {re.escape(server)}\b([^;\n]*)", body)
    return line is not None and (" down" in line.group(1)) == down


def every_worker_shows(port: int, pids: set[int], server: str, down: bool, start: float) -> tuple[float | None, int]:
    """Seconds from `start` to the read after which the latest answer of every worker shows `server`
    with (or without) ` down`; None past the deadline. Also the number of reads."""
    latest: dict[int, bool] = {}
    for reads in range(1, int(DEADLINE / POLL_EVERY) + 1):
        began = time.perf_counter()
        pid, body = read_list(port)
        if pid not in pids:
            raise RuntimeError(f"an answer from pid {pid}, not one of the workers {sorted(pids)}")
        latest[pid] = shows(body, server, down)
        now = time.perf_counter()
        if len(latest) == len(pids) and all(latest.values()):
            return now - start, reads
        if now - start > DEADLINE:
            break
        time.sleep(max(0.0, began + POLL_EVERY - time.perf_counter()))
    return None, reads


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


class Nginx:
    """The real nginx in its own prefix; stopped through its pid file."""

    def __init__(self, binary: Path, folder: Path, port: int, consul_port: int, servers: list[str]) -> None:
        self.binary, self.folder, self.port = binary, folder, port
        for sub in ("logs", "tmp", "conf"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(folder / sub, 0o777)
        dump = folder / "conf" / "app-dump.conf"
        dump.write_text("".join(f"server {s} weight=1 max_fails=2 fail_timeout=10s;\n" for s in servers))
        os.chmod(dump, 0o666)
        self.conf = folder / "conf" / "nginx.conf"
        self.conf.write_text(nginx_conf(folder, port, consul_port, dump))
        self.pid_file = folder / "nginx.pid"
        self.workers: set[int] = set()

    def start(self) -> None:
        started = subprocess.run(
            [str(self.binary), "-p", str(self.folder), "-c", str(self.conf)], capture_output=True, text=True, timeout=30
        )
        if started.returncode != 0:
            raise RuntimeError(f"nginx did not start: {started.stderr.strip()}")
        master = self.master()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and master is not None:
            self.workers = set(self.children(master))
            if len(self.workers) == WORKERS:
                break
            time.sleep(0.05)
        if len(self.workers) != WORKERS:
            raise RuntimeError(f"nginx runs {len(self.workers)} workers, not {WORKERS}: {self.error_log()}")
        seen: set[int] = set()
        for _ in range(2000):  # reuseport: each new connection lands on a worker the kernel picks
            seen.add(read_list(self.port)[0])
            if seen >= self.workers:
                return
            time.sleep(POLL_EVERY)
        raise RuntimeError(f"upstream_show answered only from {sorted(seen)}, workers {sorted(self.workers)}")

    def master(self) -> int | None:
        """The master's pid from the pid file, if that process is still this nginx."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.conf).encode() in cmdline else None

    @staticmethod
    def children(pid: int) -> list[int]:
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def stop(self) -> None:
        master = self.master()
        if master is None:
            return
        workers = self.children(master)
        os.kill(master, signal.SIGTERM)  # fast shutdown: the master stops its workers
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{master}").exists():
            time.sleep(0.05)
        for pid in [master, *workers]:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)

    def error_log(self) -> str:
        path = self.folder / "logs" / "error.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def put(consul: httpx.Client, server: str, down: int) -> None:
    consul.put(f"/v1/kv/upstreams/app/{server}", content=encode({**DEFAULTS, "down": down})).raise_for_status()


def run(binary: Path, rounds: int) -> dict[str, list[float] | int]:
    consul_port, nginx_port = free_port(), free_port()
    servers = [f"127.0.0.1:{free_port()}" for _ in range(SERVERS)]  # nothing listens there
    consul_process = subprocess.Popen(
        [sys.executable, "-m", "bot.standins.consul", "--port", str(consul_port)], stdout=subprocess.DEVNULL
    )
    single: list[float] = []
    back: list[float] = []
    floor: list[float] = []
    gaps: list[float] = []  # the back-to-back write's distance from the first write
    reads = 0
    missed = 0
    with tempfile.TemporaryDirectory(prefix="propagation-") as tmp:
        nginx = Nginx(binary, Path(tmp), nginx_port, consul_port, servers)
        try:
            wait_http(f"http://127.0.0.1:{consul_port}/_standin/ready", timeout=20)
            with httpx.Client(base_url=f"http://127.0.0.1:{consul_port}", timeout=10, trust_env=False) as consul:
                for server in servers:
                    put(consul, server, 0)
                nginx.start()
                settled = time.perf_counter()  # each worker's first poll answered by now, or soon
                for i in range(rounds):
                    server = servers[i % SERVERS]
                    time.sleep(max(0.0, settled + UPSYNC_INTERVAL + 1.0 + QUIET_MARGIN - time.perf_counter()))
                    seen, count = every_worker_shows(nginx_port, nginx.workers, server, False, time.perf_counter())
                    reads += count
                    if seen is None:
                        raise RuntimeError(f"the workers do not agree on {server} serving: {nginx.error_log()}")
                    floor.append(seen)
                    first = time.perf_counter()
                    for down, into in ((1, single), (0, back)):
                        start = first if down else time.perf_counter()
                        if not down:
                            gaps.append(start - first)
                        put(consul, server, down)
                        seen, count = every_worker_shows(nginx_port, nginx.workers, server, bool(down), start)
                        reads += count
                        if seen is None:
                            missed += 1
                            seen = DEADLINE
                        into.append(seen)
                    settled = time.perf_counter()
        finally:
            nginx.stop()
            stop([consul_process])
    return {"single": single, "back": back, "floor": floor, "gaps": gaps, "reads": reads, "missed": missed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50, help="single and back-to-back changes, each (>= 1)")
    args = parser.parse_args()
    binary, reason = nginx_binary()
    if binary is None:
        print(f"propagation: cannot run: {reason}", file=sys.stderr)
        sys.exit(2)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (finally) on a plain kill too
    began = time.monotonic()
    figures = run(binary, max(1, args.rounds))
    runtime = time.monotonic() - began
    bound = NginxSettings(upsync_interval=UPSYNC_INTERVAL).propagation
    floor = figures["floor"]
    assert isinstance(floor, list)
    floor50, floor99 = statistics.median(floor), percentile(floor, 0.99)
    print(
        f"propagation: KV write -> every nginx worker ({WORKERS}) routing accordingly; nginx {binary}, "
        f"upsync_interval {UPSYNC_INTERVAL * 1000:.0f} ms, {args.rounds} rounds, {runtime:.0f} s"
    )
    print(
        f"  floor (reading upstream_show from every worker once, nothing pending, reads every "
        f"{POLL_EVERY * 1000:.0f} ms): p50 {floor50 * 1000:.1f} ms   p99 {floor99 * 1000:.1f} ms"
    )
    result: dict[str, float | int] = {"floor_p50_s": round(floor50, 4), "floor_p99_s": round(floor99, 4)}
    for key, label in (("single", "single (workers in their blocking query)"), ("back", "back-to-back")):
        times = figures[key]
        assert isinstance(times, list)
        p50, p99 = statistics.median(times), percentile(times, 0.99)
        print(f"  {label}: p50 {p50 * 1000:.1f} ms   p99 {p99 * 1000:.1f} ms   max {max(times) * 1000:.1f} ms")
        print(
            f"    ratio to upsync_interval + 1 s ({bound:g} s): p50 {p50 / bound:.3f}   p99 {p99 / bound:.3f}   "
            f"ratio to the floor: p50 {p50 / floor50:.1f}   p99 {p99 / floor99:.1f}"
        )
        result |= {
            f"{key}_p50_s": round(p50, 4),
            f"{key}_p99_s": round(p99, 4),
            f"{key}_p50_to_bound": round(p50 / bound, 4),
            f"{key}_p99_to_bound": round(p99 / bound, 4),
            f"{key}_p50_to_floor": round(p50 / floor50, 2),
            f"{key}_p99_to_floor": round(p99 / floor99, 2),
        }
    gaps = figures["gaps"]
    assert isinstance(gaps, list)
    print(
        f"  the back-to-back write came p50 {statistics.median(gaps) * 1000:.0f} ms after the first write; "
        f"reads {figures['reads']}; changes past the {DEADLINE:g} s deadline: {figures['missed']}"
    )
    result |= {"bound_s": bound, "missed": figures["missed"], "runtime_s": round(runtime, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
