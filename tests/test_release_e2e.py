"""End to end with real parts: nginx built with nginx-upsync-module and nginx_upstream_check_module
(tests/realnginx.py; 2 workers) in front of three sample services, its upstream read live from the
Consul stand-in by upsync, constant wrk load through nginx, and a serial release whose
steps really stop and restart the services (local executor, then over SSH). Failed requests: 0.
The same release under the same load with the drain wait removed must show failures, so this test can
fail. The load is wrk's short requests plus slow uploads that stay in flight at a backend for about a
second: a node stopped while it still has one fails it, so the control does not depend on winning a
race against nginx's reload (short requests alone saw no failure in 1 of 5 runs on a busy machine)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bot.clock import SystemClock
from bot.consul.store import ConsulStore
from bot.executors.local import LocalExecutor
from bot.health.prober import HttpProber
from bot.nginx.status import HttpNginxReader
from bot.processes import free_port, start_sample_service, stop_sample_service
from bot.terminal.demo import demo_steps
from commands.release_engine import ReleaseEngine
from commands.release_plan import plan_release
from commands.release_state import Status
from commands.requests import ReleaseRequest
from commands.settings import AppSettings, HealthSettings, NginxSettings, ReleaseSettings
from tests.conftest import Consul
from tests.helpers import RecordingNotifier
from tests.nginx_harness import SlowUploads, finish, real_nginx, wrk, wrk_failures
from tests.realnginx import ConsulLink, RealNginx
from tests.sshd import PrivateSshd, user


@dataclass
class Stack:
    folder: Path
    consul: Consul
    nginx: RealNginx
    watcher: ConsulLink  # upsync's link to Consul: hold() / let_go() freeze nginx's view
    ports: list[int]

    def versions(self) -> list[str]:
        return [httpx.get(f"http://127.0.0.1:{p}/version", timeout=2).text.strip() for p in self.ports]

    def config(self, executor: str, extra: str = "") -> Path:
        steps = demo_steps(self.folder)
        path = self.folder / "upstream-bot.yml"
        path.write_text(
            "apps:\n  app:\n"
            f"    nginx:\n      list_url: {self.nginx.url}/upstream_list\n"
            f"      status_url: {self.nginx.url}/upstream_status?format=json\n      upsync_interval: 500ms\n"
            "    health:\n      url: http://{host}:{port}/ping\n      interval: 500ms\n      timeout: 500ms\n"
            "      window: 15s\n      rise: 2\n"
            f"    release:\n      executor: {executor}\n      drain_wait: 1s\n      steps:\n"
            + "".join(f"        {name}: {json.dumps(spec.command)}\n" for name, spec in steps.items())
            + extra
        )
        return path


@pytest.fixture
def stack(tmp_path: Path, consul: Consul) -> Iterator[Stack]:
    ports = sorted(free_port() for _ in range(3))
    for port in ports:
        start_sample_service(port, state_dir=tmp_path)
        consul.add_server("app", f"127.0.0.1:{port}")
    try:
        nginx, watcher = real_nginx(tmp_path / "nginx", consul.url, {f"127.0.0.1:{p}": False for p in ports})
    except BaseException:
        for port in ports:
            stop_sample_service(port, tmp_path)
        raise
    try:
        yield Stack(tmp_path, consul, nginx, watcher, ports)
    finally:
        watcher.stop()
        nginx.stop()
        for port in ports:
            stop_sample_service(port, tmp_path)


@dataclass
class Counts:
    requests: int  # wrk's short requests
    failures: int
    slow_requests: int  # slow uploads
    slow_failures: int
    slow_errors: list[str]

    def __str__(self) -> str:
        return (
            f"{self.failures} of {self.requests} short requests and {self.slow_failures} of "
            f"{self.slow_requests} slow uploads failed {self.slow_errors[:3]}"
        )


class Load:
    """The same load for every release here: wrk's short POSTs and slow uploads, through nginx."""

    def __init__(self, stack: Stack) -> None:
        self.wrk = wrk(f"{stack.nginx.url}/", 120, stack.folder)
        self.slow = SlowUploads(stack.nginx.url).start()

    def finish(self) -> Counts:
        requests, failures = wrk_failures(finish(self.wrk))
        slow_requests, slow_failures = self.slow.stop()
        return Counts(requests, failures, slow_requests, slow_failures, self.slow.errors)


def release_under_load(stack: Stack, config: Path, version: str) -> tuple[subprocess.CompletedProcess[str], Counts]:
    load = Load(stack)
    time.sleep(1)  # steady load before the first drain
    env = {**os.environ, "UPSTREAM_BOT_CONFIG": str(config), "CONSUL_HTTP_ADDR": stack.consul.url}
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run", f"/release app --serial --version {version}", "--yes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
    )
    time.sleep(1)  # load on the last restored node too
    counts = load.finish()
    print(f"with the drain wait: {counts}")
    return result, counts


def test_a_serial_release_under_load_fails_no_request_local_executor(stack: Stack) -> None:
    result, counts = release_under_load(stack, stack.config("local"), "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded: all 3 node(s) released" in result.stdout
    assert stack.versions() == ["2", "2", "2"]  # every service really was stopped, deployed and started
    assert stack.watcher.changes >= 7  # upsync was handed the start, each drain and each restore
    assert counts.requests > 1000 and counts.slow_requests > 50, counts
    assert counts.failures == 0 and counts.slow_failures == 0, counts


def test_a_serial_release_under_load_fails_no_request_over_ssh(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "sshd").mkdir()
    sshd = PrivateSshd(tmp_path / "sshd").start()
    try:
        extra = (
            f"ssh:\n  user: {user()}\n  port: {sshd.port}\n  key: {sshd.client_key}\n"
            f"  known_hosts: {sshd.known_hosts}\n"
        )
        before = sshd.accepted()
        result, counts = release_under_load(stack, stack.config("ssh", extra), "3")
    finally:
        sshd.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert stack.versions() == ["3", "3", "3"]
    assert sshd.accepted() - before == 1  # one SSH connection for the whole release (one host)
    assert counts.requests > 1000 and counts.slow_requests > 50, counts
    assert counts.failures == 0 and counts.slow_failures == 0, counts


async def test_without_the_drain_wait_the_same_release_fails_requests(stack: Stack) -> None:
    # The engine with every wait for nginx taken out: it stops a node while nginx still routes to it.
    app = AppSettings(
        "app",
        "app",
        nginx=NginxSettings(upsync_interval=-1.0),  # propagation 0: no wait after the write
        health=HealthSettings(url="http://{host}:{port}/ping", interval=0.5, timeout=0.5, window=15, rise=2),
        release=ReleaseSettings(executor="local", drain_wait=0.0, steps=demo_steps(stack.folder)),
    )
    store = ConsulStore((stack.consul.url,))
    load = Load(stack)
    await asyncio.sleep(1)  # steady load before the first drain
    async with httpx.AsyncClient(trust_env=False) as client:
        prober, nginx = HttpProber(client), HttpNginxReader({"app": app}, client)
        plan = plan_release(
            app, ReleaseRequest("app", version="4"), "test", await store.read("app"), {}, await nginx.read("app")
        )
        engine = ReleaseEngine(plan, app, store, LocalExecutor(app), prober, nginx, SystemClock(), RecordingNotifier())
        state = await engine.run()
    await asyncio.sleep(1)
    counts = await asyncio.to_thread(load.finish)  # joins threads: not on the event loop
    print(f"without the drain wait: {counts}")
    assert state.status is Status.SUCCEEDED, state.message
    assert counts.requests > 1000 and counts.slow_requests > 50, counts
    # Each node stopped with about 24/3 slow uploads in flight at it: failures are certain, not a race.
    assert counts.failures + counts.slow_failures > 0, f"no failure: the load could not see a premature stop ({counts})"
