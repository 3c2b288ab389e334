"""The health watch at scale: 2,000 simulated nodes probed every 10 s for a minute.

One asyncio HTTP server on loopback (its own process) answers for all nodes on many paths
(`/ping/<port>`); the Consul stand-in (its own process) lists 2,000 servers. The watch runs here with
the real adapters and APScheduler. Prints probes per second, the bot's CPU use, and how late the
probe rounds started and how long they took.

Run: .venv/bin/python benchmarks/watch_scale.py [--seconds 60] [--nodes 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.clock import SystemClock
from bot.consul.store import ConsulStore
from bot.health.prober import HttpProber
from bot.health.scheduler import HealthWatcher
from bot.nginx.status import HttpNginxReader
from bot.processes import free_port, stop, wait_http
from commands.servers import DEFAULTS, encode
from commands.settings import AppSettings, HealthSettings, WatchSettings

HEALTH_SERVER = textwrap.dedent("""
    import sys
    from aiohttp import web
    async def ping(request):
        return web.Response(text="pong")
    app = web.Application()
    app.router.add_get("/ping/{port}", ping)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, backlog=1024)
""")


class Count:
    def __init__(self) -> None:
        self.events = 0

    async def emit(self, event: object) -> None:
        self.events += 1


async def watch(
    consul_url: str, health_port: int, seconds: float, interval: float
) -> tuple[HealthWatcher, float, float, list[float]]:
    app = AppSettings(
        "app",
        "app",
        health=HealthSettings(
            url=f"http://127.0.0.1:{health_port}/ping/{{port}}", interval=interval, timeout=5, window=30, rise=2
        ),
        watch=WatchSettings(concurrency=64),
    )
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        watcher = HealthWatcher(
            {"app": app},
            ConsulStore((consul_url,), timeout=10),
            HttpProber(client),
            HttpNginxReader({"app": app}, client),
            SystemClock(),
        )
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        watcher.start(Count())
        lags: list[float] = []
        # What a Slack handler would feel: how late a 10 ms timer fires on the same event loop.
        for _ in range(int(seconds / 0.01)):
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - before - 0.01)
            if time.monotonic() - started >= seconds:
                break
        watcher.shutdown()
        wall = time.monotonic() - started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        return watcher, wall, cpu, lags


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args()
    consul_port, health_port = free_port(), free_port()
    consul = subprocess.Popen(
        [sys.executable, "-m", "bot.standins.consul", "--port", str(consul_port)], stdout=subprocess.DEVNULL
    )
    health = subprocess.Popen([sys.executable, "-c", HEALTH_SERVER, str(health_port)])
    try:
        wait_http(f"http://127.0.0.1:{consul_port}/v1/status/leader", timeout=20)
        wait_http(f"http://127.0.0.1:{health_port}/ping/1", timeout=20)
        value = encode(dict(DEFAULTS))
        with httpx.Client(base_url=f"http://127.0.0.1:{consul_port}") as seed:
            for i in range(args.nodes):
                seed.put(
                    f"/v1/kv/upstreams/app/10.{i // 250 // 250}.{i // 250 % 250}.{i % 250 + 1}:{20000 + i}",
                    content=value,
                ).raise_for_status()
        watcher, wall, cpu, lags = asyncio.run(
            watch(f"http://127.0.0.1:{consul_port}", health_port, args.seconds, args.interval)
        )
    finally:
        stop([consul, health])
    stats = watcher.stats["app"]
    incidents = len(watcher.watches["app"].incidents())
    print(f"health watch: {args.nodes} nodes every {args.interval:g} s for {wall:.0f} s")
    print(
        f"  rounds {stats.rounds}   probes {stats.probes}   probes/s {stats.probes / wall:.0f}   "
        f"open incidents {incidents}"
    )
    print(f"  bot CPU {cpu:.1f} s in {wall:.0f} s = {cpu / wall * 100:.0f} % of one core")
    lags.sort()
    print(
        f"  event-loop lag (a 10 ms timer, as a handler would wait): p50 {lags[len(lags) // 2] * 1000:.1f} ms   "
        f"p99 {lags[int(len(lags) * 0.99)] * 1000:.1f} ms   max {lags[-1] * 1000:.1f} ms"
    )
    print(
        f"  round lateness p50 {statistics.median(stats.lateness) * 1000:.0f} ms   "
        f"max {max(stats.lateness) * 1000:.0f} ms"
    )
    print(
        f"  round duration p50 {statistics.median(stats.durations):.2f} s   max {max(stats.durations):.2f} s   "
        f"(ratio to the interval: {max(stats.durations) / args.interval:.2f})"
    )


if __name__ == "__main__":
    main()
