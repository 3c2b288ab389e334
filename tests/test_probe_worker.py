"""The watch's probes in their own process: the same verdicts as in process; a worker that dies or
hangs makes that round's probes unknown (never a failure, never a pass), and the next round has a new one."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.health.lean_prober import LeanProber
from bot.health.probe_worker import ProbeWorker
from bot.health.prober import HttpProber
from bot.processes import free_port, start_sample_service, stop


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
