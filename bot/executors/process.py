"""Run one shell command as a local process: streamed lines, bounded tails, a timeout that kills the
whole process group, and cancellation that does the same. Used by the local executor and the agent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from commands.interfaces import OutputSink
from commands.steps import OutputLine, OutputTail, StepResult

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


async def _pump(
    stream: asyncio.StreamReader, name: str, tail: OutputTail, step: str, node: str, on_output: OutputSink | None
) -> None:
    while True:
        raw = await stream.readline()
        if not raw:
            return
        line = tail.add(name, raw.decode("utf-8", "replace"))
        if on_output is not None:
            await on_output(OutputLine(step, node, name, line))


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the step's process group, then SIGKILL what is left after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE)
            # The leader is gone; children that ignored TERM may still hold the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return
        except TimeoutError:
            continue


async def run_process(
    command: str,
    timeout: float,
    step: str,
    node: str,
    on_output: OutputSink | None = None,
    env: dict[str, str] | None = None,
) -> StepResult:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: a kill reaches every child it started
        env=env,
    )
    tail = OutputTail()
    assert process.stdout is not None and process.stderr is not None
    pumps = asyncio.gather(
        _pump(process.stdout, "stdout", tail, step, node, on_output),
        _pump(process.stderr, "stderr", tail, step, node, on_output),
    )
    error: str | None = None
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        await _kill_group(process)
        error = f"timeout: still running after {timeout:g} s; killed"
    except asyncio.CancelledError:
        await asyncio.shield(_kill_group(process))
        pumps.cancel()
        # Collect the readers' own cancellation, so it is not logged as "exception never retrieved".
        pumps.add_done_callback(lambda done: done.cancelled() or done.exception())
        raise
    # A background child that kept the pipes open must not hold the step: drain briefly, then stop reading.
    try:
        await asyncio.wait_for(pumps, 2.0)
    except TimeoutError:
        pass  # wait_for cancelled the readers
    return StepResult(
        step,
        node,
        None if error else process.returncode,
        time.monotonic() - started,
        tuple(tail.stdout),
        tuple(tail.stderr),
        error,
    )
