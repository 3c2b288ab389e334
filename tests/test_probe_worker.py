"""The watch's probes in their own process: the same verdicts as in process; a worker that dies or
hangs makes that round's probes unknown (never a failure, never a pass), and the next round has a new one."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.health.lean_prober import LeanProber
from bot.health.probe_worker import SPARE, ProbeWorker
from bot.health.prober import HttpProber
from bot.health.scheduler import HealthWatcher
from bot.processes import free_port, start_sample_service, stop
from commands.settings import AppSettings, HealthSettings, WatchSettings
from tests.fakes import FakeClock, FakeNginx, FakeProber, FakeStore
from tests.helpers import RecordingNotifier


@pytest.fixture
def urls(tmp_path: Path) -> Iterator[list[str]]:
    live = free_port()
    service = start_sample_service(live)
    closed = free_port()  # nothing listens
    yield [f"http://127.0.0.1:{live}/ping", f"http://127.0.0.1:{closed}/ping", f"http://127.0.0.1:{live}/nowhere"]
    stop([service])


async def test_the_worker_answers_what_the_prober_answers_in_process(urls: list[str]) -> None:
    worker = ProbeWorker()
    try:
        got = await worker.probe_all(urls, 2.0, 8)
        async with httpx.AsyncClient(trust_env=False) as client:
            here = LeanProber(HttpProber(client))
            expected = [await here.probe(url, 2.0) for url in urls]
            await here.aclose()
    finally:
        await worker.aclose()
    assert got is not None
    assert [(r.healthy, r.detail) for r in got] == [(r.healthy, r.detail) for r in expected]
    assert got[0].healthy and got[1].detail == "connection refused" and not got[2].healthy


async def test_a_dead_worker_makes_the_round_unknown_and_the_next_round_has_a_new_one(urls: list[str]) -> None:
    worker = ProbeWorker()
    try:
        assert await worker.probe_all(urls, 2.0, 8) is not None
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # hung: this round's answer never comes
        hung = await worker.probe_all(urls, 0.2, 8)
        assert hung is None  # unknown, after its bound (0.2 s a probe, plus the spare)
        assert worker.pid != pid
        fresh = await worker.probe_all(urls, 2.0, 8)
        assert fresh is not None and fresh[0].healthy and worker.started == 2
        os.kill(worker.pid or 0, signal.SIGKILL)  # dead: unknown at once, then a new one again
        assert await worker.probe_all(urls, 2.0, 8) is None
        again = await worker.probe_all(urls, 2.0, 8)
        assert again is not None and again[0].healthy and worker.started == 3
    finally:
        with_pid = worker.pid
        await worker.aclose()
        if with_pid:
            with pytest.raises(ProcessLookupError):
                os.kill(with_pid, 0)


async def test_a_big_round_sent_to_a_stuck_worker_is_unknown_within_its_bound() -> None:
    # 10,000 URLs: about 350 KiB of request, more than the pipe holds while the worker reads nothing.
    urls = [f"http://127.0.0.1:{1 + i % 60000}/ping" for i in range(10_000)]
    worker = ProbeWorker()
    try:
        assert await worker.probe_all(urls[:1], 1.0, 1) is not None  # started
        os.kill(worker.pid or 0, signal.SIGSTOP)
        started = time.monotonic()
        assert await worker.probe_all(urls, 0.05, 1000) is None
        assert time.monotonic() - started < 0.05 * 10 + SPARE + 3  # its bound, not forever
    finally:
        await worker.aclose()


async def test_concurrent_rounds_share_the_worker_and_each_gets_its_own_results(urls: list[str]) -> None:
    worker = ProbeWorker()
    try:
        first, second = await asyncio.gather(
            worker.probe_all(urls, 2.0, 2), worker.probe_all(list(reversed(urls)), 2.0, 2)
        )
        assert first is not None and second is not None
        assert [r.detail for r in first] == [r.detail for r in reversed(second)]
        # A worker killed mid-round: unknown at once, not after the round's bound (here 15 s).
        pending = asyncio.ensure_future(worker.probe_all(urls, 10.0, 8))
        os.kill(worker.pid or 0, signal.SIGKILL)
        started = time.monotonic()
        await pending
        assert time.monotonic() - started < 5
    finally:
        await worker.aclose()


class NoAnswer:
    """A worker that never can tell (dead, hung): every round unknown."""

    async def probe_all(self, urls: list[str], timeout: float, concurrency: int) -> None:
        return None


async def test_a_worker_that_never_answers_is_one_cannot_see_alert_after_the_window_never_a_recovery() -> None:
    health = HealthSettings(url="http://{host}:{port}/ping", interval=10, timeout=1, window=30, rise=2)
    apps = {"app": AppSettings("app", "app", health=health, watch=WatchSettings(reminder=3600))}
    store = FakeStore("app", ["10.0.0.1:9000", "10.0.0.2:9000"])
    clock = FakeClock()
    watcher = HealthWatcher(apps, store, FakeProber(), FakeNginx(store), clock, worker=NoAnswer())  # type: ignore[arg-type]
    notifier = RecordingNotifier()
    watcher.notifier = notifier
    for _ in range(10):  # 100 s of rounds
        await watcher.round("app")
        clock.t += 10
    kinds = [e.kind for e in notifier.events]  # type: ignore[attr-defined]
    assert kinds == ["blind"]
    assert "probe worker" in notifier.events[0].incident.last_error  # type: ignore[attr-defined]
