"""`upstream-bot agent` as a real process on loopback, driven by the agent executor and raw requests."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.agent.signing import sign
from bot.executors.agent import AgentExecutor
from bot.processes import free_port, stop, wait_http
from commands.settings import AppSettings, ReleaseSettings, StepSpec
from commands.steps import OutputLine, StepRefused, StepTarget
from tests.helpers import wait_gone, wait_started

SECRET = "agent-test-secret-0123456789"
MARK = uuid.uuid4().hex


def agent_yml(folder: Path, port: int, tls: bool = False) -> Path:
    path = folder / "agent.yml"
    lines = [
        f"listen: 127.0.0.1:{port}",
        "apps: [app]",
        "steps:",
        '  deploy: "echo deploying {app} {version} on {port}; echo careful >&2"',
        '  fail: "echo broken >&2; exit 3"',
        f'  slow: {{run: "sleep 30 # slow-{MARK}", timeout: 60s}}',
        f'  hang: {{run: "sleep 30 # hang-{MARK}", timeout: 1s}}',
    ]
    if tls:
        lines += ["tls:", f"  cert: {folder / 'cert.pem'}", f"  key: {folder / 'key.pem'}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_agent(config: Path, url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "UPSTREAM_BOT_AGENT_SECRET": SECRET}
    log = config.with_suffix(".log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "agent", "--config", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"{url}/healthz", timeout=20) if url.startswith("http:") else _wait_tls(url)
    except RuntimeError:
        process.kill()
        raise AssertionError(config.with_suffix(".log").read_text()) from None
    return process


def _wait_tls(url: str) -> None:
    for _ in range(200):
        try:
            httpx.get(f"{url}/healthz", verify=False, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_agent(agent_yml(tmp_path_factory.mktemp("agent"), port), url)
    yield url
    stop([process])


def app(steps: tuple[str, ...] = ("deploy", "fail", "slow", "hang")) -> AppSettings:
    return AppSettings(
        "app", "app", release=ReleaseSettings(executor="agent", steps={s: StepSpec("", 60) for s in steps})
    )


def executor(url: str, secret: str = SECRET, **kw: object) -> AgentExecutor:
    return AgentExecutor(app(), secret.encode(), port=int(url.rsplit(":", 1)[1]), connect_timeout=5, **kw)  # type: ignore[arg-type]


TARGET = StepTarget("app", "127.0.0.1", 9001, "2.0")


async def test_a_signed_request_runs_the_agents_own_step_and_streams_output(agent: str) -> None:
    ex = executor(agent)
    lines: list[OutputLine] = []

    async def collect(line: OutputLine) -> None:
        lines.append(line)

    try:
        result = await ex.run("deploy", TARGET, collect)
        failed = await ex.run("fail", TARGET)
    finally:
        await ex.close()
    assert result.ok and result.stdout_tail == ("deploying app 2.0 on 9001",) and result.stderr_tail == ("careful",)
    # stdout and stderr arrive as two streams: their relative order is not defined
    assert sorted((line.stream, line.line) for line in lines) == [
        ("stderr", "careful"),
        ("stdout", "deploying app 2.0 on 9001"),
    ]
    assert failed.exit_status == 3 and failed.stderr_tail == ("broken",)


def raw_run(
    url: str, body: dict[str, object], secret: str = SECRET, now: float | None = None, step: str = "deploy"
) -> httpx.Response:
    path = f"/v1/steps/{step}/run"
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **sign(secret.encode(), "POST", path, data, now)}
    return httpx.post(url + path, content=data, headers=headers, timeout=10)


BODY = {"app": "app", "host": "127.0.0.1", "port": 9001, "version": "2.0"}


def test_bad_signature_stale_timestamp_and_replay_are_refused(agent: str) -> None:
    assert raw_run(agent, BODY, secret="not-the-secret-at-all").status_code == 401
    stale = raw_run(agent, BODY, now=time.time() - 6 * 60)
    assert stale.status_code == 401 and "stale" in stale.json()["error"]
    unsigned = httpx.post(f"{agent}/v1/steps/deploy/run", json=BODY)
    assert unsigned.status_code == 401
    path = "/v1/steps/deploy/run"
    data = json.dumps(BODY).encode()
    headers = {"Content-Type": "application/json", **sign(SECRET.encode(), "POST", path, data)}
    assert httpx.post(agent + path, content=data, headers=headers, timeout=10).status_code == 200
    replay = httpx.post(agent + path, content=data, headers=headers, timeout=10)
    assert replay.status_code == 401 and "replayed" in replay.json()["error"]


async def test_a_wrong_secret_is_reported_as_auth(agent: str) -> None:
    ex = executor(agent, secret="not-the-secret-at-all")
    result = await ex.run("deploy", TARGET)
    await ex.close()
    assert result.error is not None and result.error.startswith("auth:")


async def test_unknown_step_and_bad_values_are_refused_by_the_agent(agent: str, tmp_path: Path) -> None:
    ex = AgentExecutor(app(("deploy", "reboot")), SECRET.encode(), port=int(agent.rsplit(":", 1)[1]))
    result = await ex.run("reboot", TARGET)
    assert result.error is not None and "unknown step `reboot`" in result.error
    with pytest.raises(StepRefused):
        await ex.run("deploy", StepTarget("app", "127.0.0.1", 9001, f"1;touch {tmp_path}/x"))
    await ex.close()
    refused = raw_run(agent, {**BODY, "version": f"1;touch {tmp_path}/x"})  # a client that skips validation
    assert refused.status_code == 422 and not (tmp_path / "x").exists()
    assert raw_run(agent, {**BODY, "app": "other"}).status_code == 422


async def test_a_second_concurrent_run_of_a_step_is_refused(agent: str) -> None:
    first, second = executor(agent), executor(agent)
    task = asyncio.create_task(first.run("slow", TARGET))
    try:
        assert await wait_started(f"slow-{MARK}")
        result = await second.run("slow", TARGET)
        assert result.error is not None and result.error.startswith("busy:")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await first.close()
        await second.close()
    # The bot went away mid-step: the agent killed it.
    assert await wait_gone(f"slow-{MARK}") == []


async def test_the_agent_enforces_the_step_timeout(agent: str) -> None:
    ex = executor(agent)
    result = await ex.run("hang", TARGET)
    await ex.close()
    assert result.error is not None and result.error.startswith("timeout") and result.duration < 10
    assert await wait_gone(f"hang-{MARK}") == []


async def test_preflight_lists_missing_steps_and_dead_agents(agent: str) -> None:
    ex = executor(agent)
    assert await ex.check(TARGET, ["deploy", "fail"]) is None
    assert "does not know step reboot" in (await ex.check(TARGET, ["deploy", "reboot"]) or "")
    await ex.close()
    dead = AgentExecutor(app(), SECRET.encode(), port=free_port(), connect_timeout=2)
    assert "connection refused" in (await dead.check(TARGET, ["deploy"]) or "")
    await dead.close()


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem in tmp_path)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return tmp_path


async def test_tls_when_a_cert_and_key_are_configured(certificate: Path) -> None:
    tmp_path = certificate
    port = free_port()
    process = start_agent(agent_yml(tmp_path, port, tls=True), f"https://127.0.0.1:{port}")
    try:
        ex = AgentExecutor(app(), SECRET.encode(), port=port, scheme="https", ca_file=str(tmp_path / "cert.pem"))
        result = await ex.run("deploy", TARGET)
        await ex.close()
        assert result.ok
        untrusted = AgentExecutor(app(), SECRET.encode(), port=port, scheme="https")
        assert "connect" in ((await untrusted.run("deploy", TARGET)).error or "")
        await untrusted.close()
    finally:
        stop([process])
