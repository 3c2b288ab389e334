"""Per-step overhead of the SSH executor, with and without connection reuse.

100 steps `true` against a private sshd on 127.0.0.1: once through one executor (one connection for
all steps, as in a release), once with a new executor (a new SSH connection) per step. Prints the
mean per step and the ratio. Note (EXECUTOR-NOTES): sshd starts the login shell for every command,
and bash reads .bashrc, which is part of each step's cost whichever way.

Run: .venv/bin/python benchmarks/executor.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.executors.ssh import SshExecutor
from commands.settings import AppSettings, ReleaseSettings, SshSettings, StepSpec
from commands.steps import StepTarget
from tests.sshd import PrivateSshd, user

STEPS = 100
TARGET = StepTarget("app", "127.0.0.1", 9001)


async def measure(sshd: PrivateSshd, reuse: bool) -> list[float]:
    app = AppSettings("app", "app", release=ReleaseSettings(executor="ssh", steps={"noop": StepSpec("true", 30)}))
    settings = SshSettings(user=user(), port=sshd.port, key=str(sshd.client_key), known_hosts=str(sshd.known_hosts))
    times: list[float] = []
    shared = SshExecutor(app, settings) if reuse else None
    try:
        for _ in range(STEPS):
            executor = shared or SshExecutor(app, settings)
            started = time.perf_counter()
            result = await executor.run("noop", TARGET)
            times.append(time.perf_counter() - started)
            if not result.ok:
                raise RuntimeError(result.summary)
            if shared is None:
                await executor.close()
    finally:
        if shared is not None:
            await shared.close()
    return times


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sshd = PrivateSshd(Path(tmp)).start()
        try:
            before = sshd.accepted()
            reused = asyncio.run(measure(sshd, reuse=True))
            reused_connections = sshd.accepted() - before
            before = sshd.accepted()
            fresh = asyncio.run(measure(sshd, reuse=False))
            fresh_connections = sshd.accepted() - before
        finally:
            sshd.stop()
    print(f"SSH executor, {STEPS} steps `true` on 127.0.0.1:")
    for name, times, connections in (
        ("one connection", reused, reused_connections),
        ("connection per step", fresh, fresh_connections),
    ):
        print(
            f"  {name:<20} mean {statistics.mean(times) * 1000:6.1f} ms/step   "
            f"p50 {statistics.median(times) * 1000:6.1f} ms   total {sum(times):5.1f} s   "
            f"connections {connections}"
        )
    print(
        f"  reuse saves {(statistics.mean(fresh) - statistics.mean(reused)) * 1000:.1f} ms a step; "
        f"ratio fresh/reused {statistics.mean(fresh) / statistics.mean(reused):.2f}"
    )


if __name__ == "__main__":
    main()
