"""A simulated fleet for the watch benchmarks, and the floors they are compared with.

- `serve`: one process answering `GET` with `200 pong` (keep-alive) on a range of ports of 127.0.0.1,
  one listening socket per simulated node, written on asyncio's Protocol (no HTTP library: a few
  microseconds a request). A control port takes `GET /set?mode=ok|503|refuse|hang&ports=20000-20009,20042`
  (refuse: the port's listening socket is closed, its connections aborted; hang: requests are read,
  never answered) and `GET /stats` (requests, connections accepted and open, CPU seconds, as JSON).
  `Fleet` starts several of these (each its own descriptor budget: a listening socket and a kept-alive
  connection per node) and sums their figures.
- `seed_consul`: `upstreams/<app>/127.0.0.1:<port>` for every node, 128 keys a Consul transaction
  (10,000 keys in about 3 s on the stand-in, whose transactions copy its whole KV first).
- `write_config`: the bot's YAML for those apps (health.url, interval, timeout, window, rise,
  watch.concurrency); without a health url nothing is watched.
- `slack-floor`: the floor for acknowledgement latency: a bare aiohttp endpoint that checks the same
  Slack signature, parses the same form and answers 200, nothing else.
- `slack-standin`: the Slack Web API stand-in in a process of its own (so its work does not share the
  measuring process's interpreter), with `GET /_bench/calls` counting the calls per method.
- `CommandClient`: signed slash commands over connections opened beforehand, timed from the first byte
  out to the status line back; `steady` sends them at a fixed rate.

Run `python benchmarks/fleet.py selftest` to see what one fleet process costs per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.processes import free_port  # noqa: E402  (benchmarks import it from here too)
from bot.processes import stop as stop_all  # noqa: E402

FIRST_PORT = 20000  # the fleet's ports stay below the ephemeral range (32768+)
PER_PROCESS = 2500  # nodes per server process: 2 descriptors each (listening + kept-alive), well under 20,000
VALUE = '{"weight":1,"max_fails":2,"fail_timeout":10,"down":0}'  # commands.servers.encode(DEFAULTS)
TXN_OPS = 128  # keys per Consul transaction: Consul's limit (the stand-in copies its KV once per transaction)
MODES = ("ok", "503", "refuse", "hang")
CHANNEL = "C0DEPLOY"
PONG = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\npong"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nunavailable"


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def parse_ports(text: str) -> list[int]:
    """ "20000-20009,20042" -> those ports."""
    ports: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        ports.extend(range(int(low), int(high or low) + 1))
    return ports


def format_ports(ports: Iterable[int]) -> str:
    """Ports as ranges, the inverse of `parse_ports`."""
    out: list[str] = []
    ordered = sorted(set(ports))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


# -- the server process --------------------------------------------------------------------------------


class FleetServer:
    def __init__(self, ports: Sequence[int], backlog: int) -> None:
        self.ports = set(ports)
        self.backlog = backlog
        self.mode: dict[int, str] = {}  # port -> mode other than "ok"
        self.servers: dict[int, asyncio.AbstractServer] = {}
        self.open: dict[int, set[asyncio.Transport]] = {}
        self.requests = 0
        self.accepted = 0

    async def listen(self, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(self.backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        self.servers[port] = await loop.create_server(lambda: NodeProtocol(self, port), sock=sock)

    async def set_mode(self, mode: str, ports: Iterable[int]) -> int:
        changed = 0
        for port in ports:
            if port not in self.ports:
                continue
            before = self.mode.get(port, "ok")
            if mode == "ok":
                self.mode.pop(port, None)
            else:
                self.mode[port] = mode
            if mode == "refuse" and port in self.servers:
                self.servers.pop(port).close()
                for transport in list(self.open.get(port, ())):
                    transport.abort()
            elif mode != "refuse" and before == "refuse" and port not in self.servers:
                await self.listen(port)
            changed += 1
        return changed

    def stats(self) -> dict[str, object]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "open": sum(len(t) for t in self.open.values()),
            "listening": len(self.servers),
            "cpu": usage.ru_utime + usage.ru_stime,
            "modes": {m: len([p for p, v in self.mode.items() if v == m]) for m in MODES[1:]},
        }


class NodeProtocol(asyncio.Protocol):
    """One connection to one simulated node: every complete request head gets its answer (GETs have no body)."""

    __slots__ = ("buffer", "fleet", "port", "transport")

    def __init__(self, fleet: FleetServer, port: int) -> None:
        self.fleet = fleet
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fleet.accepted += 1
        self.fleet.open.setdefault(self.port, set()).add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        peers = self.fleet.open.get(self.port)
        if peers is not None and self.transport is not None:
            peers.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        count = buffer.count(b"\r\n\r\n")
        if not count:
            self.buffer = buffer[-65536:]
            return
        end = buffer.rfind(b"\r\n\r\n") + 4
        heads, self.buffer = buffer[:end], buffer[end:]
        self.fleet.requests += count
        mode = self.fleet.mode.get(self.port, "ok")
        if mode == "hang":
            return
        assert self.transport is not None
        self.transport.write((PONG if mode == "ok" else UNAVAILABLE) * count)
        if b"onnection: close" in heads or b"ONNECTION: CLOSE" in heads:
            self.transport.close()


async def control_handler(fleet: FleetServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(10):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                parsed = urlsplit(target)
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                if parsed.path == "/set" and query.get("mode") in MODES:
                    body: object = {"changed": await fleet.set_mode(query["mode"], parse_ports(query.get("ports", "")))}
                else:
                    body = fleet.stats()
                text = json.dumps(body).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(text), text)
                )
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, IndexError, ValueError):
        pass
    finally:
        writer.close()


async def serve_fleet(ports: list[int], control_port: int, modes: dict[str, list[int]], backlog: int) -> None:
    fleet = FleetServer(ports, backlog)
    for port in ports:
        await fleet.listen(port)
    for mode, chosen in modes.items():
        await fleet.set_mode(mode, chosen)
    control = await asyncio.start_server(lambda r, w: control_handler(fleet, r, w), "127.0.0.1", control_port)
    print(json.dumps({"ready": len(fleet.servers), "control": control_port}), flush=True)
    async with control:
        await asyncio.Event().wait()  # until terminated


# -- the parent's view of the fleet ---------------------------------------------------------------------


def read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line of the process's stdout within `timeout` (b"" if none)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(process.stdout.fileno(), 1)
        if not chunk:
            break
        line += chunk
    return line


def proc_cpu(pid: int) -> float:
    """CPU seconds of a live process (utime + stime, plus its waited-for children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    # after the ")": state is field 0; utime 11, stime 12, cutime 13, cstime 14
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo, seen = 0.0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        total += proc_cpu(current)
        todo.extend(children.get(current, ()))
    return total


def rss_bytes(pid: int | None = None) -> int:
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Fleet:
    """Server processes answering for `ports`, `per_process` ports each. Use as a context manager."""

    ports: list[int]
    modes: dict[str, list[int]] = field(default_factory=dict)
    per_process: int = PER_PROCESS
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    controls: list[int] = field(default_factory=list)

    def __enter__(self) -> Fleet:
        try:
            for start in range(0, len(self.ports), self.per_process):
                chunk = self.ports[start : start + self.per_process]
                control = free_port()
                taken = set(chunk)
                args = [
                    sys.executable,
                    __file__,
                    "serve",
                    "--ports",
                    format_ports(chunk),
                    "--control-port",
                    str(control),
                ]
                for mode, chosen in self.modes.items():
                    mine = [p for p in chosen if p in taken]
                    if mine:
                        args += [f"--{mode}", format_ports(mine)]
                self.processes.append(subprocess.Popen(args, stdout=subprocess.PIPE))
                self.controls.append(control)
            for process in self.processes:
                line = read_line(process, 60)
                if b'"ready"' not in line:
                    raise RuntimeError(f"a fleet process did not start (exit {process.poll()}): {line!r}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_all(self.processes)

    def stats(self) -> dict[str, float]:
        """Summed over the processes: requests, accepted, open, listening, cpu."""
        import httpx

        total: dict[str, float] = {}
        with httpx.Client(trust_env=False, timeout=10) as client:
            for control in self.controls:
                answer = client.get(f"http://127.0.0.1:{control}/stats").json()
                for key, value in answer.items():
                    if isinstance(value, int | float):
                        total[key] = total.get(key, 0) + value
        return total

    def set_mode(self, mode: str, ports: Iterable[int]) -> int:
        import httpx

        wanted = format_ports(ports)
        changed = 0
        with httpx.Client(trust_env=False, timeout=30) as client:
            for control in self.controls:
                answer = client.get(f"http://127.0.0.1:{control}/set", params={"mode": mode, "ports": wanted})
                changed += int(answer.json()["changed"])
        return changed

    def cpu(self) -> float:
        return sum(proc_cpu(p.pid) for p in self.processes)


def layout(apps: int, nodes: int, first_port: int = FIRST_PORT) -> dict[str, list[int]]:
    """`nodes` nodes in all, spread over `apps` apps (app0, app1, ...) on consecutive ports."""
    per, extra = divmod(nodes, apps)
    out: dict[str, list[int]] = {}
    port = first_port
    for i in range(apps):
        count = per + (1 if i < extra else 0)
        out[f"app{i}"] = list(range(port, port + count))
        port += count
    return out


def failing(ports: Sequence[int], share: float, modes: Sequence[str] = ("503", "refuse")) -> dict[str, list[int]]:
    """About `share` of the ports, spread evenly, taking the modes in turn."""
    count = round(len(ports) * share)
    if count <= 0:
        return {}
    step = len(ports) / count
    chosen = [ports[int(i * step + step / 2)] for i in range(count)]
    out: dict[str, list[int]] = {}
    for i, port in enumerate(chosen):
        out.setdefault(modes[i % len(modes)], []).append(port)
    return out


def ports_free(ports: Iterable[int]) -> list[int]:
    """The ports of `ports` that something already listens on (a fleet cannot use them)."""
    busy = []
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


async def seed_consul(consul_url: str, apps: dict[str, list[int]], prefix: str = "upstreams") -> int:
    """Every node as `<prefix>/<app>/127.0.0.1:<port>`, in transactions sent 8 at a time."""
    import httpx

    value = base64.b64encode(VALUE.encode()).decode()
    ops = [
        {"KV": {"Verb": "set", "Key": f"{prefix}/{app}/127.0.0.1:{port}", "Value": value}}
        for app, ports in apps.items()
        for port in ports
    ]
    batches = [ops[i : i + TXN_OPS] for i in range(0, len(ops), TXN_OPS)]
    gate = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=consul_url, trust_env=False, timeout=30) as client:

        async def send(batch: list[dict[str, object]]) -> None:
            async with gate:
                answer = await client.put("/v1/txn", json=batch)
                answer.raise_for_status()

        await asyncio.gather(*(send(b) for b in batches))
    return len(ops)


def write_config(
    path: Path,
    apps: Iterable[str],
    consul_url: str,
    health: bool = True,
    interval: float = 10.0,
    timeout: float = 3.0,
    window: float = 30.0,
    rise: int = 2,
    concurrency: int = 64,
    channel: str = CHANNEL,
) -> Path:
    """The bot's config for `apps` (upstream = the app's name); `health=False`: nothing to watch."""
    import yaml

    settings: dict[str, object] = {}
    for name in apps:
        app: dict[str, object] = {"upstream": name}
        if health:
            app["health"] = {
                "url": "http://{host}:{port}/ping",
                "interval": f"{interval:g}s",
                "timeout": f"{timeout:g}s",
                "window": f"{window:g}s",
                "rise": rise,
            }
            app["watch"] = {"concurrency": concurrency}
        settings[name] = app
    raw = {"consul": {"addresses": [consul_url], "timeout": "10s"}, "slack": {"channel": channel}, "apps": settings}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def start_consul(port: int) -> subprocess.Popen[bytes]:
    from bot.processes import wait_http

    process = subprocess.Popen(
        [sys.executable, "-m", "bot.standins.consul", "--port", str(port)], stdout=subprocess.DEVNULL, cwd=ROOT
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/_standin/ready", timeout=20)
    except BaseException:
        stop_all([process])
        raise
    return process


# -- Slack: the floor endpoint, the stand-in in a process, the client --------------------------------------


def verify_slack(secret: bytes, timestamp: str, body: bytes, signature: str, now: float) -> bool:
    """Slack's v0 signature check, as Bolt does it: timestamp within 5 minutes, HMAC-SHA256 compared in
    constant time."""
    try:
        if abs(now - int(timestamp)) > 300:
            return False
    except ValueError:
        return False
    digest = hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"v0={digest}", signature)


def slack_floor_app(secret: str):  # type: ignore[no-untyped-def]
    from aiohttp import web

    key = secret.encode()

    async def events(request: web.Request) -> web.Response:
        body = await request.read()
        headers = request.headers
        if not verify_slack(
            key,
            headers.get("X-Slack-Request-Timestamp", ""),
            body,
            headers.get("X-Slack-Signature", ""),
            time.time(),
        ):
            return web.Response(status=401)
        form = parse_qs(body.decode())
        if "command" not in form and "payload" not in form:
            return web.Response(status=400)
        return web.Response(status=200)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/slack/events", events)
    app.router.add_get("/healthz", healthz)
    return app


def start_slack_floor(secret: str) -> tuple[subprocess.Popen[bytes], int]:
    """The bare endpoint in a process of its own; (process, port)."""
    from bot.processes import wait_http

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "slack-floor", "--port", str(port)],
        env={**os.environ, "SLACK_SIGNING_SECRET": secret},
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=20)
    except BaseException:
        stop_all([process])
        raise
    return process, port


def slack_standin_app():  # type: ignore[no-untyped-def]
    from aiohttp import web

    from bot.standins.slack import SlackStandIn

    standin = SlackStandIn()
    app = standin.app()

    async def calls(request: web.Request) -> web.Response:
        counts: dict[str, int] = {}
        for call in standin.calls():
            counts[call.method] = counts.get(call.method, 0) + 1
        return web.json_response(counts)

    app.router.add_get("/_bench/calls", calls)
    return app


def start_slack_standin() -> tuple[subprocess.Popen[bytes], str]:
    """The Slack stand-in in a process of its own; (process, its base URL)."""
    from bot.processes import wait_http

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "slack-standin", "--port", str(port)], stdout=subprocess.DEVNULL, cwd=ROOT
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/_bench/calls", timeout=20)
    except BaseException:
        stop_all([process])
        raise
    return process, f"http://127.0.0.1:{port}"


def slack_calls(url: str) -> dict[str, int]:
    import httpx

    try:
        return dict(httpx.get(f"{url}/_bench/calls", timeout=10, trust_env=False).json())
    except (httpx.HTTPError, ValueError):
        return {}


def signed_command(host: str, text: str, n: int, secret: str, keep_alive: bool = True) -> bytes:
    """A signed `/upstream <text>` as Slack posts it (a fresh trigger_id each)."""
    from tests.helpers import command_body, sign

    body = command_body("/upstream", text, trigger_id=f"bench-{n}-{time.monotonic_ns()}")
    headers = {
        "Host": host,
        "Content-Type": "application/x-www-form-urlencoded",
        **sign(body, secret),
        "Content-Length": str(len(body)),
    }
    if not keep_alive:
        headers["Connection"] = "close"
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST /slack/events HTTP/1.1\r\n{head}\r\n{body}".encode()


@dataclass
class Acks:
    times: list[float] = field(default_factory=list)  # seconds, first byte out to status line back
    errors: list[str] = field(default_factory=list)
    all_busy: int = 0  # sends that found every open connection busy (a new one was opened)
    wall: float = 0.0
    at: list[float] = field(default_factory=list)  # each time's send, seconds after the run began
    origin: float = 0.0  # time.perf_counter() when the run began

    def windows(self, width: float) -> list[tuple[float, int, float, float]]:
        """(start, count, p99, max) of the times sent in each `width` seconds of the run."""
        buckets: dict[int, list[float]] = {}
        for at, took in zip(self.at, self.times, strict=True):
            buckets.setdefault(int(at // width), []).append(took)
        out = []
        for i in sorted(buckets):
            part = Acks(sorted(buckets[i]))
            out.append((i * width, len(part.times), part.quantile(0.99), part.times[-1]))
        return out

    def quantile(self, q: float) -> float:
        ordered = sorted(self.times)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class CommandClient:
    """Slash commands over keep-alive connections opened beforehand (as Slack's pool would be); a
    minimal client, so that the measuring side adds little of its own to the figure."""

    def __init__(self, host: str, port: int, secret: str, text: str) -> None:
        self.host, self.port, self.secret, self.text = host, port, secret, text
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0
        self.sent = 0

    async def open(self, count: int) -> None:
        for _ in range(count):
            self.idle.append(await asyncio.open_connection(self.host, self.port))
            self.opened += 1

    async def one(self, acks: Acks, timeout: float = 10.0) -> None:
        if not self.idle:
            acks.all_busy += 1
            await self.open(1)
        reader, writer = self.idle.pop()
        self.sent += 1
        request = signed_command(f"{self.host}:{self.port}", self.text, self.sent, self.secret)
        try:
            async with asyncio.timeout(timeout):
                started = time.perf_counter()
                writer.write(request)
                status = await reader.readline()
                elapsed = time.perf_counter() - started
                head = await reader.readuntil(b"\r\n\r\n")
                length = None
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    raise ValueError("no Content-Length: cannot keep the connection")
                await reader.readexactly(length)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            acks.errors.append(f"{type(error).__name__}: {error}")
            writer.close()
            return
        if b" 200 " not in status:
            acks.errors.append(f"answered {status.strip()!r}")
        else:
            acks.times.append(elapsed)
            acks.at.append(started - acks.origin)
        self.idle.append((reader, writer))

    async def steady(self, rate: float, seconds: float, connections: int = 16, max_open: int = 200) -> Acks:
        """`rate` commands a second for `seconds` (bounded in count and time)."""
        acks = Acks()
        await self.open(connections)
        await self.one(Acks())  # warm-up (not counted)
        tasks: set[asyncio.Task[None]] = set()
        started = acks.origin = time.perf_counter()
        for i in range(int(rate * seconds)):
            due = started + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if not self.idle and self.opened >= max_open:
                acks.errors.append("no connection free")
                continue
            task = asyncio.get_running_loop().create_task(self.one(acks))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        acks.wall = time.perf_counter() - started
        self.close()
        return acks

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


# -- command line -------------------------------------------------------------------------------------


async def selftest(nodes: int, seconds: float, connections: int) -> None:
    """A fleet process under a bare keep-alive client: requests a second and the fleet's CPU a request."""
    ports = list(range(FIRST_PORT, FIRST_PORT + nodes))
    busy = ports_free(ports)
    if busy:
        raise SystemExit(f"ports taken: {format_ports(busy)}")
    with Fleet(ports) as fleet:
        links = [await asyncio.open_connection("127.0.0.1", ports[i % nodes]) for i in range(connections)]
        before, cpu_before = fleet.stats(), fleet.cpu()
        count, started = 0, time.monotonic()

        async def loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
            done = 0
            while time.monotonic() - started < seconds:
                writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                await reader.readuntil(b"pong")
                done += 1
            writer.close()
            return done

        count = sum(await asyncio.gather(*(loop(r, w) for r, w in links)))
        wall = time.monotonic() - started
        after, cpu_after = fleet.stats(), fleet.cpu()
    served = after["requests"] - before["requests"]
    cpu = cpu_after - cpu_before
    print(f"fleet selftest: {nodes} ports, {connections} kept-alive connections, {wall:.1f} s")
    print(f"  requests {count} ({served:.0f} seen by the fleet)   {count / wall:.0f} req/s")
    print(
        f"  fleet CPU {cpu:.2f} s = {cpu / wall * 100:.0f} % of one core   "
        f"{cpu / max(served, 1) * 1e6:.1f} us a request"
    )
    print(f"  fleet CPU at 1,000 req/s: {cpu / max(served, 1) * 1000 * 100:.1f} % of one core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="answer on a set of ports (one fleet process)")
    serve.add_argument("--ports", required=True, help="e.g. 20000-22499")
    serve.add_argument("--control-port", type=int, required=True)
    serve.add_argument("--backlog", type=int, default=64)
    for mode in MODES[1:]:
        serve.add_argument(f"--{mode}", default="", help=f"ports that start in mode {mode}")
    floor = sub.add_parser("slack-floor", help="the bare signed-request endpoint (SLACK_SIGNING_SECRET)")
    floor.add_argument("--port", type=int, required=True)
    standin = sub.add_parser("slack-standin", help="the Slack Web API stand-in, with /_bench/calls")
    standin.add_argument("--port", type=int, required=True)
    test = sub.add_parser("selftest", help="what a fleet process costs per request")
    test.add_argument("--nodes", type=int, default=1000)
    test.add_argument("--seconds", type=float, default=5.0)
    test.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if args.command == "serve":
        raise_nofile()
        modes = {m: parse_ports(getattr(args, m)) for m in MODES[1:] if getattr(args, m)}
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_fleet(parse_ports(args.ports), args.control_port, modes, args.backlog))
    elif args.command == "slack-floor":
        from aiohttp import web

        secret = os.environ.get("SLACK_SIGNING_SECRET") or "test-signing-secret"
        web.run_app(slack_floor_app(secret), host="127.0.0.1", port=args.port, print=None, access_log=None)
    elif args.command == "slack-standin":
        from aiohttp import web

        web.run_app(slack_standin_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)
    else:
        raise_nofile()
        asyncio.run(selftest(args.nodes, args.seconds, args.connections))


if __name__ == "__main__":
    main()
