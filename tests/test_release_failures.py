"""The release engine's failure paths (issue 8): what production is left as when something goes wrong
half-way, and what people are told. Fakes and a fake clock; the real lock, Consul and Slack paths are
tested through their stand-ins elsewhere (test_consul_lock, test_release_lock_e2e, test_slack_outage)."""

from __future__ import annotations

import asyncio

import pytest

from commands.addresses import ServerAddress
from commands.errors import UserError
from commands.events import DecisionNeeded, ReleaseUpdate
from commands.release_plan import plan_release
from commands.release_state import Phase, Status
from commands.requests import ReleaseRequest
from commands.settings import StepSpec
from tests.fakes import FakeLock
from tests.test_release_engine import NODES, app_settings, rig

A, B, C = NODES


async def test_a_lock_lost_during_the_probe_window_stops_at_once_and_writes_nothing_more() -> None:
    lock = FakeLock()
    r = await rig(lock=lock)
    probes_at_loss: list[int] = []
    real_probe = r.prober.probe

    async def probe(url: str, timeout: float, header: str | None = None):  # type: ignore[no-untyped-def]
        if B in url and r.executor.calls.count((B, "start", "2.0")) == 1 and not lock.lost:
            lock.lose()  # Consul says the session is gone while node 2 is in its window
            probes_at_loss.append(len(r.prober.probes))
        return await real_probe(url, timeout, header)

    r.prober.probe = probe  # type: ignore[method-assign]
    writes_before = None

    def note(node: str, step: str) -> None:
        nonlocal writes_before
        if (node, step) == (B, "start"):
            writes_before = len(r.store.writes)

    r.executor.on_run = note
    state = await r.engine.run()
    assert state.status is Status.FAILED and "release lock lost" in state.message
    assert len(r.store.writes) == writes_before  # node 2 was not restored by a bot without its lock
    assert r.store.down(B) and not r.store.down(A) and not r.store.down(C)
    assert not [c for c in r.executor.calls if c[0] == C]
    # The message names every node's state, so whoever reads it knows what to put back.
    assert f"{A} released" in state.message and f"{B} drained" in state.message and f"{C} not reached" in state.message
    assert f"left drained: {B}" in state.message
    assert len(r.prober.probes) == probes_at_loss[0] + 1  # no probe after the one that saw it


async def test_a_lock_lost_during_a_step_cancels_the_step_and_the_batch_siblings() -> None:
    lock = FakeLock()
    r = await rig(ReleaseRequest("app", batch=2, version="2.0"), nodes=[*NODES, "10.0.0.4:9000"], lock=lock)
    r.executor.durations["deploy"] = 50
    started = asyncio.Event()
    real_run = r.executor.run

    stopped_on_node: list[str] = []

    async def run(step, target, on_output=None):  # type: ignore[no-untyped-def]
        if step == "deploy":
            started.set()
            try:
                await asyncio.Event().wait()  # a deploy that runs until it is cancelled
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # stopping it on the node takes a moment (SIGTERM, wait)
                stopped_on_node.append(target.node)
                raise
        return await real_run(step, target, on_output)

    r.executor.run = run  # type: ignore[method-assign]
    engine_task = asyncio.ensure_future(r.engine.run())
    await asyncio.wait_for(started.wait(), 5)
    calls = len(r.executor.calls)
    lock.lose()
    state = await asyncio.wait_for(engine_task, 5)
    assert state.status is Status.FAILED and "release lock lost" in state.message
    # Both deploys were stopped on their nodes before run() returned: nothing of it runs afterwards.
    assert sorted(stopped_on_node) == sorted(str(a) for a in r.engine.plan.batches[0])
    assert len(r.executor.calls) == calls
    assert r.store.down(A) and r.store.down(B)  # left as they were: drained, stopped; no writes after the loss
    assert "(stopped)" in state.message


async def test_a_node_drained_by_an_operator_before_its_turn_is_skipped_and_never_restored() -> None:
    r = await rig()
    r.executor.on_run = lambda node, step: r.store.set(C, True) if (node, step) == (A, "stop") else None
    state = await r.engine.run()
    # Not a success: a node was not released. Said, and `run` exits non-zero.
    assert state.status is Status.INCOMPLETE and "2 of 3 node(s) released" in state.message
    assert f"skipped, drained by someone else (not touched, still theirs): {C}" in state.message
    assert r.store.down(C)  # the operator's drain stands
    assert not [c for c in r.executor.calls if c[0] == C]
    assert state.nodes[r.engine.plan.nodes[2]].phase is Phase.SKIPPED
    assert any(f"{C}: drained by someone else" in line for line in r.notifier.lines())
    assert (C, 0) not in r.store.writes


async def test_an_operator_drain_between_the_guard_and_the_write_never_leaves_none_serving() -> None:
    r = await rig(nodes=[A, B])
    r.store.before_write = lambda: r.store.set(B, True)  # lands between the engine's read and its write
    state = await r.engine.run()
    assert not r.store.down(A)  # the engine's drain was refused: A keeps serving
    assert state.status is Status.FAILED and r.executor.calls == []
    assert "no other server" in (state.nodes[r.engine.plan.nodes[0]].error or "")


async def test_a_drain_whose_answer_was_lost_is_read_back_and_the_release_goes_on() -> None:
    r = await rig()
    r.store.lost_answers = 1  # the first drain commits, then its answer is lost
    state = await r.engine.run()
    assert state.status is Status.SUCCEEDED and not any(r.store.down(n) for n in NODES)


async def test_a_drain_whose_answer_was_lost_with_consul_gone_is_reported_unknown() -> None:
    r = await rig()
    r.store.lost_answers = 1
    r.store.unreachable_after = 1  # ... and Consul cannot be read back either
    state = await r.engine.run()
    assert state.status is Status.FAILED
    assert "unknown" in (state.nodes[r.engine.plan.nodes[0]].error or "")
    assert r.executor.calls == []  # nothing was run on a node whose state is unknown
    # It did land: never "nothing is left drained"; the message says it may be drained and is unknown.
    assert r.store.down(A) and f"left drained: {A}" in state.message and "state unknown" in state.message


def test_a_release_whose_steps_need_a_version_is_refused_at_plan_time_also_as_a_dry_run() -> None:
    app = app_settings()
    app.release.steps["deploy"] = StepSpec("/opt/app/deploy.sh {version}", 300)
    from commands.addresses import ServerAddress
    from commands.servers import DEFAULTS, ServerEntry, Upstream

    upstream = Upstream("app", tuple(ServerEntry(ServerAddress.parse(n), dict(DEFAULTS), 1) for n in NODES))
    for dry in (False, True):
        with pytest.raises(UserError) as refused:
            plan_release(app, ReleaseRequest("app", canary=True, dry_run=dry), "U1", upstream, {}, _view())
        assert "needs a version" in refused.value.message and "--version" in refused.value.message


def _view():  # type: ignore[no-untyped-def]
    from commands.interfaces import NginxView

    return NginxView()


async def test_restore_after_a_failure_starts_and_probes_the_node_and_restores_it_only_when_healthy() -> None:
    r = await rig(answers=["restore"])
    r.executor.fail[(B, "deploy")] = 1  # deploy fails: the node is drained and stopped
    state = await r.engine.run()
    assert [c[1] for c in r.executor.calls if c[0] == B] == ["stop", "deploy", "start"]  # started first
    assert not r.store.down(B) and state.status is Status.FAILED
    assert state.nodes[r.engine.plan.nodes[1]].phase is Phase.RESTORED_UNRELEASED
    assert "probed healthy and restored" in state.message and "nothing is left drained" in state.message
    assert not [c for c in r.executor.calls if c[0] == C]


async def test_restore_of_a_node_that_stays_unhealthy_asks_again_and_leave_keeps_it_drained() -> None:
    r = await rig(answers=["restore", "leave"])
    r.executor.fail[(B, "deploy")] = 1
    r.prober.scripts[B] = [True, True]  # healthy at preflight and guard, never after
    r.prober.default[B] = False
    state = await r.engine.run()
    assert [d.kind for d in r.notifier.decisions()] == ["failure", "restore_failed"]
    assert r.notifier.decisions()[1].options == ("retry", "restore_unhealthy", "leave")
    assert r.store.down(B) and f"left drained: {B}" in state.message


async def test_an_unhealthy_node_goes_back_only_on_the_explicit_second_answer() -> None:
    r = await rig(answers=["restore", "restore_unhealthy"])
    r.executor.fail[(B, "deploy")] = 1
    r.prober.scripts[B] = [True, True]
    r.prober.default[B] = False
    state = await r.engine.run()
    assert not r.store.down(B) and "UNHEALTHY" in state.message


async def test_abort_during_a_failure_decision_starts_probes_and_restores_a_stopped_node() -> None:
    r = await rig()
    r.executor.fail[(B, "deploy")] = 1

    async def emit(event):  # type: ignore[no-untyped-def]
        r.notifier.events.append(event)
        if isinstance(event, DecisionNeeded):
            assert r.engine.decide(event.decision_id, "abort", "U2BOB") is not None  # not an answer here
            assert r.engine.abort("U2BOB")

    r.notifier.emit = emit  # type: ignore[method-assign]
    state = await r.engine.run()
    assert state.status is Status.ABORTED
    assert [c[1] for c in r.executor.calls if c[0] == B] == ["stop", "deploy", "start"]
    assert not r.store.down(B) and "nothing is left drained" in state.message


async def test_a_node_restored_before_its_route_wait_failed_is_reported_serving() -> None:
    r = await rig()
    real_read = r.nginx.read

    async def never_up(upstream: str):  # type: ignore[no-untyped-def]
        view = await real_read(upstream)
        if view.checks is not None and (B, 0) in r.store.writes:
            view.checks[B] = "down"
        return view

    r.nginx.read = never_up  # type: ignore[method-assign]
    state = await r.engine.run()
    assert state.status is Status.FAILED and not r.store.down(B)
    assert "left drained:" not in state.message and "nothing is left drained" in state.message
    assert any(f"{B}: FAILED" in line and "(serving)" in line for line in r.notifier.lines())


async def test_a_notifier_that_raises_never_stops_the_release() -> None:
    r = await rig()
    real_emit = r.notifier.emit

    async def broken(event):  # type: ignore[no-untyped-def]
        await real_emit(event)
        raise OSError("Slack: connection reset by peer")

    r.notifier.emit = broken  # type: ignore[method-assign]
    state = await r.engine.run()
    assert state.status is Status.SUCCEEDED and not any(r.store.down(n) for n in NODES)
    assert all(n.phase is Phase.DONE for n in state.nodes.values())


async def test_an_executor_error_fails_the_node_and_the_release_still_ends() -> None:
    r = await rig()

    def malformed(node: str, step: str) -> None:
        if (node, step) == (B, "deploy"):
            raise ValueError("agent sent a malformed line: b'{not json'")

    r.executor.on_run = malformed
    state = await r.engine.run()
    assert state.status is Status.FAILED and state.finished_at is not None
    assert "malformed line" in (state.nodes[r.engine.plan.nodes[1]].error or "")
    assert r.store.down(B) and f"left drained: {B} (stopped)" in state.message
    assert isinstance(r.notifier.events[-1], ReleaseUpdate) and "failed" in r.notifier.events[-1].line


async def test_a_node_put_back_by_someone_else_after_its_drain_is_never_stopped() -> None:
    r = await rig()
    real_sleep = r.clock.sleep

    async def undrain_during_drain_wait(seconds: float) -> None:
        if seconds == 2 and r.store.down(B):  # drain_wait of node 2: nginx had already stopped routing to it
            r.store.set(B, False)  # another replica, `run` from CI or curl puts it back
        await real_sleep(seconds)

    r.clock.sleep = undrain_during_drain_wait  # type: ignore[method-assign]
    state = await r.engine.run()
    assert not [c for c in r.executor.calls if c[0] == B]  # never stopped while serving
    assert state.status is Status.FAILED
    assert "not stopping a serving node" in (state.nodes[ServerAddress.parse(B)].error or "")
    assert not r.store.down(B) and "nothing is left drained" in state.message


async def test_a_drain_whose_answer_was_lost_and_that_lands_late_is_reported_applied() -> None:
    r = await rig()
    r.store.late_answers = 1  # Consul commits the first drain only after the client gave up and read back
    state = await r.engine.run()
    assert state.status is Status.SUCCEEDED and not any(r.store.down(n) for n in NODES)
    assert r.store.writes[:2] == [(A, 1), (A, 0)]  # landed once, restored once: no phantom second drain


async def test_a_release_write_is_refused_by_consul_once_its_lock_is_gone() -> None:
    lock = FakeLock()
    r = await rig(lock=lock)
    r.store.lock = lock
    r.store.before_write = lock.lose  # lost between the engine's last check and its write
    state = await r.engine.run()
    assert state.status is Status.FAILED and "release lock lost" in state.message
    assert r.store.writes == [] and r.executor.calls == []


async def test_a_stopped_node_is_never_offered_for_an_unhealthy_restore() -> None:
    r = await rig(answers=["restore", "leave"])
    r.executor.fail[(B, "deploy")] = 1
    r.executor.fail[(B, "start")] = 1  # and it will not start again either
    state = await r.engine.run()
    kinds = [d.kind for d in r.notifier.decisions()]
    assert kinds == ["failure", "failure"]  # not "restore_failed": no "restore UNHEALTHY" for a stopped node
    assert r.store.down(B) and f"left drained: {B} (stopped)" in state.message


async def test_abort_after_a_failed_window_does_not_wait_a_second_window() -> None:
    r = await rig()
    r.prober.scripts[B] = [True, True]
    r.prober.default[B] = False

    async def emit(event):  # type: ignore[no-untyped-def]
        r.notifier.events.append(event)
        if isinstance(event, DecisionNeeded):
            r.engine.abort("U2BOB")

    r.notifier.emit = emit  # type: ignore[method-assign]
    state = await r.engine.run()
    assert state.status is Status.ABORTED and r.store.down(B)
    assert r.prober.probes.count(B) == 13 + 2  # one window (13 probes) plus preflight and guard: not two


async def test_a_sibling_cancelled_by_a_lost_lock_is_stopped_on_its_node_before_run_returns() -> None:
    class SilentlyLost(FakeLock):
        """The TTL ran out before the renewer noticed: `lost` is true, nobody has woken `wait_lost` yet."""

        expired = False

        @property
        def lost(self) -> bool:
            return self.expired

    lock = SilentlyLost()
    r = await rig(ReleaseRequest("app", batch=2, version="2.0"), nodes=[*NODES, "10.0.0.4:9000"], lock=lock)
    first, second = (str(a) for a in r.engine.plan.batches[0])
    real_run = r.executor.run
    stopped_on_node: list[str] = []

    async def run(step, target, on_output=None):  # type: ignore[no-untyped-def]
        if step == "deploy" and target.node == second:
            lock.expired = True  # the first node's next check (before its start step) sees it
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # stopping it on the node takes a moment
                stopped_on_node.append(target.node)
                raise
        return await real_run(step, target, on_output)

    r.executor.run = run  # type: ignore[method-assign]
    state = await asyncio.wait_for(r.engine.run(), 5)
    assert "release lock lost" in state.message
    assert stopped_on_node == [second]  # stopped before run() returned, not after
    assert (first, "start", "2.0") not in r.executor.calls


async def test_an_unanswered_failure_leaves_the_node_drained_after_the_decision_timeout() -> None:
    r = await rig()
    r.executor.fail[(B, "deploy")] = 1

    async def silent(event):  # type: ignore[no-untyped-def]
        r.notifier.events.append(event)  # nobody answers the question

    r.notifier.emit = silent  # type: ignore[method-assign]
    r.engine.decision_timeout = 0.2
    state = await asyncio.wait_for(r.engine.run(), 5)
    assert state.status is Status.FAILED and r.store.down(B) and f"left drained: {B} (stopped)" in state.message
    assert any("failure decision: leave" in line for line in r.notifier.lines())
    assert not [c for c in r.executor.calls if c[0] == C]


async def test_a_front_end_that_asks_in_place_does_not_hold_the_decision_timeout() -> None:
    r = await rig()
    r.executor.fail[(B, "deploy")] = 1
    asked: list[str] = []

    async def prompt_forever(event):  # type: ignore[no-untyped-def]
        r.notifier.events.append(event)
        if isinstance(event, DecisionNeeded):
            asked.append(event.kind)
            await asyncio.Event().wait()  # a terminal prompt nobody answers

    r.notifier.emit = prompt_forever  # type: ignore[method-assign]
    r.engine.decision_timeout = 0.2
    state = await asyncio.wait_for(r.engine.run(), 5)
    assert asked == ["failure"] and state.status is Status.FAILED and r.store.down(B)


async def test_a_nodes_own_words_in_a_failure_never_carry_markup() -> None:
    from commands.steps import StepResult

    r = await rig()
    real_run = r.executor.run

    async def loud(step, target, on_output=None):  # type: ignore[no-untyped-def]
        if (target.node, step) == (B, "deploy"):
            stderr = ("ping <!subteam^S0OPS> and <@U2BOB> at <https://evil.example|login>",)
            return StepResult(step, target.node, 1, 0.1, (), stderr)
        return await real_run(step, target, on_output)

    r.executor.run = loud  # type: ignore[method-assign]
    state = await r.engine.run()
    said = " ".join([*r.notifier.lines(), state.message, *(d.reason for d in r.notifier.decisions())])
    assert "ping" in said and "<!subteam" not in said and "<@U2BOB>" not in said and "<https://" not in said


def test_a_batch_percentage_that_does_not_divide_says_it_rounded_up_and_what_share_is_out() -> None:
    from commands.servers import DEFAULTS, ServerEntry, Upstream

    nodes = NODES[:3]
    upstream = Upstream("app", tuple(ServerEntry(ServerAddress.parse(n), dict(DEFAULTS), 1) for n in nodes))
    plan = plan_release(app_settings(), ReleaseRequest("app", batch_percent=50), "U1", upstream, {}, _view())
    assert [len(b) for b in plan.batches] == [2, 1]
    assert any(
        "50% of 3 node(s) is 1.5: rounded up to 2 a batch (66% out of traffic at once)" in w for w in plan.warnings
    )
