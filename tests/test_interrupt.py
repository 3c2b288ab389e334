"""Ctrl-C, SIGTERM and SIGHUP during `upstream-bot run "/release ..."` and the demo, as a user (or a closing
terminal) sends them: the CLI is a real process, the nodes are sample services that the release really
stops and starts, and Consul (the stand-in) is read over HTTP to see what was really left drained."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from bot.processes import free_port, port_free, start_sample_service, stop_sample_service
from tests.conftest import Consul
from tests.helpers import processes_matching, wait_until
from tests.test_release_operators import gated

BIN = [sys.executable, "-m", "bot.cli"]
SAMPLE = f"{shlex.quote(sys.executable)} -m bot.sample_service"
EXIT_INTERRUPTED = 130


def drained(consul_url: str, prefix: str = "upstreams/app/") -> dict[str, int]:
    """address -> `down`, as Consul answers over HTTP (what nginx-upsync-module would read)."""
    response = httpx.get(f"{consul_url}/v1/kv/{prefix}", params={"recurse": "1"}, timeout=5, trust_env=False)
    response.raise_for_status()
    return {
        item["Key"].rsplit("/", 1)[-1]: int(json.loads(base64.b64decode(item["Value"]))["down"])
        for item in response.json()
    }


def journal(consul_url: str) -> dict[str, Any]:
    """The release journal of `app`, as any process reads it from Consul."""
    response = httpx.get(f"{consul_url}/v1/kv/upstream-bot/releases/app", timeout=5, trust_env=False)
    response.raise_for_status()
    return dict(json.loads(base64.b64decode(response.json()[0]["Value"])))


def marker_sleep(seconds: int) -> str:
    """A `sleep` whose command line is unique to this test, so /proc tells whether it still runs."""
    return f"sleep {seconds}.{random.randrange(10**8):08d}"


@dataclass
class Nodes:
    folder: Path
    ports: list[int]
    consul: Consul

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def config(self, deploy: str, start: str | None = None, step_timeout: str | None = None) -> Path:
        where = f"--state-dir {shlex.quote(str(self.folder))}"
        steps = {
            "stop": f"{SAMPLE} stop --port {{port}} {where}",
            "deploy": deploy,
            "start": start or f"{SAMPLE} start --host {{host}} --port {{port}} {where}",
        }
        path = self.folder / "upstream-bot.yml"
        path.write_text(
            "consul:\n  session_ttl: 10s\n"  # the shortest Consul takes: a dead bot's lock frees soonest
            "apps:\n  app:\n"
            "    health:\n      url: http://{host}:{port}/ping\n      interval: 300ms\n      timeout: 300ms\n"
            "      window: 10s\n"
            "    nginx:\n      upsync_interval: 100ms\n"
            "    release:\n      executor: local\n      drain_wait: 100ms\n"
            + (f"      step_timeout: {step_timeout}\n" if step_timeout else "")
            + "      steps:\n"
            + "".join(f"        {name}: {json.dumps(command)}\n" for name, command in steps.items())
        )
        return path


@pytest.fixture
def nodes(tmp_path: Path, consul: Consul) -> Iterator[Nodes]:
    ports = sorted(free_port() for _ in range(3))
    for port in ports:
        start_sample_service(port, state_dir=tmp_path)  # with a pid file: the release's stop step uses it
        consul.add_server("app", f"127.0.0.1:{port}")
    try:
        yield Nodes(tmp_path, ports, consul)
    finally:
        for port in ports:
            stop_sample_service(port, tmp_path)


class Cli:
    """`upstream-bot ...` as a background process; its output goes to a file read while it runs."""

    def __init__(
        self, args: list[str], folder: Path, env: dict[str, str], stdin: int | None = None, under: tuple[str, ...] = ()
    ) -> None:
        self.log = folder / f"out-{time.monotonic_ns()}.txt"
        self._file = self.log.open("w")
        self.process = subprocess.Popen(
            [*under, *BIN, *args],
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=self._file,
            stderr=subprocess.STDOUT,  # a traceback would land here too
            text=True,
            env={**os.environ, **env},
        )

    @property
    def output(self) -> str:
        return self.log.read_text()

    @property
    def stdin(self) -> IO[str]:
        assert self.process.stdin is not None
        return self.process.stdin

    def wait_output(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        wait_until(lambda: self.output.count(text) >= count, timeout, f"{text!r} in the output\n{self.output}")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
            self._file.close()


def run_release(nodes: Nodes, config: Path, yes: bool = True, under: tuple[str, ...] = ()) -> Cli:
    args = ["run", "/release app --version 2", *(["--yes"] if yes else [])]
    env = {"UPSTREAM_BOT_CONFIG": str(config), "CONSUL_HTTP_ADDR": nodes.consul.url}
    return Cli(args, nodes.folder, env, stdin=None if yes else subprocess.PIPE, under=under)


def the_drained_node(nodes: Nodes) -> str:
    down = [a for a, d in drained(nodes.consul.url).items() if d]
    assert len(down) == 1, down  # serial: one node at a time
    return down[0]


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup twice"]
)
def test_one_signal_during_a_step_aborts_the_release_and_puts_the_node_back(nodes: Nodes, sig: signal.Signals) -> None:
    deploy = marker_sleep(3)
    cli = run_release(nodes, nodes.config(deploy))
    wait_until(lambda: processes_matching(deploy), 30, "the deploy step running")
    node = the_drained_node(nodes)
    cli.signal(sig)
    if sig is signal.SIGHUP:  # a closing terminal may send it twice (to the shell, which sends it on): one
        cli.wait_output("aborting (SIGHUP)")
        cli.signal(sig)
    code = cli.wait(60)
    out = cli.output
    print(out)
    name = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}[sig]
    again = "sigterm stops it at once" if sig is signal.SIGHUP else "press ctrl-c again"
    assert code == EXIT_INTERRUPTED
    assert "Traceback" not in out and "stopping at once" not in out
    assert f"aborting ({name})" in out and again in out.lower()
    assert f"({name})" in out.split(f"aborting ({name})", 1)[1]  # the release says who aborted it, and how
    # The deploy step ran to its end (the abort stops before the NEXT step); the node was started
    # again, probed and put back: nothing drained in Consul, the node answers, no step left running.
    assert re.search(r"Release app 2 \([^)]*\): nothing is left drained", out)
    assert drained(nodes.consul.url) == {a: 0 for a in nodes.addresses}
    assert httpx.get(f"http://{node}/ping", timeout=2, trust_env=False).status_code == 200
    assert processes_matching(deploy) == []
    assert "/undrain" not in out


def test_a_release_run_under_nohup_outlives_the_session_closing(nodes: Nodes) -> None:
    """`nohup upstream-bot run "/release ..." &` keeps a release past a logout: the SIGHUP the closing
    session sends is ignored, as nohup asked, and the release goes on to its end."""
    deploy = marker_sleep(3)
    cli = run_release(nodes, nodes.config(deploy), under=("nohup",))
    wait_until(lambda: processes_matching(deploy), 30, "the deploy step running")
    cli.signal(signal.SIGHUP)
    code = cli.wait(120)
    out = cli.output
    assert code == 0, out
    assert "aborting" not in out and "succeeded" in out
    assert drained(nodes.consul.url) == {a: 0 for a in nodes.addresses}


@pytest.mark.parametrize("when", ["immediately", "during the abort's start"])
def test_a_second_signal_exits_at_once_and_lists_what_is_left_drained(nodes: Nodes, when: str) -> None:
    if when == "immediately":
        deploy, start = marker_sleep(30), None
        busy = deploy  # the step the second signal must kill
    else:
        # The abort starts the node again: a slow start, so the second signal lands while it runs.
        deploy, start = marker_sleep(2), marker_sleep(30)
        busy = start
    cli = run_release(nodes, nodes.config(deploy, start))
    wait_until(lambda: processes_matching(deploy), 30, "the deploy step running")
    node = the_drained_node(nodes)
    cli.signal(signal.SIGINT)
    cli.wait_output("aborting (Ctrl-C)")  # the first one was handled: the second is a second, not merged
    if start is not None:
        wait_until(lambda: processes_matching(start), 30, "the abort's own start step running")
    sent = time.monotonic()
    cli.signal(signal.SIGINT)
    code = cli.wait(30)
    took = time.monotonic() - sent
    out = cli.output
    print(out)
    assert code == EXIT_INTERRUPTED
    assert took < 8, f"took {took:.1f} s to exit after the second Ctrl-C"
    assert "Traceback" not in out
    assert f'upstream-bot run "/undrain {node} app"' in out
    assert re.search(rf"{re.escape(node)}: also left stopped; start it first", out)
    assert "nothing is left drained" not in out.split("stopping at once", 1)[1]
    assert drained(nodes.consul.url) == {a: int(a == node) for a in nodes.addresses}  # really still drained
    assert wait_until(lambda: not processes_matching(busy), 10, "the cancelled step killed")


def test_a_signal_with_no_release_running_cancels_the_command(nodes: Nodes) -> None:
    cli = run_release(nodes, nodes.config("true"), yes=False)  # waits at its Confirm? prompt, stdin open
    cli.wait_output("Confirm? [y/N]")
    sent = time.monotonic()
    cli.signal(signal.SIGINT)
    code = cli.wait(15)
    out = cli.output
    assert code == EXIT_INTERRUPTED, out
    assert time.monotonic() - sent < 5  # no thread blocked on stdin holds the exit
    assert "Traceback" not in out
    assert "no release had started; nothing is left drained" in out
    assert drained(nodes.consul.url) == {a: 0 for a in nodes.addresses}


def test_demo_ctrl_c_aborts_a_release_back_to_the_prompt_and_a_second_leaves(tmp_path: Path) -> None:
    base = next(p for p in range(19101, 19900, 10) if all(port_free(p + i) for i in range(3)))
    cli = Cli(["demo", "--base-port", str(base), "--yes"], tmp_path, {}, stdin=subprocess.PIPE)
    try:
        cli.wait_output("upstream-bot> ")
        consul = re.search(r"Consul stand-in at (http://\S+),", cli.output).group(1)  # type: ignore[union-attr]
        cli.stdin.write("/release app --version 2\n")
        cli.stdin.flush()
        wait_until(lambda: any(drained(consul).values()), 30, "a node drained")
        cli.signal(signal.SIGINT)
        cli.wait_output("nothing is left drained")
        assert drained(consul) == {f"127.0.0.1:{base + i}": 0 for i in range(3)}
        cli.stdin.write("/upstream status app\n")  # the prompt is back and takes commands
        cli.stdin.flush()
        cli.wait_output("app: 3 of 3 serving")
        # A second release: two Ctrl-C leave the demo, naming what is left drained.
        cli.stdin.write("/release app --version 3\n")
        cli.stdin.flush()
        node = wait_until(lambda: next((a for a, d in drained(consul).items() if d), None), 30, "a node drained again")
        cli.signal(signal.SIGINT)
        cli.wait_output("aborting (Ctrl-C)", count=2)
        cli.signal(signal.SIGINT)  # within the drain wait (2.5 s in the demo): nothing restored it yet
        code = cli.wait(30)
    finally:
        if cli.process.poll() is None:
            cli.process.kill()
            cli.wait(10)
    out = cli.output
    print(out)
    assert code == EXIT_INTERRUPTED
    assert "Traceback" not in out
    assert f"{node}: /undrain {node} app" in out  # the command for the demo's own prompt
    assert "leaving the demo" in out
    wait_until(lambda: all(port_free(base + i) for i in range(3)), 15, "the demo's services stopped")


def test_demo_ctrl_c_at_the_prompt_exits_as_before_even_after_a_command(tmp_path: Path) -> None:
    base = next(p for p in range(19401, 19900, 10) if all(port_free(p + i) for i in range(3)))
    cli = Cli(["demo", "--base-port", str(base)], tmp_path, {}, stdin=subprocess.PIPE)
    try:
        cli.wait_output("upstream-bot> ")
        cli.stdin.write("/upstream status app\n")  # the command's own signal handlers come and go
        cli.stdin.flush()
        cli.wait_output("upstream-bot> ", count=2)
        sent = time.monotonic()
        cli.signal(signal.SIGINT)  # at the prompt, stdin still open: no thread blocked on it holds the exit
        code = cli.wait(15)
    finally:
        if cli.process.poll() is None:
            cli.process.kill()
            cli.wait(10)
    assert code == 0, cli.output
    assert time.monotonic() - sent < 10
    assert "Traceback" not in cli.output
    wait_until(lambda: all(port_free(base + i) for i in range(3)), 15, "the demo's services stopped")


def test_a_bot_killed_mid_release_leaves_no_worse_and_another_process_resumes_it(nodes: Nodes) -> None:
    """SIGKILL (no abort possible): the node in hand stays drained, every other node keeps serving, the
    journal in Consul knows which node was in hand, and once the dead bot's lock expires another process's
    `/release status` says the release was interrupted; `run "/release resume app"` finishes it."""
    gate = nodes.folder / "deploy-may-finish"
    marker = f"upstream-bot-deploy-{random.randrange(10**8):08d}"  # unique to this run, for /proc
    deploy = gated(gate, marker)  # blocks until the gate exists
    # A short step timeout: the dead bot's deploy may run until it (+ 10 s), and Resume waits for that.
    config = nodes.config(deploy, step_timeout="3s")
    cli = run_release(nodes, config)
    wait_until(lambda: processes_matching(marker), 30, "the deploy step running")
    node = the_drained_node(nodes)
    cli.process.kill()
    cli.wait(10)
    down = drained(nodes.consul.url)
    assert down[node] == 1 and sum(down.values()) == 1  # not worse: only the node in hand is out of traffic
    env = {"UPSTREAM_BOT_CONFIG": str(config), "CONSUL_HTTP_ADDR": nodes.consul.url}

    def interrupted() -> str | None:
        run = Cli(["run", "/release status app"], nodes.folder, env)
        run.wait(30)
        return run.output if "INTERRUPTED" in run.output else None

    # The session's TTL is 10 s (Consul may take up to 2 x TTL): poll for the lock to go.
    try:
        seen = wait_until(interrupted, 45, "the release shown as interrupted")
        assert re.search(rf"^\s+{re.escape(node)}\s+deploy\.\.\., drained, stopped$", seen, re.M), seen
        assert "/release resume app" in seen  # what to do about it
        assert drained(nodes.consul.url)[node] == 1  # nothing put it back behind anyone's back
        gate.touch()
        deadline = max(n.get("step_deadline") or 0 for n in journal(nodes.consul.url)["nodes"])
        assert deadline > 0  # the deploy was running: the journal says until when it may run on
        if time.time() < deadline - 2:  # a first try well within it is refused, saying until when
            early = Cli(["run", "/release resume app", "--yes"], nodes.folder, env)
            code = early.wait(30)
            print(early.output)
            assert code == 1 and "Not yet" in early.output and drained(nodes.consul.url)[node] == 1
        wait_until(lambda: time.time() > deadline, 30, "the dead bot's step deadline")
        resume = Cli(["run", "/release resume app", "--yes"], nodes.folder, env)
        code = resume.wait(90)
        out = resume.output
        print(out)
        assert code == 0 and "Traceback" not in out
        assert "was interrupted at" in out and "during deploy" in out  # what it takes up, before confirming
        assert re.search(r"Release app 2 \([^)]*\): succeeded", out)
        assert drained(nodes.consul.url) == {a: 0 for a in nodes.addresses}
        for address in nodes.addresses:
            assert httpx.get(f"http://{address}/ping", timeout=2, trust_env=False).status_code == 200
    finally:
        gate.touch()  # the dead bot's step, orphaned on the node, ends


def test_run_on_a_terminal_that_is_closed_aborts_the_release_and_logs_what_is_left(nodes: Nodes) -> None:
    from tests.test_terminal_prompt import Terminal

    deploy = marker_sleep(3)
    config = nodes.config(deploy)
    env = {"UPSTREAM_BOT_CONFIG": str(config), "CONSUL_HTTP_ADDR": nodes.consul.url}
    log = nodes.folder / "run.log"  # `upstream-bot run ... 2>run.log`: what is left once the terminal is gone
    with log.open("w") as stderr:
        term = Terminal([*BIN, "run", "/release app --version 2", "--yes"], stderr=stderr, env=env)
    try:
        wait_until(lambda: processes_matching(deploy), 30, "the deploy step running")
        node = the_drained_node(nodes)
        term.hang_up()  # the window is closed, ssh dropped: SIGHUP, and the terminal's writes fail (EIO)
        code = term.process.wait(60)
    finally:
        if term.process.poll() is None:
            term.process.kill()
        term.close()
    out = log.read_text()
    print(out)
    assert code == EXIT_INTERRUPTED
    assert "Traceback" not in out and "Logging error" not in out and "stopping at once" not in out
    assert "the output is gone (the terminal hung up)" in out
    assert "aborting (SIGHUP)" in out and "aborted by" in out
    assert re.search(r"Release app 2 \([^)]*\): nothing is left drained", out)
    assert drained(nodes.consul.url) == {a: 0 for a in nodes.addresses}  # really put back, in Consul
    assert httpx.get(f"http://{node}/ping", timeout=2, trust_env=False).status_code == 200
