"""CPU per health probe: a bare asyncio-streams prober (the floor), LeanProber, HttpProber (httpx).

A minimal asyncio HTTP server (its own process) listens on many loopback ports, one per simulated node,
and answers every GET with a 200 and a small body, keeping connections alive. Here, each prober probes
all nodes through commands/probing.py::probe_nodes (the watch's worker pool) at the given concurrency:
one warm-up round (connections opened), then the measured rounds. The CPU is this process's
(resource.getrusage: user + system), so the server's CPU is not counted.

Run: .venv/bin/python benchmarks/probe_cost.py [--nodes 2000] [--probes 20000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.health.lean_prober import LeanProber
from bot.health.prober import HttpProber
from bot.runtime import HTTP_LIMITS
from commands.addresses import ServerAddress
from commands.interfaces import ProbeResult
from commands.probing import probe_nodes
from commands.settings import AppSettings, HealthSettings

FLOOR = "floor (asyncio streams)"
NODE_SERVER = textwrap.dedent("""
    import asyncio, sys

    RESPONSE = b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 5\\r\\n\\r\\npong\\n"

    class Node(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buffer = transport, b""
        def data_received(self, data):
            self.buffer += data
            answers = self.buffer.count(b"\\r\\n\\r\\n")
            if answers:
                self.buffer = self.buffer[self.buffer.rfind(b"\\r\\n\\r\\n") + 4:]
                self.transport.write(RESPONSE * answers)

    async def main(count):
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(Node, "127.0.0.1", 0, backlog=512) for _ in range(count)]
        print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes our stdin
        for server in servers:
            server.close()

    asyncio.run(main(int(sys.argv[1])))
""")


class StreamsProber:
    """The floor: a bare keep-alive prober on asyncio streams (no checks beyond what a verdict needs)."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self.targets: dict[str, tuple[str, int, bytes]] = {}

    async def probe(self, url: str, timeout: float) -> ProbeResult:
        target = self.targets.get(url)
        if target is None:
            authority, _, path = url.removeprefix("http://").partition("/")
            host, _, port = authority.partition(":")
            request = f"GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: keep-alive\r\n\r\n".encode()
            self.targets[url] = target = (host, int(port), request)
        host, port, request = target
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(timeout):
                pool = self.idle.get((host, port))
                reader, writer = pool.pop() if pool else await asyncio.open_connection(host, port)
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                at = head.lower().find(b"content-length:")
                await reader.readexactly(int(head[at + 15 : head.find(b"\r\n", at)]))
                self.idle.setdefault((host, port), []).append((reader, writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            return ProbeResult(False, str(error), loop.time() - started)
        return ProbeResult(200 <= status < 400, str(status), loop.time() - started)

    async def aclose(self) -> None:
        for pool in self.idle.values():
            for _, writer in pool:
                writer.close()
        self.idle.clear()


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    name: str, prober: object, app: AppSettings, nodes: list[ServerAddress], rounds: int, concurrency: int, limit: float
) -> tuple[float, float, int]:
    """(µs of CPU per probe, probes per second, failures) over `rounds` rounds after a warm-up round."""
    async with asyncio.timeout(limit):
        warm = await probe_nodes(prober, app, nodes, concurrency)  # type: ignore[arg-type]
        bad = [r for r in warm.values() if not r.healthy]
        if bad:
            raise SystemExit(f"{name}: warm-up failed for {len(bad)} nodes, e.g. {bad[0].detail}")
        failures = 0
        cpu_before, started = cpu(), time.monotonic()
        for _ in range(rounds):
            results = await probe_nodes(prober, app, nodes, concurrency)  # type: ignore[arg-type]
            failures += sum(not r.healthy for r in results.values())
        wall, used = time.monotonic() - started, cpu() - cpu_before
    print(f"  {name}: {used:.1f} s CPU in {wall:.1f} s", flush=True)
    probes = rounds * len(nodes)
    return used / probes * 1e6, probes / wall, failures


def start_nodes(count: int) -> tuple[subprocess.Popen[str], list[int]]:
    """The node server, listening on `count` ports that the system picks (free ones)."""
    server = subprocess.Popen(
        [sys.executable, "-c", NODE_SERVER, str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    ports = [int(port) for port in server.stdout.readline().split()]  # type: ignore[union-attr]
    if len(ports) != count:
        server.kill()
        raise SystemExit("the node server did not start")
    return server, ports


async def main(args: argparse.Namespace, ports: list[int]) -> None:
    nodes = [ServerAddress("127.0.0.1", port) for port in ports]
    app = AppSettings("app", "app", health=HealthSettings(url="http://{host}:{port}/ping", timeout=5))
    rounds = max(1, args.probes // args.nodes)
    figures: dict[str, tuple[float, float, int]] = {}

    floor = StreamsProber()
    figures[FLOOR] = await measure("floor", floor, app, nodes, rounds, args.concurrency, args.limit)
    await floor.aclose()

    # The bot's own client settings. (Keeping every node alive in httpx's pool is worse: its pool does
    # work per request that grows with the connections it holds, ~14 ms CPU a probe at 200 nodes.)
    async with httpx.AsyncClient(limits=HTTP_LIMITS, trust_env=False) as client:
        if "lean" in args.probers:
            lean = LeanProber(HttpProber(client))
            figures["LeanProber"] = await measure("lean", lean, app, nodes, rounds, args.concurrency, args.limit)
            await lean.aclose()
        if "httpx" in args.probers:
            httpx_rounds = max(1, args.httpx_probes // args.nodes)
            figures["HttpProber (httpx)"] = await measure(
                "httpx", HttpProber(client), app, nodes, httpx_rounds, args.concurrency, args.limit
            )

    base = figures[FLOOR][0]
    print(
        f"{rounds * args.nodes} probes ({rounds} rounds of {args.nodes} nodes; httpx: {args.httpx_probes}) at "
        f"concurrency {args.concurrency}, after a warm-up round; CPU of this process only"
    )
    print(f"{'prober':<26}{'µs CPU/probe':>14}{'x floor':>10}{'probes/s':>11}{'failed':>8}")
    for name, (per_probe, rate, failures) in figures.items():
        print(f"{name:<26}{per_probe:>14.1f}{per_probe / base:>10.2f}{rate:>11.0f}{failures:>8}")
    if "LeanProber" in figures:
        ratio = figures["LeanProber"][0] / base
        print(f"LeanProber is {ratio:.2f}x the floor (target: within 2x): {'ok' if ratio <= 2 else 'MISSED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=20000)
    parser.add_argument("--httpx-probes", type=int, default=20000)
    parser.add_argument("--probers", default="lean,httpx", help="besides the floor: lean, httpx or both")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds each prober may take at most")
    arguments = parser.parse_args()
    nodes_server, node_ports = start_nodes(arguments.nodes)
    try:
        asyncio.run(main(arguments, node_ports))
    finally:
        nodes_server.stdin.close()  # type: ignore[union-attr]
        try:
            nodes_server.wait(10)
        except subprocess.TimeoutExpired:
            nodes_server.kill()
            nodes_server.wait(5)
