"""The local executor: the demo's steps really stop, deploy and start a sample service process."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import httpx
import pytest

from bot.executors.local import LocalExecutor
from bot.executors.process import SAFE_PATH, minimal_environment
from bot.processes import free_port, start_sample_service, stop_sample_service
from bot.terminal.demo import demo_steps
from commands.settings import AppSettings, ReleaseSettings, StepSpec
from commands.steps import StepRefused, StepTarget
from tests.helpers import wait_gone, wait_started


async def answers(port: int) -> str | None:
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            return (await client.get(f"http://127.0.0.1:{port}/version", timeout=2)).text.strip()
    except httpx.HTTPError:
        return None


async def test_demo_steps_stop_deploy_and_start_the_service_for_real(tmp_path: Path) -> None:
    port = free_port()
    start_sample_service(port, state_dir=tmp_path)
    ex = LocalExecutor(AppSettings("app", "app", release=ReleaseSettings(steps=demo_steps(tmp_path))))
    target = StepTarget("app", "127.0.0.1", port, "2.0")
    try:
        assert await answers(port) == "1"
        assert (await ex.run("stop", target)).ok
        assert await answers(port) is None  # the process is gone: nothing listens
        assert (await ex.run("deploy", target)).ok
        started = await ex.run("start", target)
        assert started.ok, started.summary
        assert await answers(port) == "2.0"
    finally:
        stop_sample_service(port, tmp_path)


def local(steps: dict[str, str], timeout: float = 30.0) -> LocalExecutor:
    return LocalExecutor(
        AppSettings("app", "app", release=ReleaseSettings(steps={k: StepSpec(v, timeout) for k, v in steps.items()}))
    )


TARGET = StepTarget("app", "127.0.0.1", 9001, "2.0")


async def test_timeout_kills_the_step_and_its_children() -> None:
    marker = f"local-{uuid.uuid4().hex}"
    result = await local({"deploy": f"sh -c 'sleep 60 # {marker}' & sleep 60 # {marker}"}, timeout=1).run(
        "deploy", TARGET
    )
    assert result.error is not None and result.error.startswith("timeout")
    assert await wait_gone(marker) == []


async def test_cancelling_a_step_kills_it() -> None:
    marker = f"local-{uuid.uuid4().hex}"
    task = asyncio.create_task(local({"deploy": f"sleep 60 # {marker}"}).run("deploy", TARGET))
    assert await wait_started(marker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone(marker) == []


async def test_exit_status_and_tails_and_refusals(tmp_path: Path) -> None:
    ex = local({"stop": "seq 1 30; echo oops >&2; exit 3", "deploy": "touch " + str(tmp_path) + "/{version}"})
    result = await ex.run("stop", TARGET)
    assert result.exit_status == 3 and result.stdout_tail[-1] == "30" and len(result.stdout_tail) == 20
    assert result.stderr_tail == ("oops",)
    with pytest.raises(StepRefused, match="needs a version"):
        await ex.run("deploy", StepTarget("app", "127.0.0.1", 9001, None))
    with pytest.raises(StepRefused, match="version refused"):
        await ex.run("deploy", StepTarget("app", "127.0.0.1", 9001, "../../etc"))
    with pytest.raises(StepRefused, match="no step `reboot`"):
        await ex.run("reboot", TARGET)
    assert os.listdir(tmp_path) == []  # nothing ran


SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-local-leak",
    "SLACK_APP_TOKEN": "xapp-local-leak",
    "SLACK_SIGNING_SECRET": "local-leak-signing",
    "CONSUL_HTTP_TOKEN": "local-leak-consul",
    "UPSTREAM_BOT_AGENT_SECRET": "local-leak-agent-secret",
}


async def test_a_step_gets_a_minimal_environment_without_the_bots_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TZ", "UTC")
    result = await local({"deploy": "env"}).run("deploy", TARGET)
    assert result.ok, result.summary
    env = dict(line.split("=", 1) for line in result.stdout_tail if "=" in line)
    assert [n for n in env if n.startswith("SLACK_") or n in SECRETS] == []
    assert not any("leak" in value for value in env.values())
    assert {k: v for k, v in env.items() if k.startswith("UPSTREAM_BOT_")} == {
        "UPSTREAM_BOT_APP": "app",
        "UPSTREAM_BOT_HOST": "127.0.0.1",
        "UPSTREAM_BOT_PORT": "9001",
        "UPSTREAM_BOT_VERSION": "2.0",
    }
    assert env["TZ"] == "UTC" and env["PATH"] and env["HOME"]


def test_the_minimal_environment_keeps_only_absolute_path_entries() -> None:
    parent = {
        "PATH": ".:/opt/app/bin::bin:/usr/bin",
        "HOME": "/home/deploy",
        "SLACK_BOT_TOKEN": "xoxb-x",
        "EDITOR": "vi",
    }
    env = minimal_environment(parent)
    assert env["PATH"] == "/opt/app/bin:/usr/bin" and env["HOME"] == "/home/deploy"
    assert "SLACK_BOT_TOKEN" not in env and "EDITOR" not in env
    assert minimal_environment({"PATH": "."})["PATH"] == SAFE_PATH
    assert minimal_environment({"EDITOR": "vi"}, passthrough=["EDITOR"])["EDITOR"] == "vi"
