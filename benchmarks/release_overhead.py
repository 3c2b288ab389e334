"""Overhead of the release engine over the waits and steps it cannot avoid.

A 10-node serial release through the real adapters (Consul stand-in over HTTP, local executor running
`sleep` steps, HTTP probes against a sample service), with fixed step times and waits. Prints the wall
time, the sum of mandatory waits and step times, and their ratio (target <= 1.02).

Run: .venv/bin/python benchmarks/release_overhead.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.clock import SystemClock
from bot.consul_store import ConsulStore
from bot.executors.local import LocalExecutor
from bot.nginx_status import HttpNginxReader
from bot.prober import HttpProber
from bot.processes import free_port, start_sample_service, stop
from bot.standins.consul import ConsulStandIn
from bot.standins.server_thread import ServerThread
from commands.release_engine import ReleaseEngine
from commands.release_plan import plan_release
from commands.release_state import Status
from commands.requests import ReleaseRequest
from commands.servers import DEFAULTS, encode
from commands.settings import AppSettings, HealthSettings, NginxSettings, ReleaseSettings, StepSpec

NODES = 10
STEP_SECONDS = 0.05
UPSYNC_INTERVAL = 0.1
DRAIN_WAIT = 0.2
INTERVAL = 0.2
RISE = 2
TARGET = 1.02


class Quiet:
    async def emit(self, event: object) -> None:
        return None


async def release(consul_url: str, health_port: int) -> tuple[float, Status]:
    steps = {name: StepSpec(f"sleep {STEP_SECONDS}", 30) for name in ("stop", "deploy", "start")}
    app = AppSettings(
        "app",
        "app",
        nginx=NginxSettings(upsync_interval=UPSYNC_INTERVAL),
        health=HealthSettings(
            url=f"http://127.0.0.1:{health_port}/ping", interval=INTERVAL, timeout=INTERVAL, window=10, rise=RISE
        ),
        release=ReleaseSettings(executor="local", drain_wait=DRAIN_WAIT, steps=steps),
    )
    store = ConsulStore((consul_url,))
    async with httpx.AsyncClient(trust_env=False) as client:
        prober, nginx = HttpProber(client), HttpNginxReader({"app": app}, client)
        plan = plan_release(
            app, ReleaseRequest("app", version="2"), "bench", await store.read("app"), {}, await nginx.read("app")
        )
        engine = ReleaseEngine(plan, app, store, LocalExecutor(app), prober, nginx, SystemClock(), Quiet())
        started = time.perf_counter()
        state = await engine.run()
        if state.status is not Status.SUCCEEDED:
            print(f"  release did not succeed: {state.message}")
        return time.perf_counter() - started, state.status


def main() -> None:
    standin = ConsulStandIn()
    for i in range(NODES):
        standin.put_value(f"upstreams/app/10.9.0.{i + 1}:8080", encode(dict(DEFAULTS)))
    server = ServerThread(standin.app()).start()
    port = free_port()
    service = start_sample_service(port)
    try:
        wall, status = asyncio.run(release(server.url, port))
    finally:
        stop([service])
        server.stop()
    propagation = UPSYNC_INTERVAL + 1.0
    per_node = 2 * propagation + DRAIN_WAIT + 3 * STEP_SECONDS + (RISE - 1) * INTERVAL
    mandatory = NODES * per_node
    print(f"release of {NODES} nodes, serial: {status.value}")
    print(
        f"  per node: 2 x propagation {propagation:g} s + drain_wait {DRAIN_WAIT:g} s + 3 steps x {STEP_SECONDS:g} s"
        f" + (rise-1) x interval {(RISE - 1) * INTERVAL:g} s = {per_node:.2f} s"
    )
    print(
        f"  wall {wall:.2f} s   mandatory {mandatory:.2f} s   overhead {wall - mandatory:.2f} s "
        f"({(wall - mandatory) / NODES * 1000:.0f} ms a node)"
    )
    print(f"  ratio wall / mandatory: {wall / mandatory:.3f} (target <= {TARGET})")


if __name__ == "__main__":
    main()
