"""The local executor: steps run on the bot's own machine (demo, single-host setups)."""

from __future__ import annotations

from collections.abc import Sequence

from bot.executors.process import run_process, step_environment
from commands.interfaces import OutputSink
from commands.settings import AppSettings
from commands.steps import StepResult, StepTarget, prepare_step


class LocalExecutor:
    stops_on_cancel = True  # a cancelled step's process group is killed and reaped before run() returns

    def __init__(self, app: AppSettings) -> None:
        self.app = app

    async def check(self, target: StepTarget, steps: Sequence[str]) -> str | None:
        missing = [s for s in steps if s not in self.app.release.steps]
        if missing:
            return f"{self.app.name} has no step {', '.join(missing)} configured"
        return None

    async def run(self, step: str, target: StepTarget, on_output: OutputSink | None = None) -> StepResult:
        command, timeout = prepare_step(self.app, step, target)
        # The bot's own environment holds Slack and Consul tokens: the step gets a minimal one.
        return await run_process(command, timeout, step, target.node, on_output, env=step_environment(target))

    async def close(self) -> None:
        return None
