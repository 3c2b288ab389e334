"""Overhead of the release engine over the waits and steps it cannot avoid.

A 10-node serial release through the real adapters (Consul stand-in over HTTP, local executor running
`sleep` steps, HTTP probes against a sample service, nginx's views read over HTTP), with fixed step
times and waits. Prints the wall time, the sum of mandatory waits and step times, and their ratio
(target <= 1.02).

nginx's views (`nginx.list_url`: upsync's upstream_show; `nginx.status_url`: check_status JSON) come
from `tests.nginx_harness.NginxViews`, a small HTTP server that follows Consul with blocking queries as
upsync does, not from a real nginx: the nodes are made-up addresses, and what is measured is the
engine's own cost of reading and waiting on those views, not nginx's reload timing (the e2e test
covers a real nginx). The engine reads both after every drain and restore and before every batch; the
count is printed. Consul, the views and the sample service run as their own processes, as Consul and
nginx do: in the measured process their threads would take the GIL from the engine.

Run: .venv/bin/python benchmarks/release_overhead.py [--compare]
(`--compare` also runs the same release without nginx's views first: what reading them costs.)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.clock import SystemClock
from bot.consul.journal import ConsulJournal
from bot.consul.lock import ConsulLockManager
from bot.consul.store import ConsulStore
from bot.executors.local import LocalExecutor
from bot.executors.process import run_process
from bot.health.prober import HttpProber
from bot.nginx.status import HttpNginxReader, parse_upstream_show
from bot.processes import free_port, start_sample_service, stop, wait_http
from commands.interfaces import LockInfo, NginxView
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


class CountingReader(HttpNginxReader):
    """The real reader; counts its reads, so the figure shows nginx's views really were waited on."""

    reads = 0

    async def read(self, upstream: str) -> NginxView:
        view = await super().read(upstream)
        if view.checks is not None or view.listed_down is not None:  # nginx was asked (URLs configured)
            CountingReader.reads += 1
        if view.errors:
            print(f"  ! {'; '.join(view.errors)}")
        return view


async def release(consul_url: str, health_port: int, views_url: str | None) -> tuple[float, Status]:
    steps = {name: StepSpec(f"sleep {STEP_SECONDS}", 30) for name in ("stop", "deploy", "start")}
    app = AppSettings(
        "app",
        "app",
        nginx=NginxSettings(
            status_url=f"{views_url}/upstream_status?format=json" if views_url else None,
            list_url=f"{views_url}/upstream_list" if views_url else None,
            upsync_interval=UPSYNC_INTERVAL,
        ),
        health=HealthSettings(
            url=f"http://127.0.0.1:{health_port}/ping", interval=INTERVAL, timeout=INTERVAL, window=10, rise=RISE
        ),
        release=ReleaseSettings(executor="local", drain_wait=DRAIN_WAIT, steps=steps),
    )
    store = ConsulStore((consul_url,))
    async with httpx.AsyncClient(trust_env=False) as client:
        prober, nginx = HttpProber(client), CountingReader({"app": app}, client)
        plan = plan_release(
            app, ReleaseRequest("app", version="2"), "bench", await store.read("app"), {}, await nginx.read("app")
        )
        CountingReader.reads = 0  # the release's own reads, not the plan's
        # As in production: under the Consul lock (writes carry check-session) and with the journal written ahead.
        lock = await ConsulLockManager(store).acquire(LockInfo("app", plan.id, "bench", "bench:1", time.time()))
        journal = ConsulJournal(store, "bench:1")
        engine = ReleaseEngine(
            plan, app, store, LocalExecutor(app), prober, nginx, SystemClock(), Quiet(), lock=lock, journal=journal
        )
        started = time.perf_counter()
        try:
            state = await engine.run()
        finally:
            await lock.release()
        if state.status is not Status.SUCCEEDED:
            print(f"  release did not succeed: {state.message}")
        # The steps' own time as the executor measured it (process start included): the floor counts what
        # the machine took to run them, so only the engine's own cost is left over.
        steps = sum(sum(n.durations.values()) for n in state.nodes.values())
        return time.perf_counter() - started, state.status, steps


async def floor() -> float:
    """The same waits and the same step processes, done back to back with nothing else: what no engine
    could beat on this machine, measured in this run (timer overshoot and process start included)."""
    started = time.perf_counter()
    propagation = UPSYNC_INTERVAL + 1.0
    for _ in range(NODES):
        await asyncio.sleep(propagation)
        await asyncio.sleep(DRAIN_WAIT)
        for step in ("stop", "deploy", "start"):
            await run_process(f"sleep {STEP_SECONDS}", 30, step, "floor")
        await asyncio.sleep((RISE - 1) * INTERVAL)
        await asyncio.sleep(propagation)
    return time.perf_counter() - started


def server(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def report(label: str, wall: float, status: Status, steps: float, mandatory: float) -> float:
    propagation = UPSYNC_INTERVAL + 1.0
    waits = 2 * propagation + DRAIN_WAIT + (RISE - 1) * INTERVAL
    reads = CountingReader.reads
    print(f"release of {NODES} nodes, serial, {label}: {status.value}")
    print(
        f"  per node: 2 x propagation {propagation:g} s + drain_wait {DRAIN_WAIT:g} s"
        f" + (rise-1) x interval {(RISE - 1) * INTERVAL:g} s = {waits:.2f} s of waits, plus the 3 steps as measured"
        f" ({steps / NODES:.3f} s a node; configured {3 * STEP_SECONDS:g} s)"
    )
    print(f"  nginx views (upstream_show + check_status) read {reads} times, {reads / NODES:.1f} a node")
    print(
        f"  wall {wall:.2f} s   floor (the same waits and steps, nothing else, this run) {mandatory:.2f} s   "
        f"overhead {wall - mandatory:.2f} s "
        f"({(wall - mandatory) / NODES * 1000:.0f} ms a node)"
    )
    print(f"  ratio wall / floor: {wall / mandatory:.3f} (target <= {TARGET})")
    return wall / mandatory


def main() -> None:
    compare = "--compare" in sys.argv[1:]
    consul_port, views_port, port = free_port(), free_port(), free_port()
    consul_url, views_url = f"http://127.0.0.1:{consul_port}", f"http://127.0.0.1:{views_port}"
    processes = [server(["bot.standins.consul", "--port", str(consul_port)])]
    try:
        wait_http(f"{consul_url}/v1/status/leader")
        for i in range(NODES):
            value = encode(dict(DEFAULTS))
            httpx.put(f"{consul_url}/v1/kv/upstreams/app/10.9.0.{i + 1}:8080", content=value, trust_env=False)
        processes.append(server(["tests.nginx_harness", "views", "--consul", consul_url, "--port", str(views_port)]))
        processes.append(start_sample_service(port))
        # The views must list the upstream before the release reads them (bounded wait).
        for _ in range(200):
            try:
                listed = httpx.get(f"{views_url}/upstream_list?app", timeout=1, trust_env=False).text
                if len(parse_upstream_show(listed, "app")) == NODES:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            raise SystemExit("the nginx views never followed Consul")
        least = asyncio.run(floor())
        if compare:
            report("without nginx's views", *asyncio.run(release(consul_url, port, None)), least)
        wall, status, steps = asyncio.run(release(consul_url, port, views_url))
    finally:
        stop(processes)
    ratio = report("with nginx.list_url and nginx.status_url", wall, status, steps, least)
    if CountingReader.reads < 2 * NODES:
        print("  ! nginx's views were hardly read: the engine is not waiting on nginx")
    print(json.dumps({"ratio": round(ratio, 4), "nginx_reads": CountingReader.reads}))


if __name__ == "__main__":
    main()
