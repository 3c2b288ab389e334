"""A release and the people around it, with real parts: the Consul stand-in over HTTP, the real Consul
session lock, sample services as processes and steps run by the local executor as real processes.

- An operator's drain of a later node during a release is told where the node stands, and the release
  skips that node and leaves it drained (it never restores what it did not drain).
- A drain or undrain of the node being released is refused.
- A lock whose session is destroyed stops the release at once: its step is killed, nothing more is
  written, and the message says what each node was left as.
- A write whose answer is lost is read back and reported as what Consul holds.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bot.clock import SystemClock
from bot.consul.journal import ConsulJournal
from bot.consul.lock import ConsulLockManager
from bot.consul.store import ConsulStore
from bot.executors.local import LocalExecutor
from bot.health.prober import HttpProber
from bot.nginx.status import HttpNginxReader
from commands.access import AccessPolicy
from commands.addresses import ServerAddress
from commands.events import ChangeApplied, ConfirmationNeeded, Problem, ReleaseFinished, ReleaseStatusReport
from commands.grammar import parse_line
from commands.history import MemoryHistory
from commands.release_state import Phase, Status
from commands.releases import Releases
from commands.requests import ReleaseRequest
from commands.service import CommandService, Outcome
from commands.settings import AppSettings, HealthSettings, NginxSettings, ReleaseSettings, StepSpec
from tests.conftest import Consul
from tests.helpers import RecordingNotifier, processes_matching, wait_gone

DEADLINE = 30.0


def gated(gate: Path, marker: str) -> str:
    """A deploy step that waits (bounded: 20 s) until the test creates `gate`; `marker` finds it in ps."""
    path = shlex.quote(str(gate))
    loop = f"i=0; while [ ! -e {path} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; [ -e {path} ]"
    return f"sh -c {shlex.quote(loop)} {marker}"


@dataclass
class Rig:
    service: CommandService
    releases: Releases
    nodes: list[str]
    gate: Path
    marker: str

    def node_phase(self, index: int) -> Phase | None:
        engine = self.releases.engine("app")
        return None if engine is None else engine.state.nodes[ServerAddress.parse(self.nodes[index])].phase

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while not condition():
            assert loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)


@pytest.fixture
async def rig(consul: Consul, services: list[int], tmp_path: Path) -> AsyncIterator[Rig]:
    nodes = [f"127.0.0.1:{p}" for p in services]
    for node in nodes:
        consul.add_server("app", node)
    gate, marker = tmp_path / "gate", f"upstream-bot-test-gate-{tmp_path.name}"
    app = AppSettings(
        "app",
        "app",
        NginxSettings(upsync_interval=0.1),
        HealthSettings(url="http://{host}:{port}/ping", interval=0.2, timeout=1.0, window=5.0, rise=1),
        ReleaseSettings(
            executor="local",
            drain_wait=0.1,
            steps={
                "stop": StepSpec("true", 10),
                "deploy": StepSpec(gated(gate, marker), 30),
                "start": StepSpec("true", 10),
            },
        ),
    )
    store = ConsulStore((consul.url,))
    async with httpx.AsyncClient(trust_env=False) as client:
        apps = {"app": app}
        prober, nginx, clock = HttpProber(client), HttpNginxReader(apps, client), SystemClock()
        journal = ConsulJournal(store, "test:1")
        releases = Releases(
            apps, store, prober, nginx, clock, ConsulLockManager(store), LocalExecutor, "test:1", journal
        )
        policy = AccessPolicy(apps, operators=("U1ALICE", "U3OPS"))
        service = CommandService(apps, store, prober, nginx, clock, releases, policy=policy, history=MemoryHistory())
        yield Rig(service, releases, nodes, gate, marker)


def down(consul: Consul, node: str) -> int:
    return int(json.loads(consul.value(f"upstreams/app/{node}") or "{}").get("down", 0))


async def start(rig: Rig) -> tuple[asyncio.Task[Outcome], RecordingNotifier]:
    notifier = RecordingNotifier()
    plan = await rig.releases.plan(rig.service.apps["app"], ReleaseRequest("app", version="2"), "U1ALICE")
    rig.nodes = [str(a) for a in plan.nodes]  # in the release's order
    task = asyncio.ensure_future(rig.service.start_release(plan, 1, "U1ALICE", notifier))
    await rig.until(lambda: rig.node_phase(0) is Phase.STEP and processes_matching(rig.marker) != [], "node 1's deploy")
    return task, notifier


async def command(rig: Rig, line: str, user: str = "U3OPS") -> tuple[Outcome, RecordingNotifier]:
    notifier = RecordingNotifier()
    return await rig.service.handle(parse_line(line), user, notifier), notifier


async def test_an_operator_drain_of_a_later_node_is_told_its_batch_and_the_release_leaves_it_drained(
    rig: Rig, consul: Consul
) -> None:
    task, release_events = await start(rig)
    first, _, last = rig.nodes

    outcome, asked = await command(rig, f"/drain {last}")
    assert outcome is Outcome.PENDING
    (question,) = asked.of(ConfirmationNeeded)
    assert any("a release of app is running" in w and "batch 3 of 3" in w for w in question.plan.warnings)

    for verb in ("/drain", "/undrain"):
        outcome, refused = await command(rig, f"{verb} {first}")
        assert outcome is Outcome.REFUSED
        assert "being released right now" in refused.of(Problem)[0].text
    assert down(consul, first) == 1  # the release's own drain stands

    confirmed = RecordingNotifier()
    assert await rig.service.confirm(question.plan, 1, "U3OPS", confirmed) is Outcome.DONE
    assert confirmed.of(ChangeApplied)[0].ok and down(consul, last) == 1

    rig.gate.touch()
    outcome = await asyncio.wait_for(task, DEADLINE)
    (finished,) = release_events.of(ReleaseFinished)
    state = finished.state
    assert state.status is Status.INCOMPLETE, state.message  # one node was not released: not a success
    assert state.nodes[ServerAddress.parse(last)].phase is Phase.SKIPPED
    assert down(consul, last) == 1  # the operator's drain was not undone
    assert down(consul, first) == 0 and down(consul, rig.nodes[1]) == 0


async def test_a_destroyed_lock_session_stops_the_release_kills_its_step_and_writes_nothing_more(
    rig: Rig, consul: Consul
) -> None:
    task, release_events = await start(rig)
    first = rig.nodes[0]
    engine = rig.releases.engine("app")
    assert engine is not None and engine.lock is not None
    session = engine.lock.session  # type: ignore[attr-defined]
    writes_before = consul.standin.index
    async with httpx.AsyncClient(trust_env=False) as client:
        answer = await client.put(f"{consul.url}/v1/session/destroy/{session}")
        assert answer.status_code == 200

    await asyncio.wait_for(task, DEADLINE)
    (finished,) = release_events.of(ReleaseFinished)
    state = finished.state
    assert state.status is Status.FAILED and "release lock lost" in state.message
    assert f"{first} drained" in state.message and "not reached" in state.message
    assert down(consul, first) == 1  # left drained: a bot without its lock does not restore
    assert all(down(consul, n) == 0 for n in rig.nodes[1:])
    assert await wait_gone(rig.marker) == []  # the deploy was stopped on the node
    # Nothing was written to the upstream after the loss (the destroy itself bumps the index once).
    assert max(int(e.modify_index) for k, e in consul.standin.kv.items() if k.startswith("upstreams/")) <= writes_before
    # And the app is free for the next release (another replica could take it now).
    taken = await ConsulLockManager(ConsulStore((consul.url,))).holder("app")
    assert taken is None


async def test_another_replica_refuses_an_undrain_while_a_release_runs_and_the_release_never_stops_a_serving_node(
    rig: Rig, consul: Consul
) -> None:
    task, release_events = await start(rig)
    first = rig.nodes[0]
    # Replica 2: the same Consul, no engine of its own in memory.
    store = ConsulStore((consul.url,))
    other = Releases(
        rig.service.apps, store, rig.service.prober, rig.service.nginx, rig.service.clock,
        ConsulLockManager(store), LocalExecutor, "test:2",
    )
    policy = AccessPolicy(rig.service.apps, operators=("U3OPS",))
    replica = CommandService(
        rig.service.apps, store, rig.service.prober, rig.service.nginx, rig.service.clock, other,
        policy=policy, history=MemoryHistory(),
    )
    # Its status, from the journal in Consul: node by node, as the running bot wrote it ahead.
    asked = RecordingNotifier()
    other.journal = ConsulJournal(store, "test:2")
    await replica.handle(parse_line("/release status app"), "U9EVE", asked)
    (report,) = asked.of(ReleaseStatusReport)
    assert report.state is None and report.lock is not None and report.journal is not None
    assert report.journal.running and report.journal.holder == "test:1"
    node = next(n for n in report.journal.nodes if n.address == first)
    # Written before each step: the journal knows the node is drained, may be stopped, and in which step.
    assert node.phase == "running" and node.step is not None and node.drained and node.stopped
    assert all(n.phase == "waiting" for n in report.journal.nodes if n.address != first)

    notifier = RecordingNotifier()
    outcome = await replica.handle(parse_line(f"/undrain {first}"), "U3OPS", notifier)
    assert outcome is Outcome.REFUSED
    assert "a release of app is running" in notifier.of(Problem)[0].text and "--force" in notifier.of(Problem)[0].text
    assert down(consul, first) == 1
    rig.gate.touch()
    await asyncio.wait_for(task, DEADLINE)
    assert release_events.of(ReleaseFinished)[0].state.status is Status.SUCCEEDED
    # Over: any replica tells how the last release ended.
    after = RecordingNotifier()
    await replica.handle(parse_line("/release status app"), "U9EVE", after)
    (last,) = after.of(ReleaseStatusReport)
    assert last.lock is None and last.journal is not None and not last.journal.running
    assert last.journal.status == "succeeded" and not last.journal.left_drained
