"""End to end with real parts: a real nginx in front of three sample services whose upstream follows
Consul (watcher + reload, as upsync does), constant wrk load through nginx, and a serial release whose
steps really stop and restart the services (local executor, then over SSH). Failed requests: 0.
The same release with the drain wait removed must show failures, so this test can fail."""

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
from bot.consul_store import ConsulStore
from bot.demo import demo_steps
from bot.executors.local import LocalExecutor
from bot.nginx_status import HttpNginxReader
from bot.prober import HttpProber
from bot.processes import free_port, start_sample_service, stop_sample_service
from commands.release_engine import ReleaseEngine
from commands.release_plan import plan_release
from commands.release_state import Status
from commands.requests import ReleaseRequest
from commands.settings import AppSettings, HealthSettings, NginxSettings, ReleaseSettings
from tests.conftest import Consul
from tests.helpers import RecordingNotifier
from tests.nginx_harness import ConsulWatcher, Nginx, finish, wrk, wrk_failures
from tests.sshd import PrivateSshd, user


@dataclass
class Stack:
    folder: Path
    consul: Consul
    nginx: Nginx
    watcher: ConsulWatcher
    ports: list[int]

    def versions(self) -> list[str]:
        return [httpx.get(f"http://127.0.0.1:{p}/version", timeout=2).text.strip() for p in self.ports]

    def config(self, executor: str, extra: str = "") -> Path:
        steps = demo_steps(self.folder)
        path = self.folder / "upstream-bot.yml"
        path.write_text(
            "apps:\n  app:\n"
            f"    nginx:\n      list_url: {self.nginx.url}/upstream_list\n      upsync_interval: 500ms\n"
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
    nginx = Nginx(tmp_path / "nginx").start({f"127.0.0.1:{p}": False for p in ports})
    watcher = ConsulWatcher(consul.url, nginx)
    watcher.start()
    try:
        yield Stack(tmp_path, consul, nginx, watcher, ports)
    finally:
        watcher.stop()
        nginx.stop()
        for port in ports:
            stop_sample_service(port, tmp_path)


def release_under_load(stack: Stack, config: Path, version: str) -> tuple[subprocess.CompletedProcess[str], int, int]:
    load = wrk(f"{stack.nginx.url}/", 120, stack.folder)
    time.sleep(1)  # steady load before the first drain
    env = {**os.environ, "UPSTREAM_BOT_CONFIG": str(config), "CONSUL_HTTP_ADDR": stack.consul.url}
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run", f"/release app --serial --version {version}", "--yes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
    )
    time.sleep(1)
    requests, failures = wrk_failures(finish(load))
    return result, requests, failures


def test_a_serial_release_under_load_fails_no_request_local_executor(stack: Stack) -> None:
    result, requests, failures = release_under_load(stack, stack.config("local"), "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded: all 3 node(s) released" in result.stdout
    assert stack.versions() == ["2", "2", "2"]  # every service really was stopped, deployed and started
    assert stack.watcher.reloads >= 6  # nginx really followed each drain and restore
    assert requests > 1000 and failures == 0, f"{failures} of {requests} requests failed"


def test_a_serial_release_under_load_fails_no_request_over_ssh(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "sshd").mkdir()
    sshd = PrivateSshd(tmp_path / "sshd").start()
    try:
        extra = (
            f"ssh:\n  user: {user()}\n  port: {sshd.port}\n  key: {sshd.client_key}\n"
            f"  known_hosts: {sshd.known_hosts}\n"
        )
        before = sshd.accepted()
        result, requests, failures = release_under_load(stack, stack.config("ssh", extra), "3")
    finally:
        sshd.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert stack.versions() == ["3", "3", "3"]
    assert sshd.accepted() - before == 1  # one SSH connection for the whole release (one host)
    assert requests > 1000 and failures == 0, f"{failures} of {requests} requests failed"


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
    load = wrk(f"{stack.nginx.url}/", 120, stack.folder)
    await asyncio.sleep(1)
    async with httpx.AsyncClient(trust_env=False) as client:
        prober, nginx = HttpProber(client), HttpNginxReader({"app": app}, client)
        plan = plan_release(
            app, ReleaseRequest("app", version="4"), "test", await store.read("app"), {}, await nginx.read("app")
        )
        engine = ReleaseEngine(plan, app, store, LocalExecutor(app), prober, nginx, SystemClock(), RecordingNotifier())
        state = await engine.run()
    await asyncio.sleep(1)
    requests, failures = wrk_failures(finish(load))
    assert state.status is Status.SUCCEEDED
    print(f"without the drain wait: {failures} of {requests} requests failed")
    assert failures > 0, f"no failure in {requests} requests: the load test could not see a premature stop"
