"""Taking up a release whose bot died, with real parts: the Consul stand-in over HTTP, the real session
lock and journal, sample services as processes, steps run by the local executor.

The "death" here is the release's task cancelled mid-deploy with its lock let go at once (what a SIGKILL
leaves once the session expires, without waiting for the TTL); tests/test_replicas_crash.py kills real
`serve` processes. A second `Releases` on the same Consul plays another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

import httpx

from bot.consul.journal import ConsulJournal
from bot.consul.lock import ConsulLockManager
from bot.consul.store import ConsulStore
from bot.executors.local import LocalExecutor
from commands.access import AccessPolicy
from commands.events import AbortRequested, DecisionNeeded, Notice, Problem, ReleaseFinished, ResumeRequested
from commands.grammar import parse_line
from commands.history import MemoryHistory
from commands.journal import JournalEntry
from commands.release_state import Status
from commands.releases import Releases
from commands.requests import ReleaseRequest
from commands.service import CommandService, Outcome
from tests.conftest import Consul
from tests.helpers import RecordingNotifier, processes_matching, wait_gone
from tests.test_release_operators import DEADLINE, Rig, down, rig, start

__all__ = ["rig"]  # the fixture, shared with test_release_operators


@dataclass
class Replica:
    service: CommandService
    releases: Releases
    history: MemoryHistory


def replica(rig: Rig, consul: Consul, name: str = "test:2") -> Replica:
    """Another bot on the same Consul: nothing of the first one's memory."""
    store = ConsulStore((consul.url,))
    releases = Releases(
        rig.service.apps, store, rig.service.prober, rig.service.nginx, rig.service.clock,
        ConsulLockManager(store), LocalExecutor, name, ConsulJournal(store, name),
    )
    history = MemoryHistory()
    service = CommandService(
        rig.service.apps, store, rig.service.prober, rig.service.nginx, rig.service.clock, releases,
        policy=AccessPolicy(rig.service.apps, operators=("U1ALICE", "U3OPS")), history=history,
    )
    return Replica(service, releases, history)


async def die(rig: Rig, task: asyncio.Task[Outcome]) -> None:
    """The first bot stops dead mid-deploy: its step is killed, its lock goes, its journal says running."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await wait_gone(rig.marker, DEADLINE) == []


async def interrupted_release(rig: Rig, consul: Consul) -> Replica:
    task, _ = await start(rig)
    await die(rig, task)
    assert down(consul, rig.nodes[0]) == 1 and down(consul, rig.nodes[1]) == 0  # only the node in hand
    return replica(rig, consul)


async def taken_up_by_another(rig: Rig, consul: Consul) -> tuple[Replica, JournalEntry]:
    """An interrupted release, and another replica that sees it (as the journal in Consul says it)."""
    other = await interrupted_release(rig, consul)
    entry = await other.releases.interrupted("app")
    assert entry is not None
    return other, entry


async def test_two_replicas_looking_at_once_tell_an_interrupted_release_once(rig: Rig, consul: Consul) -> None:
    other = await interrupted_release(rig, consul)
    third = replica(rig, consul, "test:3")
    found = await asyncio.gather(other.releases.claim_interrupted("app"), third.releases.claim_interrupted("app"))
    assert sum(f is not None for f in found) == 1
    entry = found[0] or found[1]
    assert entry is not None
    summary = other.releases.summary(entry)
    assert f"interrupted at {rig.nodes[0]} during deploy" in summary and "0 of 3 node(s) done" in summary
    assert "started by U1ALICE" in summary and "version 2" in summary
    assert await other.releases.claim_interrupted("app") is None  # told once, also on later looks


async def test_resume_runs_the_interrupted_node_again_from_its_stop_then_the_rest(rig: Rig, consul: Consul) -> None:
    other = await interrupted_release(rig, consul)
    asked = RecordingNotifier()
    assert await other.service.handle(parse_line("/release resume app"), "U3OPS", asked) is Outcome.PENDING
    (question,) = asked.of(ResumeRequested)
    assert question.mode == "resume" and "during deploy" in question.summary
    rig.gate.touch()  # this time the deploy goes through
    notifier = RecordingNotifier()
    outcome = await other.service.resume_release("app", question.release_id, "resume", "U3OPS", notifier)
    (finished,) = notifier.of(ReleaseFinished)
    assert outcome is Outcome.DONE, finished.state.message
    assert finished.state.status is Status.SUCCEEDED and finished.state.resumed_by == "U3OPS"
    assert all(down(consul, n) == 0 for n in rig.nodes)
    first = finished.state.nodes[next(a for a in finished.state.nodes if str(a) == rig.nodes[0])]
    assert list(first.durations) == ["stop", "deploy", "start"]  # run again from its stop
    journal = await other.releases.journal.read("app")
    assert journal is not None and not journal.running and journal.status == "succeeded"
    assert other.history.whats()[0] == "release.resume" and other.history.whats()[-1] == "release.finish"
    # Taken up once: a second Resume (a double click, another replica) finds nothing to take up.
    again = RecordingNotifier()
    assert await other.service.resume_release("app", question.release_id, "resume", "U3OPS", again) is Outcome.REFUSED
    assert "No interrupted release of app" in again.of(Problem)[0].text


async def test_two_resumes_at_once_run_the_release_once(rig: Rig, consul: Consul) -> None:
    other = await interrupted_release(rig, consul)
    third = replica(rig, consul, "test:3")
    entry = await other.releases.interrupted("app")
    assert entry is not None
    rig.gate.touch()
    a, b = RecordingNotifier(), RecordingNotifier()
    outcomes = await asyncio.gather(
        other.service.resume_release("app", entry.release_id, "resume", "U3OPS", a),
        third.service.resume_release("app", entry.release_id, "resume", "U1ALICE", b),
    )
    assert sorted(o.name for o in outcomes) == ["DONE", "REFUSED"]
    assert len(a.of(ReleaseFinished) + b.of(ReleaseFinished)) == 1
    assert (other.history.whats() + third.history.whats()).count("release.resume") == 1  # one entry, one run
    assert all(down(consul, n) == 0 for n in rig.nodes)


async def test_restore_starts_probes_and_restores_only_the_node_in_hand(rig: Rig, consul: Consul) -> None:
    other, entry = await taken_up_by_another(rig, consul)
    notifier = RecordingNotifier()
    await other.service.resume_release("app", entry.release_id, "restore", "U3OPS", notifier)
    (finished,) = notifier.of(ReleaseFinished)
    assert finished.state.status is Status.ABORTED and "restore by U3OPS" in finished.state.message
    assert "nothing is left drained" in finished.state.message
    assert all(down(consul, n) == 0 for n in rig.nodes)
    first = finished.state.nodes[next(a for a in finished.state.nodes if str(a) == rig.nodes[0])]
    assert list(first.durations) == ["start"]  # started, not deployed
    assert not processes_matching(rig.marker)


async def test_leave_closes_the_release_and_says_what_stays_drained(rig: Rig, consul: Consul) -> None:
    other, entry = await taken_up_by_another(rig, consul)
    notifier = RecordingNotifier()
    await other.service.resume_release("app", entry.release_id, "leave", "U3OPS", notifier)
    (finished,) = notifier.of(ReleaseFinished)
    assert finished.state.status is Status.ABORTED
    assert f"left drained: {rig.nodes[0]} (stopped)" in finished.state.message
    assert down(consul, rig.nodes[0]) == 1  # left as it was
    assert await other.releases.interrupted("app") is None


async def test_resume_is_refused_to_someone_who_may_not_release(rig: Rig, consul: Consul) -> None:
    other = await interrupted_release(rig, consul)
    notifier = RecordingNotifier()
    assert await other.service.handle(parse_line("/release resume app"), "U9EVE", notifier) is Outcome.REFUSED
    entry = await other.releases.interrupted("app")
    assert entry is not None
    pressed = RecordingNotifier()
    outcome = await other.service.resume_release("app", entry.release_id, "resume", "U9EVE", pressed)
    assert outcome is Outcome.REFUSED and down(consul, rig.nodes[0]) == 1
    assert await other.releases.interrupted("app") is not None  # still there for someone allowed


async def test_an_abort_asked_on_another_replica_stops_the_release(rig: Rig, consul: Consul) -> None:
    task, events = await start(rig)
    other = replica(rig, consul)
    asked = RecordingNotifier()
    assert await other.service.handle(parse_line("/release abort app"), "U3OPS", asked) is Outcome.PENDING
    (question,) = asked.of(AbortRequested)
    confirmed = RecordingNotifier()
    assert await other.service.abort_release("app", question.release_id, "U3OPS", confirmed) is Outcome.DONE
    assert "test:1" in confirmed.of(Notice)[0].text  # asked of the replica that runs it
    await asyncio.wait_for(task, DEADLINE)
    (finished,) = events.of(ReleaseFinished)
    assert finished.state.status is Status.ABORTED and "aborted by U3OPS" in finished.state.message
    assert all(down(consul, n) == 0 for n in rig.nodes)  # the node in hand was started, probed, restored


async def test_the_bot_that_lost_a_release_can_take_it_up_after_another_replica_told_it(
    rig: Rig, consul: Consul
) -> None:
    """The first bot lived on (it lost its lock: Consul was away longer than the TTL); another replica
    marked the release interrupted. The first bot's own idea of the journal is stale, and must not stop it."""
    other = await interrupted_release(rig, consul)
    entry = await other.releases.claim_interrupted("app")
    assert entry is not None
    rig.gate.touch()
    notifier = RecordingNotifier()
    assert await rig.service.resume_release("app", entry.release_id, "resume", "U1ALICE", notifier) is Outcome.DONE
    (finished,) = notifier.of(ReleaseFinished)
    assert finished.state.status is Status.SUCCEEDED, finished.state.message
    assert all(down(consul, n) == 0 for n in rig.nodes)


async def test_a_new_release_is_refused_while_an_interrupted_one_stands(rig: Rig, consul: Consul) -> None:
    """A new release would overwrite the journal, the only record of what the dead one left drained."""
    other = await interrupted_release(rig, consul)
    asked = RecordingNotifier()
    assert await other.service.handle(parse_line("/release app --version 3"), "U3OPS", asked) is Outcome.REFUSED
    refusal = asked.of(Problem)[0].text
    assert "was interrupted at" in refusal and "/release resume app" in refusal
    journal = await other.releases.journal.read("app")
    assert journal is not None and journal.running and journal.version == "2"  # still the interrupted one


async def test_an_abort_is_in_the_journal_at_once_and_a_resume_does_not_continue_it(rig: Rig, consul: Consul) -> None:
    task, _ = await start(rig)
    engine = rig.releases.engine("app")
    assert engine is not None and engine.abort("U3OPS")
    other = replica(rig, consul)

    async def stopping_recorded() -> bool:
        entry = await other.releases.journal.read("app")
        return entry is not None and entry.stopping == "aborted by U3OPS"

    for _ in range(100):  # bounded: 5 s; the deploy is still running (gated) all along
        if await stopping_recorded():
            break
        await asyncio.sleep(0.05)
    assert await stopping_recorded() and processes_matching(rig.marker)
    await die(rig, task)
    entry = await other.releases.interrupted("app")
    assert entry is not None
    notifier = RecordingNotifier()
    outcome = await other.service.resume_release("app", entry.release_id, "resume", "U3OPS", notifier)
    assert outcome is Outcome.REFUSED and "was being stopped (aborted by U3OPS)" in notifier.of(Problem)[0].text
    assert down(consul, rig.nodes[0]) == 1 and down(consul, rig.nodes[1]) == 0  # nothing continued
    restored = RecordingNotifier()
    await other.service.resume_release("app", entry.release_id, "restore", "U3OPS", restored)
    assert all(down(consul, n) == 0 for n in rig.nodes)


async def test_a_resume_that_cannot_start_leaves_the_release_interrupted(rig: Rig, consul: Consul) -> None:
    """Its preflight fails (a node still to do left the upstream): nothing is touched, and Restore and Leave
    stay possible rather than the release ending with its node drained and stopped."""
    other, entry = await taken_up_by_another(rig, consul)
    consul.server.call(consul.standin.kv.pop, f"upstreams/app/{rig.nodes[2]}")  # scaled in meanwhile
    notifier = RecordingNotifier()
    outcome = await other.service.resume_release("app", entry.release_id, "resume", "U3OPS", notifier)
    (finished,) = notifier.of(ReleaseFinished)
    assert outcome is Outcome.FAILED and "still interrupted" in finished.state.message
    assert f"{rig.nodes[2]}: no longer in app" in finished.state.message
    assert down(consul, rig.nodes[0]) == 1
    assert await other.releases.interrupted("app") is not None  # still there to Restore or Leave
    left = RecordingNotifier()
    assert await other.service.resume_release("app", entry.release_id, "leave", "U3OPS", left) is Outcome.DONE


async def test_a_canary_question_left_open_by_a_dead_bot_is_asked_again(rig: Rig, consul: Consul) -> None:
    rig.gate.touch()  # deploys go through
    notifier = RecordingNotifier()
    plan = await rig.releases.plan(rig.service.apps["app"], ReleaseRequest("app", canary=True, version="2"), "U1ALICE")
    rig.nodes = [str(a) for a in plan.nodes]
    task = asyncio.ensure_future(rig.service.start_release(plan, 1, "U1ALICE", notifier))
    await rig.until(lambda: bool(notifier.of(DecisionNeeded)), "the canary question")
    await die(rig, task)
    other = replica(rig, consul)
    entry = await other.releases.interrupted("app")
    assert entry is not None and entry.done == 1
    resumed = RecordingNotifier()
    run = asyncio.ensure_future(other.service.resume_release("app", entry.release_id, "resume", "U3OPS", resumed))
    for _ in range(200):  # bounded: 10 s
        if resumed.of(DecisionNeeded) or run.done():
            break
        await asyncio.sleep(0.05)
    (question,) = resumed.of(DecisionNeeded)
    assert question.kind == "canary" and down(consul, rig.nodes[1]) == 0  # asked before anything else
    assert await other.service.decide("app", question.decision_id, "continue", "U3OPS", resumed) is Outcome.DONE
    assert await asyncio.wait_for(run, DEADLINE) is Outcome.DONE
    assert resumed.of(ReleaseFinished)[0].state.status is Status.SUCCEEDED


async def test_an_abort_asked_of_the_dead_bot_is_not_continued_by_a_resume(rig: Rig, consul: Consul) -> None:
    """Asked while the dead bot still held the lock (so through Consul), it never reached it: a Resume
    must not carry on a release someone asked to stop. Restore is the way."""
    other, entry = await taken_up_by_another(rig, consul)
    assert other.releases.journal is not None
    await other.releases.journal.request_abort("app", entry.release_id, "U3OPS")
    refused = RecordingNotifier()
    assert await other.service.resume_release("app", entry.release_id, "resume", "U3OPS", refused) is Outcome.REFUSED
    assert "An abort of" in refused.of(Problem)[0].text and down(consul, rig.nodes[1]) == 0
    restored = RecordingNotifier()
    assert await other.service.resume_release("app", entry.release_id, "restore", "U3OPS", restored) is Outcome.DONE
    assert all(down(consul, n) == 0 for n in rig.nodes)


async def test_a_journal_written_by_a_newer_bot_is_still_read(rig: Rig, consul: Consul) -> None:
    other = await interrupted_release(rig, consul)
    key = "upstream-bot/releases/app"
    data = json.loads(consul.value(key) or "{}")
    data["from_the_future"] = 1
    for node in data["nodes"]:
        node["also_new"] = True
    consul.put(key, json.dumps(data))
    entry = await other.releases.interrupted("app")
    assert entry is not None and entry.running and len(entry.nodes) == 3


async def test_a_mark_whose_answer_is_lost_is_read_back_and_the_release_still_told(rig: Rig, consul: Consul) -> None:
    """Consul commits the "interrupted" mark and the answer never comes: the replica reads it back and
    tells the channel (taken for "someone else marked it", the release would be marked and never told)."""
    other, _ = await taken_up_by_another(rig, consul)
    async with httpx.AsyncClient(trust_env=False) as client:
        await client.put(f"{consul.url}/_standin/faults", json={"drop_writes": True})
        try:
            entry = await other.releases.claim_interrupted("app")
        finally:
            await client.put(f"{consul.url}/_standin/faults", json={"drop_writes": False})
    assert entry is not None  # this replica tells it
    assert await replica(rig, consul, "test:3").releases.claim_interrupted("app") is None  # and only it
