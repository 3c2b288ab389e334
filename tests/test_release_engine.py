"""The release engine as a state machine: fakes for Consul, the nodes, probes and nginx, a fake clock.
Every failure point ends with the right nodes drained or serving and the right messages."""

from __future__ import annotations

from dataclasses import dataclass, replace

from commands.events import DecisionNeeded, Event, ReleaseUpdate, StepOutput
from commands.release_engine import ReleaseEngine
from commands.release_plan import plan_release
from commands.release_state import Phase, Status
from commands.requests import ReleaseRequest
from commands.settings import AppSettings, HealthSettings, NginxSettings, ReleaseSettings, StepSpec
from tests.fakes import FakeClock, FakeExecutor, FakeNginx, FakeProber, FakeStore

NODES = ["10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000"]


def app_settings(list_url: bool = True) -> AppSettings:
    return AppSettings(
        "app",
        "app",
        nginx=NginxSettings(
            status_url="http://nginx/status" if list_url else None,
            list_url="http://nginx/list" if list_url else None,
            upsync_interval=0.5,
        ),
        health=HealthSettings(url="http://{host}:{port}/ping", interval=10, timeout=3, window=120, rise=2),
        release=ReleaseSettings(
            executor="local", drain_wait=2, steps={s: StepSpec(s, 300) for s in ("stop", "deploy", "start")}
        ),
    )


class Answering:
    """A notifier that records events and answers the engine's questions from a script."""

    def __init__(self, answers: list[str] | None = None) -> None:
        self.events: list[Event] = []
        self.answers = answers or []
        self.engine: ReleaseEngine | None = None

    async def emit(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, DecisionNeeded) and self.engine is not None:
            answer = self.answers.pop(0) if self.answers else "leave"
            assert self.engine.decide(event.decision_id, answer, "U2BOB") is None

    def lines(self) -> list[str]:
        return [e.line for e in self.events if isinstance(e, ReleaseUpdate)]

    def decisions(self) -> list[DecisionNeeded]:
        return [e for e in self.events if isinstance(e, DecisionNeeded)]


@dataclass
class Rig:
    store: FakeStore
    executor: FakeExecutor
    prober: FakeProber
    nginx: FakeNginx
    clock: FakeClock
    notifier: Answering
    engine: ReleaseEngine

    def max_drained(self) -> int:
        """The most nodes drained at once, replayed from the store's write log."""
        drained: set[str] = set()
        most = 0
        for node, down in self.store.writes:
            (drained.add if down else drained.discard)(node)
            most = max(most, len(drained))
        return most


async def rig(
    request: ReleaseRequest | None = None,
    answers: list[str] | None = None,
    nodes: list[str] = NODES,
    list_url: bool = True,
    lock: object = None,
    version_header: str | None = None,
) -> Rig:
    app = app_settings(list_url)
    app = replace(app, health=replace(app.health, version_header=version_header))
    clock = FakeClock()
    store = FakeStore("app", nodes)
    executor = FakeExecutor(clock, {"stop": 1, "deploy": 5, "start": 2})
    prober = FakeProber()
    nginx = FakeNginx(store, list_view=list_url)
    request = request or ReleaseRequest("app", version="2.0")
    plan = plan_release(app, request, "U1ALICE", await store.read("app"), {}, await nginx.read("app"))
    notifier = Answering(answers)
    engine = ReleaseEngine(
        plan,
        app,
        store,
        executor,
        prober,
        nginx,
        clock,
        notifier,
        lock=lock,  # type: ignore[arg-type]
        decision_timeout=5,
    )
    notifier.engine = engine
    return Rig(store, executor, prober, nginx, clock, notifier, engine)


async def test_a_serial_release_drains_deploys_probes_and_restores_one_node_at_a_time() -> None:
    r = await rig()
    state = await r.engine.run()
    assert state.status is Status.SUCCEEDED
    assert [c for c in r.executor.calls if c[0] == "10.0.0.1:9000"] == [
        ("10.0.0.1:9000", "stop", "2.0"),
        ("10.0.0.1:9000", "deploy", "2.0"),
        ("10.0.0.1:9000", "start", "2.0"),
    ]
    assert [n for n, _, _ in r.executor.calls] == [n for n in NODES for _ in range(3)]  # node after node
    assert r.max_drained() == 1
    assert not any(r.store.down(n) for n in NODES)
    assert all(n.phase is Phase.DONE for n in state.nodes.values())
    assert isinstance(r.notifier.events[-1], ReleaseUpdate) and "succeeded" in r.notifier.events[-1].line
    assert any(isinstance(e, StepOutput) for e in r.notifier.events)  # output streamed as events


async def test_each_node_is_put_back_saying_the_version_it_answers_and_a_wrong_one_is_said_plainly() -> None:
    r = await rig(version_header="X-App-Version")
    r.prober.versions = {"10.0.0.1:9000": "2.0", "10.0.0.2:9000": "1.9"}  # node 2's deploy did not take
    state = await r.engine.run()
    assert state.status is Status.SUCCEEDED  # the header's format is the app's: said, not failed
    lines = "\n".join(r.notifier.lines())
    assert "10.0.0.1:9000: restoring (it answers version 2.0)" in lines
    assert "10.0.0.2:9000: restoring (it answers version 1.9, not 2.0: check the deploy)" in lines
    assert "10.0.0.3:9000: restoring (it names no version in X-App-Version)" in lines
    plain = await rig()
    plain.prober.versions = {"10.0.0.1:9000": "2.0"}
    await plain.engine.run()
    assert not any("version" in line for line in plain.notifier.lines())  # not configured: not said


async def test_the_waits_come_in_order_drain_propagation_drain_wait_probe_interval() -> None:
    r = await rig(nodes=NODES[:2])
    await r.engine.run()
    # per node: 1.5 s upsync propagation, 2 s drain_wait, steps 1+5+2, one probe interval (rise 2),
    # 1.5 s propagation after the restore
    assert r.clock.slept[:7] == [1.5, 2, 1, 5, 2, 10, 1.5]


async def test_batches_never_drain_more_than_the_batch_and_keep_one_serving() -> None:
    r = await rig(ReleaseRequest("app", batch=2, version="2.0"), nodes=[*NODES, "10.0.0.4:9000"])
    state = await r.engine.run()
    assert state.status is Status.SUCCEEDED and r.max_drained() == 2
    big = await rig(ReleaseRequest("app", batch=5, version="2.0"))
    assert "lowered to 2" in " ".join(big.engine.plan.warnings) and len(big.engine.plan.batches[0]) == 2


async def _failing_step(step: str) -> None:
    r = await rig()
    r.executor.fail[("10.0.0.2:9000", step)] = 3
    state = await r.engine.run()
    assert state.status is Status.FAILED
    assert r.store.down("10.0.0.2:9000") and not r.store.down("10.0.0.1:9000") and not r.store.down("10.0.0.3:9000")
    assert not [c for c in r.executor.calls if c[0] == "10.0.0.3:9000"]  # no further node touched
    (decision,) = r.notifier.decisions()
    assert decision.kind == "failure" and str(decision.node) == "10.0.0.2:9000"
    assert f"{step} failed: exit status 3" in decision.reason and f"{step} broke" in decision.reason
    threads = [e.thread for e in r.notifier.events if isinstance(e, ReleaseUpdate) and e.thread]
    assert threads and f"{step} broke" in threads[0]
    assert "left drained" in state.message


async def test_a_failing_stop_deploy_or_start_leaves_that_node_drained_and_stops() -> None:
    for step in ("stop", "deploy", "start"):
        await _failing_step(step)


async def test_a_failed_probe_window_leaves_the_node_drained() -> None:
    r = await rig()
    r.prober.scripts["10.0.0.2:9000"] = [True, True]  # healthy at preflight and at node 1's guard
    r.prober.default["10.0.0.2:9000"] = False  # ... and never again after its deploy
    state = await r.engine.run()
    assert state.status is Status.FAILED and r.store.down("10.0.0.2:9000")
    assert "health window failed" in (state.nodes[r.engine.plan.nodes[1]].error or "")
    # probed every 10 s for the whole 120 s window: 13 probes (t=0..120), then it gave up
    assert r.prober.probes.count("10.0.0.2:9000") == 13 + 2  # plus preflight and guard reads
    assert not [c for c in r.executor.calls if c[0] == "10.0.0.3:9000"]


async def test_a_flap_shorter_than_the_window_is_not_a_failure() -> None:
    r = await rig()
    r.prober.scripts["10.0.0.2:9000"] = [True, True, False, True, False, True, True]  # preflight, guard, then window
    assert (await r.engine.run()).status is Status.SUCCEEDED


async def test_a_write_conflict_is_retried_then_reported() -> None:
    r = await rig()
    r.store.conflicts = 2  # someone else writes twice: the third attempt lands
    assert (await r.engine.run()).status is Status.SUCCEEDED
    r = await rig()
    r.store.conflicts = 10
    state = await r.engine.run()
    assert state.status is Status.FAILED and "changed under each of 3" in (
        state.nodes[r.engine.plan.nodes[0]].error or ""
    )
    assert r.executor.calls == [] and not any(r.store.down(n) for n in NODES)  # nothing drained, nothing run


async def test_consul_unreachable_mid_release_stops_with_the_node_still_drained() -> None:
    r = await rig()
    r.store.unreachable_after = 3  # node 1 drained and restored, node 2 drained, then Consul goes away
    state = await r.engine.run()
    assert state.status is Status.FAILED
    assert r.store.down("10.0.0.2:9000") and not r.store.down("10.0.0.1:9000")
    assert not [c for c in r.executor.calls if c[0] == "10.0.0.3:9000"]
    assert "Consul unreachable" in state.message or "Consul unreachable" in " ".join(r.notifier.lines())


async def test_retry_after_a_failure_continues_the_release() -> None:
    r = await rig(answers=["retry"])
    r.executor.fail[("10.0.0.2:9000", "deploy")] = 1

    def fixed(node: str, step: str) -> None:
        if r.executor.calls.count(("10.0.0.2:9000", "deploy", "2.0")) == 2:
            r.executor.fail.clear()

    r.executor.on_run = fixed
    state = await r.engine.run()
    assert state.status is Status.SUCCEEDED and not any(r.store.down(n) for n in NODES)


async def test_canary_pauses_until_continue_or_abort() -> None:
    r = await rig(ReleaseRequest("app", canary=True, version="2.0"), answers=["continue"])
    assert (await r.engine.run()).status is Status.SUCCEEDED
    assert [d.kind for d in r.notifier.decisions()] == ["canary"]
    r = await rig(ReleaseRequest("app", canary=True, version="2.0"), answers=["abort"])
    state = await r.engine.run()
    assert state.status is Status.ABORTED
    assert {n for n, _, _ in r.executor.calls} == {"10.0.0.1:9000"} and not any(r.store.down(n) for n in NODES)


async def test_abort_mid_node_starts_probes_and_restores_it_then_stops() -> None:
    r = await rig()
    r.executor.on_run = lambda node, step: (
        r.engine.abort("U2BOB") if (node, step) == ("10.0.0.1:9000", "stop") else None
    )
    state = await r.engine.run()
    assert state.status is Status.ABORTED and state.aborted_by == "U2BOB"
    assert r.executor.calls == [("10.0.0.1:9000", "stop", "2.0"), ("10.0.0.1:9000", "start", "2.0")]
    assert not any(r.store.down(n) for n in NODES)
    assert state.nodes[r.engine.plan.nodes[0]].phase is Phase.RESTORED_UNRELEASED


async def test_a_preflight_problem_drains_nothing() -> None:
    r = await rig()
    r.executor.check_problems["10.0.0.3:9000"] = "host key: 10.0.0.3:22 presented SHA256:x, unknown host"
    state = await r.engine.run()
    assert (
        state.status is Status.FAILED
        and "preflight failed" in state.message
        and "10.0.0.3:9000: host key" in state.message
    )
    assert r.store.writes == [] and r.executor.calls == []


async def test_nginx_that_keeps_routing_to_a_drained_node_stops_the_release_before_stop() -> None:
    r = await rig()
    r.nginx.frozen.add("10.0.0.1:9000")
    state = await r.engine.run()
    assert state.status is Status.FAILED and "nginx still lists it serving" in (
        state.nodes[r.engine.plan.nodes[0]].error or ""
    )
    assert r.executor.calls == [] and r.store.down("10.0.0.1:9000")


async def test_the_next_node_waits_until_nginx_reports_the_restored_one_up() -> None:
    r = await rig()
    calls = {"n": 0}
    real_read = r.nginx.read

    async def slow_check(upstream: str):  # type: ignore[no-untyped-def]
        view = await real_read(upstream)
        calls["n"] += 1
        restored = ("10.0.0.1:9000", 0) in r.store.writes
        if restored and calls["n"] < 12 and view.checks is not None:
            view.checks["10.0.0.1:9000"] = "down"  # check module's rise after default_down
        return view

    r.nginx.read = slow_check  # type: ignore[method-assign]
    assert (await r.engine.run()).status is Status.SUCCEEDED
    assert r.max_drained() == 1
    # node 2 was drained only after the check had reported node 1 up again
    restored_at = r.store.writes.index(("10.0.0.1:9000", 0))
    assert r.store.writes[restored_at + 1] == ("10.0.0.2:9000", 1) and calls["n"] >= 12




async def test_a_retry_after_nginx_kept_routing_to_the_node_waits_for_nginx_again_before_stopping_it() -> None:
    r = await rig(answers=["retry", "leave"])
    r.nginx.frozen.add("10.0.0.1:9000")  # nginx never lets the node go
    state = await r.engine.run()
    assert [d.kind for d in r.notifier.decisions()] == ["failure", "failure"]
    assert "nginx still lists it serving" in (state.nodes[r.engine.plan.nodes[0]].error or "")
    assert r.executor.calls == []  # the retry waited for nginx again: never stopped while routed to
