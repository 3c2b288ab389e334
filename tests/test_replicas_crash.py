"""A release survives its bot, with real processes: two `upstream-bot serve --http` replicas on one Consul
stand-in and one Slack stand-in, nginx built with nginx-upsync-module and nginx_upstream_check_module
(tests/realnginx.py) in front of three sample services, its upstream read live from Consul by upsync,
constant load through nginx (wrk's short POSTs and slow uploads; `proxy_next_upstream off`, so
every failed request shows), and releases whose steps really stop, deploy and start the services.

The replica running a release is SIGKILLed (the lock key's value names it, host:pid) after a drain,
during a step, during the probe window and during the restore wait. Each time the other replica tells
the channel within the session TTL and one look (Consul may take up to 2 x TTL to end a dead session:
the bound asserted is generous; benchmarks/crash_report.py measures it), once, with the release's own
progress message turned into the same notice with Resume / Restore / Leave; Resume, pressed on the
survivor, finishes the release with every node deployed and serving and no request failed. A single
bot killed and started again reports the release it left when it starts.

The stack (Consul, Slack, nginx, services, replicas) is shared by the module: each test starts from
every node serving and two replicas up (a killed one is started again, as its supervisor would).

How each kill lands where it should (no timing luck):
- after a drain: nginx is held (its link to Consul stops answering upsync), so the release waits for nginx
  to stop routing to the node it drained; killed once Consul shows that node drained.
- during a step: the deploy step waits while the file `hold-deploy` exists.
- during the probe window: the probe URL is a gate in front of each service's /ping that answers 503
  while `hold-probe-<port>` exists (created once that node is drained).
- during the restore wait: the deploy is held, then nginx is held; the deploy goes on, and the release
  restores the node and waits for nginx to route to it; killed once Consul shows the node back.

Also here: a resume while nginx still routes to the node left drained (it waits for nginx, as after its
own drain), and, in process, the interruption monitor looking again after a look that failed.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from bot.interruptions import CHECK_EVERY, InterruptionMonitor
from bot.processes import free_port, start_sample_service, stop, stop_sample_service
from bot.standins.server_thread import ServerThread
from bot.standins.slack import Call, SlackStandIn
from commands.errors import StoreError
from commands.events import ReleaseInterrupted
from tests.conftest import Consul
from tests.helpers import RecordingNotifier, processes_matching, wait_until
from tests.nginx_harness import real_nginx
from tests.realnginx import ConsulLink, RealNginx
from tests.slack_bot import Bot, confirm_key, served
from tests.test_interrupt import drained
from tests.test_release_e2e import Counts, Load, Stack

TTL = 10.0  # consul.session_ttl: the shortest Consul takes
# The report is due within the TTL plus one look (CHECK_EVERY). Consul itself may take up to 2 x TTL to
# end a dead session (the stand-in takes exactly the TTL), so the bound asserted is 2 x TTL plus a look
# plus 3 s of margin for a busy machine: a bot that never reports fails it; the benchmark measures it.
REPORT_WITHIN = 2 * TTL + CHECK_EVERY + 3.0
LOCK = "upstream-bot/locks/app"
JOURNAL = "upstream-bot/releases/app"
SAMPLE = f"{shlex.quote(sys.executable)} -m bot.sample_service"
FINISH_WITHIN = 90.0  # a resumed release of three nodes takes about 15 s


class ProbeGate:
    """The release's probe URL: `GET /<host>/<port>/ping` answers what the service's own /ping answers,
    or 503 while the file `hold-probe-<port>` exists in `folder` (a node that comes up unhealthy)."""

    def __init__(self, folder: Path) -> None:
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                status = gate.answer(parts[0], parts[1]) if len(parts) == 3 and parts[1].isdigit() else 404
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.folder = folder
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = Thread(target=self._server.serve_forever, name="probe-gate", daemon=True)

    def answer(self, host: str, port: str) -> int:
        if (self.folder / f"hold-probe-{port}").exists():
            return 503
        # http.client, not httpx: a client (and its TLS context) per probe is too slow for the probes'
        # cadence in a test process that also runs the slow uploads.
        connection = http.client.HTTPConnection(host, int(port), timeout=0.4)
        try:
            connection.request("GET", "/ping")
            return connection.getresponse().status
        except OSError:
            return 502
        finally:
            connection.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ProbeGate:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Replica:
    name: str
    bot: Bot
    process: Any  # subprocess.Popen
    exits: ExitStack

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Crash:
    stack: Stack
    slack: SlackStandIn
    slack_url: str
    gate: ProbeGate
    marker: str  # in the command line of a held deploy step
    replicas: dict[str, Replica] = field(default_factory=dict)
    started: int = 0

    @property
    def consul(self) -> Consul:
        return self.stack.consul

    @property
    def folder(self) -> Path:
        return self.stack.folder

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.stack.ports]

    def config(self) -> str:
        where = f"--state-dir {shlex.quote(str(self.folder))}"
        hold = shlex.quote(str(self.folder / "hold-deploy"))
        wait = f"i=0; while [ -e {hold} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"  # at most 30 s
        steps = {
            "stop": f"{SAMPLE} stop --port {{port}} {where}",
            "deploy": f"{SAMPLE} deploy --port {{port}} --version {{version}} {where} && sh -c {shlex.quote(wait)} "
            + self.marker,
            "start": f"{SAMPLE} start --host {{host}} --port {{port}} {where}",
        }
        return (
            f"consul:\n  session_ttl: {TTL:g}s\nslack:\n  channel: C0DEPLOY\naccess:\n  operators: [U1ALICE]\n"
            "apps:\n  app:\n"
            f"    nginx:\n      list_url: {self.stack.nginx.url}/upstream_list\n      upsync_interval: 500ms\n"
            f"    health:\n      url: {self.gate.url}/{{host}}/{{port}}/ping\n      interval: 500ms\n"
            "      timeout: 500ms\n      window: 15s\n      rise: 2\n"
            # drain_wait: slow uploads stay about a second at their backend after nginx stops routing to it
            # step_timeout: a step the dead bot started may run until its timeout (+ a kill margin); Resume
            # waits for that, so it is short here (the held deploy is an orphan then, the timeout its bound).
            "    release:\n      executor: local\n      drain_wait: 1s\n      step_timeout: 5s\n      steps:\n"
            + "".join(f"        {name}: {json.dumps(command)}\n" for name, command in steps.items())
        )

    # -- replicas ---------------------------------------------------------------------------------------

    def start(self, name: str) -> Replica:
        """`upstream-bot serve --http` as replica `name` (a new process, same config and Consul)."""
        self.started += 1
        folder = self.folder / f"replica-{name}-{self.started}"
        folder.mkdir()
        exits = ExitStack()
        running = exits.enter_context(served(folder, self.config(), self.consul.url, self.slack_url))
        replica = Replica(name, Bot(running.url, self.consul, self.slack, self.slack_url), running.process, exits)
        self.replicas[name] = replica
        return replica

    def stop(self, name: str) -> None:
        self.replicas.pop(name).exits.close()

    def ensure(self, *names: str) -> None:
        for name in names:
            replica = self.replicas.get(name)
            if replica is not None and not replica.alive:
                self.stop(name)  # reaps it and prints its log
                replica = None
            if replica is None:
                self.start(name)

    def kill_holder(self) -> tuple[Replica, float]:
        """SIGKILL the replica whose session holds the release lock (its value names it, host:pid); the
        monotonic time of the kill."""
        holder = lock_holder(self.consul.url)
        assert holder is not None, "nobody holds the release lock"
        pid = int(str(holder["holder"]).rsplit(":", 1)[1])
        (replica,) = [r for r in self.replicas.values() if r.process.pid == pid]  # one of ours, alive
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        replica.process.wait(10)
        return replica, killed

    def survivor(self, killed: Replica) -> Replica:
        """A replica up (not `killed`): "b" when it is up, else the one started again."""
        others = [r for r in self.replicas.values() if r is not killed and r.alive]
        return next((r for r in others if r.name == "b"), others[0])

    # -- holds -------------------------------------------------------------------------------------------

    def hold(self, what: str) -> None:
        (self.folder / f"hold-{what}").touch()

    def let_go(self) -> None:
        for path in self.folder.glob("hold-*"):
            path.unlink()
        self.stack.watcher.let_go()

    def close(self) -> None:
        for name in list(self.replicas):
            self.stop(name)


def lock_holder(consul_url: str) -> dict[str, Any] | None:
    """The release lock's value while a session holds it (Consul over HTTP: a dead session ends there)."""
    response = httpx.get(f"{consul_url}/v1/kv/{LOCK}", timeout=5, trust_env=False)
    if response.status_code == 404:
        return None
    item = response.json()[0]
    return json.loads(base64.b64decode(item["Value"])) if item.get("Session") else None


def journal(consul: Consul) -> dict[str, Any]:
    return json.loads(consul.value(JOURNAL) or "{}")


def journal_node(consul: Consul, node: str) -> dict[str, Any]:
    return next((n for n in journal(consul).get("nodes", []) if n["address"] == node), {})


def routed(stack: Stack) -> dict[str, bool]:
    """address -> nginx routes to it (upsync's upstream_show, as nginx serves it)."""
    text = httpx.get(f"{stack.nginx.url}/upstream_list", timeout=5, trust_env=False).text
    return {
        line.split()[1]: not line.rstrip(";").endswith("down")
        for line in text.splitlines()
        if line.strip().startswith("server ")
    }


def answers(node: str) -> bool:
    try:
        return httpx.get(f"http://{node}/ping", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def blocks_of(call: Call) -> list[dict[str, Any]]:
    blocks = call.args.get("blocks") or []
    return json.loads(blocks) if isinstance(blocks, str) else list(blocks)


def resume_buttons(call: Call) -> dict[str, str]:
    """mode -> the value of its `release_resume` button in the message."""
    return {
        json.loads(e["value"])["mode"]: str(e["value"])
        for block in blocks_of(call)
        for e in block.get("elements", [])
        if e.get("action_id") == "release_resume"
    }


def interrupted_posts(slack: SlackStandIn) -> list[Call]:
    return [
        c for c in slack.calls("chat.postMessage") if "was interrupted" in c.text and not c.args.get("thread_ts")
    ]


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crash]:
    folder = tmp_path_factory.mktemp("crash")
    consul = Consul()
    slack = SlackStandIn()
    slack_server = ServerThread(slack.app()).start()
    ports = sorted(free_port() for _ in range(3))
    services = []
    nginx: RealNginx | None = None
    watcher: ConsulLink | None = None
    gate = ProbeGate(folder).start()
    crash: Crash | None = None
    try:
        for port in ports:
            services.append(start_sample_service(port, state_dir=folder))  # a pid file: the stop step uses it
            consul.add_server("app", f"127.0.0.1:{port}")
        nginx, watcher = real_nginx(folder / "nginx", consul.url, {f"127.0.0.1:{p}": False for p in ports})
        stack = Stack(folder, consul, nginx, watcher, ports)
        crash = Crash(stack, slack, slack_server.url, gate, f"upstream-bot-crash-hold-{folder.name}")
        yield crash
    finally:
        if crash is not None:
            crash.let_go()
            crash.close()
        if watcher is not None:
            watcher.stop()
        if nginx is not None:
            nginx.stop()
        gate.stop()
        for port in ports:
            stop_sample_service(port, folder)
        stop(services)
        slack.clear_faults()
        slack_server.stop()
        consul.stop()


@pytest.fixture
def crash(crash_stack: Crash) -> Iterator[Crash]:
    """Every node serving (in Consul and in nginx) and answering, no release running, two replicas up."""
    c = crash_stack
    c.let_go()
    c.ensure("a", "b")
    wait_until(lambda: lock_holder(c.consul.url) is None, FINISH_WITHIN, "no release running")
    if journal(c.consul).get("finished_at", 0) is None:  # a test that failed left it interrupted
        c.consul.server.call(c.consul.standin.kv.pop, JOURNAL)
    for node in c.nodes:
        if not answers(node):
            port = node.rsplit(":", 1)[1]
            where = ["--state-dir", str(c.folder)]
            subprocess.run([sys.executable, "-m", "bot.sample_service", "start", "--port", port, *where], timeout=30)
        if drained(c.consul.url).get(node):
            c.consul.add_server("app", node)
    wait_until(lambda: all(answers(n) for n in c.nodes), 15, "every service answering")
    wait_until(lambda: routed(c.stack) == {n: True for n in c.nodes}, 15, "nginx routing to every node")
    c.slack.clear()
    yield c
    c.let_go()
    if processes_matching(c.marker):
        wait_until(lambda: not processes_matching(c.marker), 10, "the held deploy step gone")


def start_release(bot: Bot, version: str) -> None:
    """`/release app --version V` and Start, pressed on `bot`: it runs the release."""
    bot.command("/release", f"app --version {version}")
    plan = bot.said(lambda c: "release_start" in json.dumps(c.args.get("blocks")), "chat.postEphemeral", 30)
    assert bot.press("release_start", confirm_key(plan, "release_start")).status_code == 200
    wait_until(lambda: lock_holder(bot.consul.url), 20, "the release lock taken")


def the_drained_node(crash: Crash) -> str | None:
    down = [a for a, d in drained(crash.consul.url).items() if d]
    assert len(down) <= 1, down  # serial: one node at a time
    return down[0] if down else None


@dataclass
class Killed:
    node: str  # the node the release had in hand
    replica: Replica
    at: float  # time.monotonic() of the SIGKILL
    progress: dict[str, str]  # the release's progress message (channel, ts), as its journal kept it


def kill_when(crash: Crash, node: str, ready: Callable[[], object], what: str) -> Killed:
    wait_until(ready, 60, what)
    replica, at = crash.kill_holder()
    progress = journal(crash.consul).get("progress") or {}
    return Killed(node, replica, at, progress)


def interrupted_edits(slack: SlackStandIn, killed: Killed) -> list[Call]:
    ts = killed.progress["ts"]
    return [c for c in slack.calls("chat.update") if c.args.get("ts") == ts and "was interrupted" in c.text]


def reported_and_resumed(crash: Crash, killed: Killed, during: str, version: str, load: Load) -> Counts:
    """What every crash must show: one notice in the channel and the progress message turned into it, both
    with Resume / Restore / Leave, within the bound; Resume pressed on the replica left finishes the
    release: every node deployed, serving and routed, and no request failed. The load's counts."""
    crash.let_go()  # whatever was held for the kill is let go: nginx catches up, probes pass, deploys go on
    survivor = crash.survivor(killed.replica)
    post = wait_until(lambda: interrupted_posts(crash.slack), REPORT_WITHIN, "the interrupted release told")[0]
    took = time.monotonic() - killed.at
    print(f"killed {killed.replica.name} with {killed.node} {during}: told {took:.1f} s later (TTL {TTL:g} s)")
    print(post.text)
    assert post.args["channel"] == "C0DEPLOY"
    assert f"interrupted at {killed.node} during {during}" in post.text, post.text
    assert "<@U1ALICE>" in post.text  # the requester is told
    assert set(resume_buttons(post)) == {"resume", "restore", "leave"}
    # The release's own progress message (kept in its journal) says the same, with the same buttons.
    assert killed.progress.get("ts"), f"the journal kept no progress message: {journal(crash.consul)}"
    edited = wait_until(lambda: interrupted_edits(crash.slack, killed), 10, "the progress message edited")
    assert set(resume_buttons(edited[0])) == {"resume", "restore", "leave"}
    assert drained(crash.consul.url)[killed.node] == int(during != "restoring")  # nothing done behind anyone's back

    if "may still run on its node until" in post.text:
        # The dead bot's deploy may still be running on the node: Resume is refused until its deadline.
        early = survivor.bot.press("release_resume", resume_buttons(post)["resume"])
        assert early.status_code == 200
        wait_until(
            lambda: any("Not yet" in c.text for c in crash.slack.calls("chat.postEphemeral")), 10, "Resume refused"
        )
        assert drained(crash.consul.url)[killed.node] == 1 and journal(crash.consul)["finished_at"] is None

        def deadlines_passed() -> bool:
            return all((n.get("step_deadline") or 0) < time.time() for n in journal(crash.consul)["nodes"])

        wait_until(deadlines_passed, 30, "the dead bot's step deadline passed")
    pressed = survivor.bot.press("release_resume", resume_buttons(post)["resume"])
    assert pressed.status_code == 200
    wait_until(lambda: journal(crash.consul).get("status") == "succeeded", FINISH_WITHIN, "the resumed release done")
    final = wait_until(
        lambda: [
            c
            for c in crash.slack.calls("chat.update")
            if c.args.get("ts") == killed.progress["ts"] and "succeeded" in c.text
        ],
        30,
        "the progress message showing the end",
    )
    assert "all 3 node(s) released" in final[-1].text
    counts = load.finish()
    print(counts)
    assert drained(crash.consul.url) == {n: 0 for n in crash.nodes}
    assert routed(crash.stack) == {n: True for n in crash.nodes}
    assert crash.stack.versions() == [version] * 3  # every service really was deployed and started again
    # Told once, across the replicas, over the whole release: one notice, one edit of its message.
    assert len(interrupted_posts(crash.slack)) == 1 and len(interrupted_edits(crash.slack, killed)) == 1
    assert counts.requests > 500 and counts.slow_requests > 20, counts
    assert counts.failures == 0 and counts.slow_failures == 0, counts
    return counts


def test_killed_after_a_drain_the_other_replica_reports_and_resume_finishes(crash: Crash) -> None:
    crash.stack.watcher.hold()  # nginx slow to follow: the release waits for it to stop routing to the node
    load = Load(crash.stack)
    start_release(crash.replicas["a"].bot, "2")
    node = wait_until(lambda: the_drained_node(crash), 60, "a node drained")
    killed = kill_when(crash, node, lambda: True, "the node drained")  # at once: nginx holds the release there
    # In hand (its drain landed and was recorded), not stopped yet.
    assert journal_node(crash.consul, node)["phase"] == "waiting for traffic to leave"
    assert answers(node)
    reported_and_resumed(crash, killed, "waiting for traffic to leave", "2", load)


def test_killed_during_a_step_the_other_replica_reports_and_resume_finishes(crash: Crash) -> None:
    crash.hold("deploy")
    load = Load(crash.stack)
    start_release(crash.replicas["a"].bot, "3")
    killed = kill_when(crash, "", lambda: processes_matching(crash.marker), "the deploy step running")
    killed.node = the_drained_node(crash) or ""
    assert journal_node(crash.consul, killed.node)["step"] == "deploy"
    assert not answers(killed.node)  # stopped: its deploy was running
    crash.start("a")  # its supervisor starts it again at once: two replicas look, one tells
    reported_and_resumed(crash, killed, "deploy", "3", load)
    # Told within the step's deadline (5 s timeout + margin): a first Resume was refused, saying why.
    assert any("Not yet: the step its bot started may still be running" in c.text for c in crash.slack.calls())


def test_killed_during_the_probe_window_the_other_replica_reports_and_resume_finishes(crash: Crash) -> None:
    load = Load(crash.stack)
    start_release(crash.replicas["a"].bot, "4")
    node = wait_until(lambda: the_drained_node(crash), 60, "a node drained")
    crash.hold(f"probe-{node.rsplit(':', 1)[1]}")  # it comes up unhealthy, until let go
    killed = kill_when(crash, node, lambda: journal_node(crash.consul, node).get("phase") == "probing", "probing")
    assert answers(node)  # started again, and probed through the gate, which says it is not healthy yet
    reported_and_resumed(crash, killed, "probing", "4", load)


def test_killed_during_the_restore_wait_the_other_replica_reports_and_resume_finishes(crash: Crash) -> None:
    crash.hold("deploy")
    load = Load(crash.stack)
    start_release(crash.replicas["a"].bot, "5")
    wait_until(lambda: processes_matching(crash.marker), 60, "the deploy step running")
    node = the_drained_node(crash) or ""
    crash.stack.watcher.hold()  # nginx (which saw the drain) will be slow to see the restore
    (crash.folder / "hold-deploy").unlink()

    def restored() -> bool:
        return journal_node(crash.consul, node).get("phase") == "restoring" and not drained(crash.consul.url)[node]

    killed = kill_when(crash, node, restored, "the node restored in Consul, nginx not routing to it yet")
    assert routed(crash.stack)[node] is False  # the release was waiting for nginx to route to it
    reported_and_resumed(crash, killed, "restoring", "5", load)


def test_a_single_bot_killed_and_started_again_reports_when_it_starts(crash: Crash) -> None:
    crash.stop("b")  # one bot only
    crash.hold("deploy")
    load = Load(crash.stack)
    start_release(crash.replicas["a"].bot, "6")
    killed = kill_when(crash, "", lambda: processes_matching(crash.marker), "the deploy step running")
    killed.node = the_drained_node(crash) or ""
    crash.stop("a")
    # Started again once its old session has ended: only its look at start can find the release.
    wait_until(lambda: lock_holder(crash.consul.url) is None, 2 * TTL + 3, "the dead bot's lock freed")
    assert interrupted_posts(crash.slack) == []  # nobody was left to tell
    started = time.monotonic()
    crash.start("a")
    wait_until(lambda: interrupted_posts(crash.slack), 10, "the interrupted release told by the bot started again")
    now = time.monotonic()
    print(f"told {now - started:.1f} s after the start began, {now - killed.at:.1f} s after the kill")
    assert time.monotonic() - killed.at <= REPORT_WITHIN + 10  # + the bot's own start (a Python process)
    reported_and_resumed(crash, killed, "deploy", "6", load)


def test_resume_does_not_stop_a_node_nginx_still_routes_to(crash: Crash) -> None:
    crash.stack.watcher.hold()  # nginx is stuck: it never sees the drain, and routes to the node all along
    load = Load(crash.stack)
    start_release(crash.replicas["a"].bot, "7")
    node = wait_until(lambda: the_drained_node(crash), 60, "a node drained")
    killed = kill_when(crash, node, lambda: True, "the node drained")
    post = wait_until(lambda: interrupted_posts(crash.slack), REPORT_WITHIN, "the interrupted release told")[0]
    assert crash.survivor(killed.replica).bot.press("release_resume", resume_buttons(post)["resume"]).status_code == 200
    # The resumed release must wait for nginx, as the first one did: for 5 s (its preflight and more than a
    # drain wait) the node keeps serving. Bounded look, then nginx is let go and the release finishes.
    stopped, deadline = False, time.monotonic() + 5.0
    while not stopped and time.monotonic() < deadline:
        stopped = not answers(node)
        time.sleep(0.05)
    crash.let_go()
    wait_until(lambda: journal(crash.consul).get("finished_at") is not None, FINISH_WITHIN, "the release over")
    counts = load.finish()
    print(counts)
    assert not stopped, f"{node} stopped while nginx still routed to it"
    assert counts.failures == 0 and counts.slow_failures == 0, counts


class _Locks:
    def __init__(self) -> None:
        self.free_keys: dict[str, int] = {}

    async def free(self) -> dict[str, int]:
        return dict(self.free_keys)


class _Releases:
    """What InterruptionMonitor reads: the free lock keys, and which releases are newly interrupted."""

    def __init__(self) -> None:
        self.locks = _Locks()
        self.failures = 0  # how many looks at the journals fail (Consul answering errors)
        self.interrupted: list[Any] = []

    async def claim_interrupted(self, app: str) -> Any:
        if self.failures:
            self.failures -= 1
            raise StoreError("Consul answered 500")
        found = next((e for e in self.interrupted if e.app == app), None)
        self.interrupted = [e for e in self.interrupted if e is not found]
        return found

    @staticmethod
    def summary(entry: Any) -> str:
        return f"Release {entry.app} was interrupted"


async def test_a_look_that_fails_as_the_lock_frees_is_looked_at_again_the_next_second() -> None:
    releases = _Releases()
    monitor = InterruptionMonitor(releases, ["app"])  # type: ignore[arg-type]
    told = RecordingNotifier()
    releases.locks.free_keys = {"app": 7}  # a release ended normally: its lock is free
    assert await monitor.look(told, everything=True) == 0
    # A bot dies mid-release: its lock frees (a new index) while Consul fails the look at the journal.
    releases.locks.free_keys = {"app": 12}
    releases.interrupted = [SimpleNamespace(app="app")]
    releases.failures = 1
    assert await monitor.look(told, everything=False) == 0  # Consul failed this app's journal: not seen
    assert await monitor.look(told, everything=False) == 1  # the next look, not the next full one
    assert [e.summary for e in told.of(ReleaseInterrupted)] == ["Release app was interrupted"]
