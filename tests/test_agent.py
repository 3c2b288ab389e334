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
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bot.agent.config import AgentConfigError, parse_agent_config
from bot.agent.signing import SIGNATURE_HEADER, TARGET_HEADER, SignedTarget, sign
from bot.executors.agent import AgentExecutor
from bot.processes import free_port, stop, wait_http
from commands.settings import AppSettings, ReleaseSettings, StepSpec
from commands.steps import OutputLine, StepRefused, StepTarget
from tests.helpers import wait_gone, wait_started, wait_until

SECRET = "agent-test-secret-0123456789"
MARK = uuid.uuid4().hex
# What the agent is started with besides its own secret: none of it may reach a step.
LEAKS = {
    "SLACK_BOT_TOKEN": f"xoxb-leak-{MARK}",
    "SLACK_APP_TOKEN": f"xapp-leak-{MARK}",
    "SLACK_SIGNING_SECRET": f"signing-leak-{MARK}",
    "CONSUL_HTTP_TOKEN": f"consul-leak-{MARK}",
}
NODE = "127.0.0.1:9001"  # the app node the tests' steps are for


def agent_yml(folder: Path, port: int, tls: bool = False, nodes: tuple[str, ...] = (NODE,)) -> Path:
    """An agent config in `folder`; its `stop` step appends a line to folder/stopped-<port> (the marker
    that tells, on the node, whether a step ran)."""
    path = folder / "agent.yml"
    lines = [
        f"listen: 127.0.0.1:{port}",
        f"nodes: {json.dumps(list(nodes))}",
        "apps: [app]",
        f"state_file: {folder / 'state' / 'nonces.json'}",
        "env_passthrough: [DEPLOY_REGION]",
        "steps:",
        '  deploy: "echo deploying {app} {version} on {port}; echo careful >&2"',
        '  fail: "echo broken >&2; exit 3"',
        f'  slow: {{run: "sleep 30 # slow-{MARK}", timeout: 60s}}',
        f'  hang: {{run: "sleep 30 # hang-{MARK}", timeout: 1s}}',
        f'  stop: "echo stopped >> {folder}/stopped-{{port}}"',
        "  env: env",
    ]
    if tls:
        lines += ["tls:", f"  cert: {folder / 'cert.pem'}", f"  key: {folder / 'key.pem'}"]
    else:
        lines += ["insecure: true"]
    path.write_text("\n".join(lines) + "\n")
    return path


def agent_env() -> dict[str, str]:
    return {**os.environ, "UPSTREAM_BOT_AGENT_SECRET": SECRET, "DEPLOY_REGION": "eu-1", **LEAKS}


def start_agent(config: Path, url: str) -> subprocess.Popen[bytes]:
    log = config.with_suffix(".log").open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "agent", "--config", str(config)],
        env=agent_env(),
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


@dataclass
class RunningAgent:
    url: str
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stopped(self, app_port: int = 9001) -> int:
        """How many times the `stop` step ran here for the app node on `app_port`."""
        marker = self.folder / f"stopped-{app_port}"
        return len(marker.read_text().splitlines()) if marker.exists() else 0


def launch(folder: Path, nodes: tuple[str, ...] = (NODE,)) -> RunningAgent:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return RunningAgent(url, folder, start_agent(agent_yml(folder, port, nodes=nodes), url))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    running = launch(tmp_path_factory.mktemp("agent"))
    yield running
    stop([running.process])


def app(steps: tuple[str, ...] = ("deploy", "fail", "slow", "hang", "stop", "env")) -> AppSettings:
    return AppSettings(
        "app", "app", release=ReleaseSettings(executor="agent", steps={s: StepSpec("", 60) for s in steps})
    )


def executor(url: str, secret: str = SECRET, **kw: object) -> AgentExecutor:
    kw.setdefault("scheme", "http")
    return AgentExecutor(app(), secret.encode(), port=int(url.rsplit(":", 1)[1]), connect_timeout=5, **kw)  # type: ignore[arg-type]


TARGET = StepTarget("app", "127.0.0.1", 9001, "2.0")


async def test_a_signed_request_runs_the_agents_own_step_and_streams_output(agent: RunningAgent) -> None:
    ex = executor(agent.url)
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
    url: str,
    body: dict[str, object],
    secret: str = SECRET,
    now: float | None = None,
    step: str = "deploy",
    target: SignedTarget | None = None,
) -> httpx.Response:
    """A signed run request, by default for the target its body names (a client that skips the executor)."""
    path = f"/v1/steps/{step}/run"
    data = json.dumps(body).encode()
    if target is None:
        version = body.get("version")
        port = int(str(body["port"]))
        target = SignedTarget(
            str(body["app"]), str(body["host"]), port, step, None if version is None else str(version)
        )
    headers = {"Content-Type": "application/json", **sign(secret.encode(), "POST", path, data, target, now)}
    return httpx.post(url + path, content=data, headers=headers, timeout=10)


BODY = {"app": "app", "host": "127.0.0.1", "port": 9001, "version": "2.0"}


def test_bad_signature_stale_timestamp_and_replay_are_refused(agent: RunningAgent) -> None:
    assert raw_run(agent.url, BODY, secret="not-the-secret-at-all").status_code == 401
    stale = raw_run(agent.url, BODY, now=time.time() - 6 * 60)
    assert stale.status_code == 401 and "stale" in stale.json()["error"]
    unsigned = httpx.post(f"{agent.url}/v1/steps/deploy/run", json=BODY)
    assert unsigned.status_code == 401
    path = "/v1/steps/deploy/run"
    data = json.dumps(BODY).encode()
    target = SignedTarget("app", "127.0.0.1", 9001, "deploy", "2.0")
    headers = {"Content-Type": "application/json", **sign(SECRET.encode(), "POST", path, data, target)}
    assert httpx.post(agent.url + path, content=data, headers=headers, timeout=10).status_code == 200
    replay = httpx.post(agent.url + path, content=data, headers=headers, timeout=10)
    assert replay.status_code == 401 and "replayed" in replay.json()["error"]


def test_the_signature_covers_the_target(agent: RunningAgent) -> None:
    """The target header cannot be changed without the secret, and the body must be what it names."""
    before = agent.stopped(9001) + agent.stopped(9002)
    path = "/v1/steps/stop/run"
    data = json.dumps(BODY).encode()
    headers = {
        "Content-Type": "application/json",
        **sign(SECRET.encode(), "POST", path, data, SignedTarget("app", "127.0.0.1", 9001, "stop", "2.0")),
    }
    # Pointed at another step, or another version, of the same node: the signature no longer matches.
    for changed in (
        SignedTarget("app", "127.0.0.1", 9001, "deploy", "2.0"),
        SignedTarget("app", "127.0.0.1", 9001, "stop", "3.0"),
    ):
        forged = httpx.post(
            agent.url + path, content=data, headers={**headers, TARGET_HEADER: changed.header()}, timeout=10
        )
        assert forged.status_code == 401 and "bad signature" in forged.json()["error"]
    # Signed for node :9001, but the body asks for :9002: refused before anything runs.
    other = raw_run(
        agent.url, {**BODY, "port": 9002}, step="stop", target=SignedTarget("app", "127.0.0.1", 9001, "stop", "2.0")
    )
    assert other.status_code == 400 and "signed target" in other.json()["error"]
    # A bot of the previous version (v1 signatures, which did not cover the target) is told to upgrade.
    old = httpx.post(
        agent.url + path, content=data, headers={**headers, SIGNATURE_HEADER: "v1=" + "0" * 64}, timeout=10
    )
    assert old.status_code == 401 and "upgrade the bot" in old.json()["error"]
    assert agent.stopped(9001) + agent.stopped(9002) == before  # nothing ran on the node


async def test_a_wrong_secret_is_reported_as_auth(agent: RunningAgent) -> None:
    ex = executor(agent.url, secret="not-the-secret-at-all")
    result = await ex.run("deploy", TARGET)
    await ex.close()
    assert result.error is not None and result.error.startswith("auth:")


async def test_unknown_step_and_bad_values_are_refused_by_the_agent(agent: RunningAgent, tmp_path: Path) -> None:
    ex = AgentExecutor(app(("deploy", "reboot")), SECRET.encode(), port=agent.port, scheme="http")
    result = await ex.run("reboot", TARGET)
    assert result.error is not None and "unknown step `reboot`" in result.error
    with pytest.raises(StepRefused):
        await ex.run("deploy", StepTarget("app", "127.0.0.1", 9001, f"1;touch {tmp_path}/x"))
    await ex.close()
    refused = raw_run(agent.url, {**BODY, "version": f"1;touch {tmp_path}/x"})  # a client that skips validation
    assert refused.status_code == 422 and not (tmp_path / "x").exists()
    assert raw_run(agent.url, {**BODY, "app": "other"}).status_code == 422


async def test_a_second_concurrent_run_of_a_step_is_refused(agent: RunningAgent) -> None:
    first, second = executor(agent.url), executor(agent.url)
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


async def test_the_agent_enforces_the_step_timeout(agent: RunningAgent) -> None:
    ex = executor(agent.url)
    result = await ex.run("hang", TARGET)
    await ex.close()
    assert result.error is not None and result.error.startswith("timeout") and result.duration < 10
    assert await wait_gone(f"hang-{MARK}") == []


async def test_preflight_lists_missing_steps_and_dead_agents(agent: RunningAgent) -> None:
    ex = executor(agent.url)
    assert await ex.check(TARGET, ["deploy", "fail"]) is None
    assert "does not know step reboot" in (await ex.check(TARGET, ["deploy", "reboot"]) or "")
    # An app node this agent does not serve: the preflight fails, before any step could run.
    wrong = await ex.check(StepTarget("app", "127.0.0.1", 9002, "2.0"), ["deploy"])
    assert wrong is not None and wrong.startswith("wrong agent:") and "127.0.0.1:9002" in wrong
    await ex.close()
    dead = AgentExecutor(app(), SECRET.encode(), port=free_port(), scheme="http", connect_timeout=2)
    assert "connection refused" in (await dead.check(TARGET, ["deploy"]) or "")
    await dead.close()


async def capture_stop(url: str) -> httpx.Request:
    """Run `stop` for TARGET through the real executor and return the request it sent, as captured."""
    captured: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        captured.append(request)

    ex = executor(url)
    ex.client.event_hooks["request"].append(keep)
    try:
        result = await ex.run("stop", TARGET)
    finally:
        await ex.close()
    assert result.ok, result.summary
    assert len(captured) == 1 and captured[0].url.path == "/v1/steps/stop/run"
    return captured[0]


def replay(request: httpx.Request, url: str) -> httpx.Response:
    """Send a captured request again, byte for byte, to the agent at `url`."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
    return httpx.post(url + request.url.raw_path.decode(), content=request.content, headers=headers, timeout=10)


async def test_a_request_for_one_node_replayed_to_another_nodes_agent_does_not_run(
    agent: RunningAgent, tmp_path: Path
) -> None:
    other = launch(tmp_path, nodes=("127.0.0.2:9001",))  # node B's agent; `agent` serves node A (NODE)
    try:
        runs = agent.stopped()
        captured = await capture_stop(agent.url)
        assert agent.stopped() == runs + 1  # the original ran on node A
        refused = replay(captured, other.url)
        assert refused.status_code == 403, refused.text
        assert "does not serve node 127.0.0.1:9001" in refused.json()["error"]
        # The step's marker on node B: had the replay run, the agent's answer would have come after it.
        assert other.stopped() == 0
    finally:
        stop([other.process])


async def test_a_request_replayed_after_the_agent_restarts_does_not_run(tmp_path: Path) -> None:
    running = launch(tmp_path)
    try:
        captured = await capture_stop(running.url)
        assert running.stopped() == 1
        assert (tmp_path / "state" / "nonces.json").exists()
        stop([running.process])
        running.process = start_agent(tmp_path / "agent.yml", running.url)
        refused = replay(captured, running.url)
        assert refused.status_code == 401 and "replayed" in refused.json()["error"], refused.text
        assert running.stopped() == 1  # on the node: the step did not run again
        # The restarted agent does run a fresh request: the refusal was for the replay, not a broken agent.
        await capture_stop(running.url)
        assert running.stopped() == 2
    finally:
        stop([running.process])


async def test_without_its_state_file_a_restarted_agent_refuses_what_was_signed_before_it_started(
    tmp_path: Path,
) -> None:
    running = launch(tmp_path)
    try:
        captured = await capture_stop(running.url)
        stop([running.process])
        (tmp_path / "state" / "nonces.json").unlink()  # lost (or a first start): no record of the nonce
        running.process = start_agent(tmp_path / "agent.yml", running.url)
        refused = replay(captured, running.url)
        assert refused.status_code == 401 and "signed before this agent started" in refused.json()["error"]
        assert running.stopped() == 1
        assert "no record of earlier nonces" in (tmp_path / "agent.log").read_text()
    finally:
        stop([running.process])


def process_environment(pid: int) -> dict[str, str]:
    """A live process's environment, as the kernel holds it."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


async def test_steps_get_a_minimal_environment_without_the_agents_secrets(agent: RunningAgent) -> None:
    # The agent itself has them (so this test would see a leak).
    assert process_environment(agent.process.pid)["SLACK_BOT_TOKEN"] == LEAKS["SLACK_BOT_TOKEN"]
    ex = executor(agent.url)
    result = await ex.run("env", TARGET)
    await ex.close()
    assert result.ok, result.summary
    env = dict(line.split("=", 1) for line in result.stdout_tail if "=" in line)
    leaked = [
        name for name in env if name.startswith("SLACK_") or name in ("CONSUL_HTTP_TOKEN", "UPSTREAM_BOT_AGENT_SECRET")
    ]
    assert leaked == [] and not any(SECRET in v or MARK in v for v in env.values())
    assert {k: v for k, v in env.items() if k.startswith("UPSTREAM_BOT_")} == {
        "UPSTREAM_BOT_APP": "app",
        "UPSTREAM_BOT_HOST": "127.0.0.1",
        "UPSTREAM_BOT_PORT": "9001",
        "UPSTREAM_BOT_VERSION": "2.0",
    }
    assert env["DEPLOY_REGION"] == "eu-1"  # named in env_passthrough
    assert "PATH" in env and "HOME" in env


def test_a_plain_agent_says_so_at_start(agent: RunningAgent) -> None:
    log = agent.folder / "agent.log"
    assert wait_until(lambda: "insecure: true: serving plain HTTP" in log.read_text(), what="the warning")


def test_an_agent_config_with_neither_tls_nor_insecure_does_not_start(tmp_path: Path) -> None:
    config = agent_yml(tmp_path, free_port())
    config.write_text(config.read_text().replace("insecure: true\n", ""))
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "agent", "--config", str(config)],
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "tls: not set" in done.stderr and "insecure: true" in done.stderr


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"nodes": None}, "nodes: list the app nodes"),
        ({"nodes": ["10.0.0.5"]}, "nodes: '10.0.0.5' is not host:port"),
        ({"tls": {"cert": "/nonexistent.pem", "key": "/nonexistent.key"}}, "tls.cert: /nonexistent.pem is not"),
        ({"env_passthrough": ["UPSTREAM_BOT_AGENT_SECRET"]}, "env_passthrough: UPSTREAM_BOT_AGENT_SECRET is not"),
        ({"insecure": "yes"}, "insecure: expected true or false"),
    ],
)
def test_agent_config_problems_name_their_key(change: dict[str, object], problem: str) -> None:
    raw: dict[str, object] = {"listen": "127.0.0.1:7070", "nodes": [NODE], "insecure": True, "steps": {"stop": "true"}}
    raw.update(change)
    with pytest.raises(AgentConfigError) as error:
        parse_agent_config({k: v for k, v in raw.items() if v is not None}, {"UPSTREAM_BOT_AGENT_SECRET": SECRET})
    assert any(p.startswith(problem) for p in error.value.problems), error.value.problems


def test_nodes_match_by_address_and_port() -> None:
    settings = parse_agent_config(
        {"nodes": ["10.0.0.5:9000", "[::1]:*", "app-1.internal:9000"], "insecure": True, "steps": {"stop": "true"}},
        {"UPSTREAM_BOT_AGENT_SECRET": SECRET},
    )
    assert settings.serves("10.0.0.5", 9000) and not settings.serves("10.0.0.5", 9001)
    assert not settings.serves("10.0.0.6", 9000)
    assert settings.serves("0:0:0:0:0:0:0:1", 8080)  # any port, the address in any spelling
    assert settings.serves("APP-1.internal", 9000) and settings.node_hostnames == {"app-1.internal"}


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
        # TLS only: a bot that speaks plain HTTP is not served, and is told what to look at.
        plain = AgentExecutor(app(), SECRET.encode(), port=port, scheme="http", connect_timeout=5)
        refused = await plain.check(TARGET, ["deploy"]) or ""
        await plain.close()
        assert refused.startswith("connect:") and "is agent.scheme https?" in refused, refused
        assert "insecure" not in (tmp_path / "agent.log").read_text()
    finally:
        stop([process])


def test_agent_check_flags_a_plain_http_agent_and_passes_a_tls_one(certificate: Path) -> None:
    plain_folder = certificate / "plain"
    plain_folder.mkdir()
    checks = []
    for config in (agent_yml(plain_folder, free_port()), agent_yml(certificate, free_port(), tls=True)):
        checks.append(
            subprocess.run(
                [sys.executable, "-m", "bot.cli", "agent", "--check", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=30,
                env=agent_env(),
            )
        )
    plain, secure = checks
    assert plain.returncode == 0 and "warning:" in plain.stdout and "insecure: true" in plain.stdout
    assert secure.returncode == 0 and "TLS" in secure.stdout and "warning" not in secure.stdout
