"""The release engine: drain -> wait -> steps -> probe -> restore -> wait, batch by batch.

A plain state machine over `ReleaseState`, acting only through the store, executor, prober, nginx
reader and clock it is given, so a test drives it with fakes and a fake clock. On any failure it
stops where it is: the failed node stays drained, nothing further is touched, and it asks what to do
(retry the node, restore it anyway, leave it drained).
"""

from __future__ import annotations

import asyncio
import uuid

from commands.addresses import ServerAddress
from commands.errors import StoreError
from commands.events import DecisionNeeded, Notifier, ReleaseUpdate, StepOutput
from commands.health_window import HealthWindow, Verdict
from commands.interfaces import Clock, Executor, NginxReader, Prober, ProbeResult, ReleaseLock, UpstreamStore
from commands.probing import probe_nodes
from commands.release_plan import ReleasePlan, node_healthy
from commands.release_state import NodeState, Phase, ReleaseState, Status
from commands.settings import AppSettings
from commands.steps import OutputLine, StepRefused, StepTarget
from commands.writes import set_down

POLL = 0.25  # how often nginx's own view is re-read while waiting for it
DECISION_TIMEOUT = 3600.0  # an unanswered failure leaves the node drained after this
PREFLIGHT_CONCURRENCY = 16


class _Stop(Exception):
    """The release cannot go on (lock lost, guard); the message says why."""


class ReleaseEngine:
    def __init__(
        self,
        plan: ReleasePlan,
        app: AppSettings,
        store: UpstreamStore,
        executor: Executor,
        prober: Prober,
        nginx: NginxReader,
        clock: Clock,
        notifier: Notifier,
        lock: ReleaseLock | None = None,
        approver: str | None = None,
        decision_timeout: float = DECISION_TIMEOUT,
    ) -> None:
        self.plan = plan
        self.app = app
        self.store = store
        self.executor = executor
        self.prober = prober
        self.nginx = nginx
        self.clock = clock
        self.notifier = notifier
        self.lock = lock
        self.decision_timeout = decision_timeout
        self.state = ReleaseState.new(plan, clock.now(), approver)
        self._decision: asyncio.Future[str] | None = None
        self._decision_id: str | None = None
        self._health: dict[ServerAddress, tuple[float, ProbeResult]] = {}  # the latest probe of each node
        self._prefetch: asyncio.Future[dict[ServerAddress, ProbeResult]] | None = None

    # -- control from outside (buttons, commands) ---------------------------------------------------

    def abort(self, by: str) -> bool:
        """Stop before the next step. False when it is finished or already aborting."""
        if self.state.status.finished or self.state.aborted_by:
            return False
        self.state.aborted_by = by
        if self._decision is not None and not self._decision.done():
            self._decision.set_result("abort")
        return True

    def decide(self, decision_id: str, decision: str, by: str) -> str | None:
        """Answer a DecisionNeeded. None when taken; otherwise why not (stale, already answered)."""
        if self._decision is None or decision_id != self._decision_id:
            return "This question is no longer open: the release has moved on."
        if self._decision.done():
            return "Already answered."
        self._decision.set_result(decision)
        self.state.message = f"{decision} chosen by {by}"
        return None

    # -- the run ----------------------------------------------------------------------------------------

    async def run(self) -> ReleaseState:
        state = self.state
        state.status = Status.RUNNING
        await self._update(
            f"{self.plan.title} started by {self.plan.requester}"
            + (f", approved by {state.approver}" if state.approver else "")
        )
        try:
            await self._preflight()
            for index, batch in enumerate(self.plan.batches):
                if state.aborted_by:
                    break
                await self._guard(batch)
                failed = await self._run_batch(batch)
                while failed and not state.aborted_by:
                    choice = await self._ask("failure", failed[0], self.state.nodes[failed[0]].error or "failed")
                    if choice == "retry":
                        failed = await self._run_batch(tuple(failed))
                    elif choice == "restore":
                        await self._restore_anyway(failed)
                        return await self._finish(Status.FAILED, f"stopped at {failed[0]}; restored anyway")
                    elif choice == "abort":
                        break
                    else:
                        return await self._finish(Status.FAILED, f"stopped at {failed[0]}: left drained")
                if failed and state.aborted_by:
                    break
                last = index == len(self.plan.batches) - 1
                if self.plan.canary and index == 0 and not last and not state.aborted_by:
                    choice = await self._ask("canary", batch[0], "canary released: continue with the rest?")
                    if choice != "continue":
                        state.aborted_by = state.aborted_by or "canary decision"
            if state.aborted_by:
                return await self._finish(Status.ABORTED, f"aborted by {state.aborted_by}")
            return await self._finish(Status.SUCCEEDED, f"all {state.released} node(s) released")
        except _Stop as stop:
            return await self._finish(Status.FAILED, str(stop))
        except StoreError as error:
            return await self._finish(Status.FAILED, f"Consul: {error.message}")

    async def _finish(self, status: Status, message: str) -> ReleaseState:
        state = self.state
        state.status = status
        state.message = message
        state.finished_at = self.clock.now()
        for node in state.nodes.values():
            if node.drained and node.phase is not Phase.FAILED:  # a failed node keeps its error on show
                node.phase = Phase.LEFT_DRAINED
        await self._update(f"{self.plan.title}: {status.value}: {message}")
        return state

    # -- checks before draining -------------------------------------------------------------------------

    async def _preflight(self) -> None:
        """Every node's executor and health, before the first drain. Any problem: nothing is drained."""
        limit = asyncio.Semaphore(PREFLIGHT_CONCURRENCY)

        async def check(address: ServerAddress) -> tuple[ServerAddress, str | None]:
            async with limit:
                return address, await self.executor.check(self._target(address), self.plan.steps)

        results = await asyncio.gather(*(check(a) for a in self.plan.nodes))
        problems = [f"{a}: {why}" for a, why in results if why]
        upstream = await self.store.read(self.app.upstream)
        for address in self.plan.nodes:
            entry = upstream.find(address)
            if entry is None:
                problems.append(f"{address}: no longer in {self.app.upstream}")
        view = await self.nginx.read(self.app.upstream)
        probes = await self._probe_many([a for a in self.plan.nodes])
        problems += [f"{a}: {why}" for a in self.plan.nodes if (why := node_healthy(a, probes, view))]
        if problems:
            raise _Stop("preflight failed, nothing was drained: " + "; ".join(problems))
        await self._update(f"preflight ok: {len(self.plan.nodes)} node(s) reachable and healthy")

    async def _guard(self, batch: tuple[ServerAddress, ...]) -> None:
        """Never drain a batch unless another server is serving and healthy (unless forced)."""
        if self.plan.needs_second_confirmation:
            return
        upstream = await self.store.read(self.app.upstream)
        others = [s.address for s in upstream.servers if not s.drained and s.address not in batch]
        view = await self.nginx.read(self.app.upstream)
        if self._prefetch is not None:
            await self._prefetch
        probes = await self._probe_many(others, fresh_within=self._freshness)
        healthy = [a for a in others if node_healthy(a, probes, view) is None]
        if not healthy:
            names = ", ".join(str(a) for a in batch)
            raise _Stop(f"not draining {names}: no other server of {self.app.name} is serving and healthy")

    async def _probe_many(
        self, addresses: list[ServerAddress], fresh_within: float = 0.0
    ) -> dict[ServerAddress, ProbeResult]:
        """Probe `addresses` in parallel; a result younger than `fresh_within` seconds is reused."""
        now = self.clock.now()
        cached = {a: hit[1] for a in addresses if (hit := self._health.get(a)) and now - hit[0] <= fresh_within}
        fresh = await probe_nodes(self.prober, self.app, [a for a in addresses if a not in cached])
        for address, result in fresh.items():
            self._health[address] = (now, result)  # stamped with the round's start: never fresher than it is
        return {**cached, **fresh}

    @property
    def _freshness(self) -> float:
        """How old a probe may be for the guard: about one restore wait (the guard probes during it)."""
        return max(self.app.health.interval, self.app.nginx.propagation + 1.0)

    def _prefetch_guard(self, batch: tuple[ServerAddress, ...]) -> None:
        """While a restored node waits for nginx (a plain sleep), probe the others for the next guard."""
        if not self.app.health.url or (self._prefetch is not None and not self._prefetch.done()):
            return
        others = [a for a in self.state.nodes if a not in batch and not self.state.nodes[a].drained]
        self._prefetch = asyncio.ensure_future(self._probe_many(others))

    # -- one batch, one node ----------------------------------------------------------------------------

    async def _run_batch(self, batch: tuple[ServerAddress, ...]) -> list[ServerAddress]:
        outcomes = await asyncio.gather(*(self._release_node(self.state.nodes[a]) for a in batch))
        return [a for a, ok in zip(batch, outcomes, strict=True) if not ok]

    def _batch_of(self, address: ServerAddress) -> tuple[ServerAddress, ...]:
        return next((b for b in self.plan.batches if address in b), (address,))

    def _target(self, address: ServerAddress) -> StepTarget:
        return StepTarget(self.app.name, address.host, address.port, self.plan.version)

    async def _phase(self, node: NodeState, phase: Phase, line: str, step: str | None = None) -> None:
        node.phase, node.step = phase, step
        await self._update(f"{node.address}: {line}")

    async def _fail(self, node: NodeState, error: str, thread: str | None = None) -> bool:
        node.phase, node.error, node.finished_at = Phase.FAILED, error, self.clock.now()
        still = " (still drained)" if node.drained else ""
        await self._update(f"{node.address}: FAILED: {error}{still}", thread)
        return False

    def _check_lock(self) -> None:
        if self.lock is not None and self.lock.lost:
            raise _Stop("the release lock was lost (Consul session gone): stopping so two releases never overlap")

    async def _release_node(self, node: NodeState) -> bool:
        node.error, node.started_at = None, self.clock.now()
        self._check_lock()
        if self.state.aborted_by:
            return True
        if not node.drained:
            await self._phase(node, Phase.DRAINING, "draining")
            try:
                await set_down(self.store, self.app.upstream, node.address, True)
            except StoreError as error:
                return await self._fail(node, f"drain failed: {error.message}; nothing else was done to it")
            node.drained = True
            await self._phase(node, Phase.DRAIN_WAIT, "drained; waiting for nginx to stop routing to it")
            left = await self._wait_nginx(node.address, routed=False)
            if left:
                return await self._fail(node, left)
            await self.clock.sleep(self.app.release.drain_wait)
        for step in self.plan.steps:
            self._check_lock()
            if self.state.aborted_by:
                return await self._recover(node)
            if not await self._run_step(node, step):
                return False
        return await self._probe_and_restore(node)

    async def _run_step(self, node: NodeState, step: str) -> bool:
        await self._phase(node, Phase.STEP, f"{step} ...", step)
        node.stopped = True  # from the first step on, the node may not be serving its old version
        started = self.clock.now()
        try:
            result = await self.executor.run(step, self._target(node.address), self._output)
        except StepRefused as refused:
            return await self._fail(node, f"{step} refused: {refused.message}")
        node.results.append(result)
        node.durations[step] = result.duration if result.duration else self.clock.now() - started
        if not result.ok:
            tail = "\n".join([*result.stdout_tail[-10:], *result.stderr_tail[-10:]])
            return await self._fail(node, result.summary, f"{node.address} {step} output:\n{tail}" if tail else None)
        if step == self.plan.steps[-1]:
            node.stopped = False
        await self._update(f"{node.address}: {step} ok ({node.durations[step]:.1f} s)")
        return True

    async def _output(self, line: OutputLine) -> None:
        await self.notifier.emit(StepOutput(self.plan.id, line))

    async def _probe_and_restore(self, node: NodeState) -> bool:
        if self.app.health.url:
            await self._phase(
                node,
                Phase.PROBING,
                f"probing every {self.app.health.interval:g} s (window {self.app.health.window:g} s)",
            )
            failure = await self._probe_window(node.address)
            if failure:
                return await self._fail(node, failure)
        await self._phase(node, Phase.RESTORING, "restoring")
        try:
            await set_down(self.store, self.app.upstream, node.address, False)
        except StoreError as error:
            return await self._fail(node, f"restore failed: {error.message}")
        node.drained = False
        await self._phase(node, Phase.ROUTE_WAIT, "restored; waiting for nginx to route to it")
        self._prefetch_guard(self._batch_of(node.address))
        problem = await self._wait_nginx(node.address, routed=True)
        if problem:
            return await self._fail(node, problem)
        node.phase, node.finished_at = Phase.DONE, self.clock.now()
        await self._update(f"{node.address}: released in {node.finished_at - (node.started_at or 0):.1f} s")
        return True

    async def _probe_window(self, address: ServerAddress) -> str | None:
        health = self.app.health
        url = health.url_for(address.host, address.port)
        assert url is not None
        window = HealthWindow(health.window, health.rise, self.clock.now())
        probes = 0
        while True:
            result = await self.prober.probe(url, health.timeout)
            probes += 1
            self._health[address] = (self.clock.now(), result)
            verdict = window.record(self.clock.now(), result)
            if verdict is Verdict.HEALTHY:
                return None
            if verdict is Verdict.FAILED:
                return (
                    f"health window failed: no {health.rise} passes in a row within {health.window:g} s "
                    f"(last: {result.detail})"
                )
            # On a fixed cadence from the window's start: a probe's own time does not push the next one.
            await self.clock.sleep(max(0.0, window.started_at + probes * health.interval - self.clock.now()))

    async def _wait_nginx(self, address: ServerAddress, routed: bool) -> str | None:
        """At least the upsync propagation time; then, where nginx reports, until it agrees."""
        nginx = self.app.nginx
        await self.clock.sleep(nginx.propagation)
        if not nginx.list_url and not (routed and nginx.status_url):
            return None
        limit = max(30.0, self.app.health.window) if routed else max(30.0, 10 * nginx.propagation)
        deadline = self.clock.now() + limit
        key = str(address)
        while True:
            view = await self.nginx.read(self.app.upstream)
            listed_ok = view.listed_down is None or view.listed_down.get(key) is (not routed)
            check = view.checks.get(key, "unknown") if view.checks is not None else None
            check_ok = not routed or check is None or check == "up"
            if listed_ok and check_ok and not view.errors:
                return None
            if self.clock.now() >= deadline:
                waited = f"{limit + nginx.propagation:.0f} s"
                if not listed_ok:
                    return f"nginx still lists it {'down' if routed else 'serving'} after {waited}"
                if not check_ok:
                    return f"nginx's check still reports it {check} after {waited}"
                return f"cannot read nginx's view: {'; '.join(view.errors)}"
            await self.clock.sleep(POLL)

    # -- after a failure or an abort ---------------------------------------------------------------------

    async def _recover(self, node: NodeState) -> bool:
        """Aborted mid-node: start it again if a step ran, probe, and restore only if healthy."""
        if node.stopped:
            last = self.plan.steps[-1]
            await self._update(f"{node.address}: aborted; running {last} again before anything else")
            if not await self._run_step(node, last):
                return False
        ok = await self._probe_and_restore(node)
        if ok:
            node.phase = Phase.RESTORED_UNRELEASED
        return ok

    async def _restore_anyway(self, nodes: list[ServerAddress]) -> None:
        for address in nodes:
            node = self.state.nodes[address]
            try:
                await set_down(self.store, self.app.upstream, address, False)
            except StoreError as error:
                await self._update(f"{address}: restore failed: {error.message}")
                continue
            node.drained = False
            node.phase = Phase.RESTORED_UNRELEASED
            await self._update(f"{address}: restored anyway (it failed: {node.error})")

    async def _ask(self, kind: str, node: ServerAddress, reason: str) -> str:
        loop = asyncio.get_running_loop()
        self._decision = loop.create_future()
        self._decision_id = uuid.uuid4().hex[:12]
        self.state.status = Status.PAUSED
        self.state.message = reason
        await self.notifier.emit(DecisionNeeded(self.state, kind, self._decision_id, node, reason))
        try:
            choice = await asyncio.wait_for(asyncio.shield(self._decision), self.decision_timeout)
        except TimeoutError:
            choice = "leave" if kind == "failure" else "abort"
        self._decision_id = None
        self.state.status = Status.RUNNING
        await self._update(f"{kind} decision: {choice}")
        return choice

    async def _update(self, line: str, thread: str | None = None) -> None:
        self.state.version += 1
        if line:
            self.state.message = line if self.state.status is not Status.PAUSED else self.state.message
        await self.notifier.emit(ReleaseUpdate(self.state, line, thread))
