"""The SSH executor against a real, private OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.executors.ssh import SshExecutor
from commands.settings import AppSettings, ReleaseSettings, SshOverride, SshSettings, StepSpec
from commands.steps import OutputLine, StepRefused, StepTarget
from tests.helpers import wait_gone, wait_started
from tests.sshd import PrivateSshd, keygen, user


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSshd]:
    server = PrivateSshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


def make_app(steps: dict[str, str], timeout: float = 30.0) -> AppSettings:
    return AppSettings(
        "app", "app", release=ReleaseSettings(executor="ssh", steps={k: StepSpec(v, timeout) for k, v in steps.items()})
    )


def executor(sshd: PrivateSshd, steps: dict[str, str], timeout: float = 30.0, **over: object) -> SshExecutor:
    settings = {
        "user": user(),
        "port": sshd.port,
        "key": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts),
        "connect_timeout": 5.0,
        **over,
    }
    return SshExecutor(make_app(steps, timeout), SshSettings(**settings))  # type: ignore[arg-type]


TARGET = StepTarget("app", "127.0.0.1", 9001, "2.0")


async def test_a_step_that_succeeds_streams_its_output(sshd: PrivateSshd) -> None:
    ex = executor(sshd, {"deploy": "echo deploying {app} {version} to {port}; echo warn >&2"})
    lines: list[OutputLine] = []

    async def collect(line: OutputLine) -> None:
        lines.append(line)

    try:
        result = await ex.run("deploy", TARGET, collect)
    finally:
        await ex.close()
    assert result.ok and result.exit_status == 0
    assert result.stdout_tail == ("deploying app 2.0 to 9001",) and result.stderr_tail == ("warn",)
    assert ("stdout", "deploying app 2.0 to 9001") in [(line.stream, line.line) for line in lines]


async def test_a_failing_step_reports_its_status_and_stderr_tail(sshd: PrivateSshd) -> None:
    ex = executor(sshd, {"stop": "echo stopping; echo 'unit app@9001 not found' >&2; exit 3"})
    try:
        result = await ex.run("stop", TARGET)
    finally:
        await ex.close()
    assert not result.ok and result.exit_status == 3
    assert result.stderr_tail == ("unit app@9001 not found",)
    assert "exit status 3" in result.summary and "unit app@9001 not found" in result.summary


async def test_a_step_that_outlives_its_timeout_is_killed_on_the_node(sshd: PrivateSshd) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    ex = executor(sshd, {"deploy": f"sleep 60 # {marker}\necho never"}, timeout=1.0)
    try:
        result = await ex.run("deploy", TARGET)
    finally:
        await ex.close()
    assert result.error is not None and result.error.startswith("timeout") and "killed on the node" in result.error
    assert result.duration < 15
    assert await wait_gone(marker) == []


async def test_a_cancelled_step_is_stopped_on_the_node(sshd: PrivateSshd) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    ex = executor(sshd, {"deploy": f"sleep 60 # {marker}"})
    task = asyncio.create_task(ex.run("deploy", TARGET))
    assert await wait_started(f"sleep 60 # {marker}"), "the step never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ex.close()
    assert await wait_gone(marker) == []


async def test_an_unknown_host_key_is_refused_naming_the_fingerprint(sshd: PrivateSshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ex = executor(sshd, {"stop": "true"}, known_hosts=str(empty))
    before = sshd.accepted()
    result = await ex.run("stop", TARGET)
    await ex.close()
    assert result.error is not None and result.error.startswith("host key:")
    assert "unknown host" in result.error and "SHA256:" in result.error and f"127.0.0.1:{sshd.port}" in result.error
    assert sshd.accepted() == before  # the client stopped before authenticating
    assert empty.read_text() == ""  # never auto-accepted


async def test_a_changed_host_key_is_refused(sshd: PrivateSshd, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {(tmp_path / 'other_host_key.pub').read_text()}")
    ex = executor(sshd, {"stop": "true"}, known_hosts=str(known))
    result = await ex.run("stop", TARGET)
    await ex.close()
    assert other.exists() and result.error is not None
    assert "changed host key" in result.error and "SHA256:" in result.error


async def test_a_wrong_key_and_a_closed_port_say_what_failed(sshd: PrivateSshd, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    ex = executor(sshd, {"stop": "true"}, key=str(stranger))
    result = await ex.run("stop", TARGET)
    await ex.close()
    assert result.error is not None and result.error.startswith("auth:")
    from bot.processes import free_port

    ex = executor(sshd, {"stop": "true"}, port=free_port())
    result = await ex.run("stop", TARGET)
    await ex.close()
    assert result.error is not None and result.error.startswith("connect:") and "connection refused" in result.error


async def test_an_injection_attempt_in_the_version_is_refused_before_anything_runs(
    sshd: PrivateSshd, tmp_path: Path
) -> None:
    witness = tmp_path / "injected"
    before = sshd.accepted()
    ex = executor(sshd, {"deploy": "/bin/echo {version}"})
    with pytest.raises(StepRefused, match="version refused"):
        await ex.run("deploy", StepTarget("app", "127.0.0.1", 9001, f"1.0;touch${{IFS}}{witness}"))
    await ex.close()
    assert not witness.exists() and sshd.accepted() == before  # not even a connection


async def test_values_are_shell_quoted(sshd: PrivateSshd) -> None:
    # The characters a version may carry (. _ - + ~ : = @ ,) reach the node as one word, as typed.
    steps = {"deploy": StepSpec("printf '%s|' {version}", 30)}
    app = AppSettings("app", "app", release=ReleaseSettings(steps=steps, version_pattern=r"^\S+$"))
    ex = SshExecutor(
        app, SshSettings(user=user(), port=sshd.port, key=str(sshd.client_key), known_hosts=str(sshd.known_hosts))
    )
    try:
        result = await ex.run("deploy", StepTarget("app", "127.0.0.1", 9001, "1:2.0~rc1+b.7=x@y,z"))
    finally:
        await ex.close()
    assert result.stdout_tail == ("1:2.0~rc1+b.7=x@y,z|",)


async def test_a_permissive_version_pattern_still_cannot_let_shell_syntax_through(sshd: PrivateSshd) -> None:
    # A template that quotes the placeholder itself would undo shlex.quote: such values never get there.
    steps = {"deploy": StepSpec('echo deploying "{version}"', 30)}
    app = AppSettings("app", "app", release=ReleaseSettings(steps=steps, version_pattern=r"^\S+$"))
    ex = SshExecutor(
        app, SshSettings(user=user(), port=sshd.port, key=str(sshd.client_key), known_hosts=str(sshd.known_hosts))
    )
    before = sshd.accepted()
    try:
        for version in ("$(id)", "1;id", "`id`", "1'x", '1"x', "a|b"):
            with pytest.raises(StepRefused, match="version refused"):
                await ex.run("deploy", StepTarget("app", "127.0.0.1", 9001, version))
    finally:
        await ex.close()
    assert sshd.accepted() == before  # refused before connecting


async def test_one_connection_serves_every_step_of_a_release(sshd: PrivateSshd) -> None:
    ex = executor(sshd, {"stop": "true", "deploy": "true", "start": "true"})
    before = sshd.accepted()
    try:
        for target in (TARGET, StepTarget("app", "127.0.0.1", 9002, "2.0")):
            for step in ("stop", "deploy", "start"):
                assert (await ex.run(step, target)).ok
    finally:
        await ex.close()
    assert sshd.accepted() - before == 1 and ex.connections_opened == 1


async def test_a_jump_host_is_used_when_configured(sshd: PrivateSshd) -> None:
    ex = executor(sshd, {"stop": "echo via jump"}, jump=f"{user()}@127.0.0.1:{sshd.port}")
    before = sshd.accepted()
    try:
        result = await ex.run("stop", TARGET)
    finally:
        await ex.close()
    assert result.ok and result.stdout_tail == ("via jump",)
    assert sshd.accepted() - before == 2  # the jump host, then the node through it


async def test_preflight_checks_the_connection_and_the_steps(sshd: PrivateSshd, tmp_path: Path) -> None:
    ex = executor(sshd, {"stop": "true"})
    assert await ex.check(TARGET, ["stop"]) is None
    assert "no step deploy" in (await ex.check(TARGET, ["stop", "deploy"]) or "")
    await ex.close()
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ex = executor(sshd, {"stop": "true"}, known_hosts=str(empty))
    assert (await ex.check(TARGET, ["stop"]) or "").startswith("host key:")
    await ex.close()


def test_host_settings_win_over_app_settings_over_global() -> None:
    app = AppSettings("app", "app", ssh=SshOverride(user="app-user", port=2200))
    ex = SshExecutor(app, SshSettings(user="deploy", port=22, jump="bastion"), {"10.0.0.9": SshOverride(port=2222)})
    assert str(ex.route("10.0.0.9")) == "app-user@10.0.0.9:2222 via bastion"
    assert str(ex.route("10.0.0.8")) == "app-user@10.0.0.8:2200 via bastion"
