"""The health watch's probes in a process of their own, off the event loop that answers Slack.

A watch round of an app hands its URLs to the worker in one line of JSON and gets the results back in
one line: the loop that acknowledges Slack commands pays for two small JSON messages a round instead of
a thousand probes' callbacks and their garbage (measured with `benchmarks/watch_scale.py`: slash-command
acks p99 7.9 ms with the probes on the loop, against 2.2 ms for a bare endpoint beside a prober).

The worker (`python -m bot.health.probe_worker`) runs the same `LeanProber` (https through httpx), a
bounded number in flight. If it dies or does not answer in time, that round's probes are unknown (an
empty result: the watch neither opens nor resolves anything on them) and the next round starts a new
worker. It ends when its stdin closes (the bot exited, however it exited).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import sys
from collections.abc import Sequence

import httpx

from bot.health.lean_prober import LeanProber
from bot.health.prober import HttpProber
from commands.interfaces import ProbeResult

log = logging.getLogger(__name__)
LINE_LIMIT = 64 * 1024 * 1024  # one round's results of a very large app fit in a line
SPARE = 5.0  # seconds a round's answer may take beyond its probes' own bound


class ProbeWorker:
    """Probes many URLs in the worker process; started at first use, started again after a death."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._readers: set[asyncio.Task[None]] = set()  # one per worker started, ends with its output
        # request id -> (the worker it was sent to, its answer)
        self._pending: dict[int, tuple[asyncio.subprocess.Process, asyncio.Future[list[list[object]]]]] = {}
        self._ids = itertools.count(1)
        self._starting = asyncio.Lock()
        self._closed = False
        self.started = 0  # workers started (tests, logs)

    async def probe_all(self, urls: Sequence[str], timeout: float, concurrency: int) -> list[ProbeResult] | None:
        """Each URL's result in order; None when the worker could not tell (died, too slow): unknown."""
        if not urls:
            return []
        if self._closed:
            return None
        try:
            process = await self._running()
        except OSError as error:
            log.error("health probe worker cannot start: %s", error)
            return None
        request_id = next(self._ids)
        answer: asyncio.Future[list[list[object]]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (process, answer)
        line = json.dumps({"id": request_id, "urls": list(urls), "timeout": timeout, "concurrency": concurrency})
        bound = timeout * math.ceil(len(urls) / max(1, concurrency)) + SPARE
        try:
            # The write too: a stuck worker stops reading, and a big request fills the pipe.
            async with asyncio.timeout(bound):
                assert process.stdin is not None
                process.stdin.write(line.encode() + b"\n")
                await process.stdin.drain()
                raw = await answer
        except (TimeoutError, ConnectionError, BrokenPipeError, WorkerGone) as error:
            log.error("health probe worker did not answer (%s): %d probe(s) unknown this round", _why(error), len(urls))
            await self._stop(process)  # stuck or gone: the next round gets a fresh one
            return None
        finally:
            self._pending.pop(request_id, None)
        return [ProbeResult(bool(ok), str(detail), float(seconds)) for ok, detail, seconds in raw]  # type: ignore[arg-type]

    async def _running(self) -> asyncio.subprocess.Process:
        async with self._starting:
            if self._process is not None and self._process.returncode is None:
                return self._process
            if self.started:
                log.warning("health probe worker gone; starting another")
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot.health.probe_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=LINE_LIMIT,
            )
            self.started += 1
            reader = asyncio.get_running_loop().create_task(self._read(self._process), name="probe worker")
            self._readers.add(reader)
            reader.add_done_callback(self._readers.discard)
            return self._process

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        broken = False
        try:
            while line := await process.stdout.readline():
                message = json.loads(line)
                sent = self._pending.get(int(message["id"]))
                if sent is not None and sent[0] is process and not sent[1].done():
                    sent[1].set_result(message["results"])
        except (ValueError, KeyError, TypeError, asyncio.LimitOverrunError) as error:
            log.error("health probe worker said something unreadable (%r): stopping it", error)
            broken = True
        finally:
            if self._process is process:
                self._process = None  # the next round starts another (its exit may not be reaped yet)
            for sent_to, waiter in list(self._pending.values()):
                if sent_to is process and not waiter.done():
                    waiter.set_exception(WorkerGone())
            if broken:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

    async def _stop(self, process: asyncio.subprocess.Process | None = None) -> None:
        """Stop `process` (default: the current worker); a newer worker is left alone."""
        process = process or self._process
        if process is None:
            return
        if self._process is process:
            self._process = None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), 5)

    async def aclose(self) -> None:
        self._closed = True
        await self._stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.returncode is None else None


class WorkerGone(Exception):
    pass


def _why(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, WorkerGone):
        return "it exited"
    return type(error).__name__


# -- the worker process --------------------------------------------------------------------------------


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(trust_env=False) as client:
        prober = LeanProber(HttpProber(client))

        async def answer(request: dict[str, object]) -> None:
            urls = [str(u) for u in request["urls"]]  # type: ignore[attr-defined]
            timeout, concurrency = float(request["timeout"]), int(request["concurrency"])  # type: ignore[arg-type]
            results: list[list[object]] = [[]] * len(urls)
            indexes = iter(range(len(urls)))

            async def work() -> None:
                for i in indexes:
                    try:  # bounded here too: httpx's timeout (https) is per read, not per probe
                        result = await asyncio.wait_for(prober.probe(urls[i], timeout), timeout + 1)
                    except TimeoutError:
                        result = ProbeResult(False, f"timeout after {timeout:g} s", timeout)
                    results[i] = [result.healthy, result.detail, round(result.seconds, 4)]

            await asyncio.gather(*(work() for _ in range(max(1, min(concurrency, len(urls))))))
            writer.write(json.dumps({"id": request["id"], "results": results}).encode() + b"\n")
            await writer.drain()

        while line := await reader.readline():  # EOF: the bot is gone
            task = loop.create_task(answer(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in tasks:
            task.cancel()
        await prober.aclose()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(_serve())
