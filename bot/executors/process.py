"""Run one shell command as a local process: streamed lines, bounded tails, a timeout that kills the
whole process group, and cancellation that does the same. Used by the local executor and the agent.

A step gets a minimal environment (`step_environment`), never its parent's: the bot holds Slack and
Consul tokens and the agent its signing secret, and a step's output goes to chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import time
from collections.abc import Iterable, Mapping

from commands.interfaces import OutputSink
from commands.steps import OutputLine, OutputTail, StepResult, StepTarget

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a shell and the usual tools need to behave as they do for the same user at a terminal.
_INHERITED = ("HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "TZ")


def _safe_path(parent: str | None) -> str:
    """The parent's PATH without empty or relative entries (those resolve against the step's working
    directory, so a file dropped there could stand in for a command); SAFE_PATH when nothing is left."""
    kept = [entry for entry in (parent or "").split(":") if entry.startswith("/")]
    return ":".join(kept) or SAFE_PATH


def minimal_environment(parent: Mapping[str, str] | None = None, passthrough: Iterable[str] = ()) -> dict[str, str]:
    """PATH, HOME, LANG/LC_ALL, USER/LOGNAME, TZ (when set) and the `passthrough` names; nothing else."""
    parent = os.environ if parent is None else parent
    env = {"PATH": _safe_path(parent.get("PATH"))}
    for name in (*_INHERITED, *passthrough):
        if name in parent:
            env[name] = parent[name]
    if "HOME" not in env or "USER" not in env or "LOGNAME" not in env:
        # A service manager may start the agent without them; scripts (and ssh, git) expect them.
        with contextlib.suppress(KeyError):
            user = pwd.getpwuid(os.getuid())
            env.setdefault("HOME", user.pw_dir)
            env.setdefault("USER", user.pw_name)
            env.setdefault("LOGNAME", user.pw_name)
    return env


def step_environment(
    target: StepTarget, parent: Mapping[str, str] | None = None, passthrough: Iterable[str] = ()
) -> dict[str, str]:
    """The minimal environment plus what the step is for, as UPSTREAM_BOT_APP/HOST/PORT[/VERSION]."""
    env = minimal_environment(parent, passthrough)
    env.update(
        {"UPSTREAM_BOT_APP": target.app, "UPSTREAM_BOT_HOST": target.host, "UPSTREAM_BOT_PORT": str(target.port)}
    )
    if target.version is not None:
        env["UPSTREAM_BOT_VERSION"] = target.version
    return env


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
    env: Mapping[str, str] | None = None,
) -> StepResult:
    """Run `command` under /bin/sh with `env` (default: `minimal_environment()`, never the parent's own)."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: a kill reaches every child it started
        env=dict(minimal_environment() if env is None else env),
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
