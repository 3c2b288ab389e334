"""The release engine: drain -> wait -> steps -> probe -> restore -> wait, batch by batch.

A plain state machine over `ReleaseState`, acting only through the store, executor, prober, nginx
reader and clock it is given, so a test drives it with fakes and a fake clock. On any failure it
stops where it is: the failed node stays drained, nothing further is touched, and it asks what to do
(retry the node; restore it: start, probe, and put it back only when healthy; leave it drained).

What it never does:
- act without its lock: the lock is checked before every write and step and raced against every wait;
  once it is lost the engine writes nothing more, says what each node was left as, and ends;
- drain the last serving server (the write names a serving witness, checked in the same transaction);
- touch a node someone else drained: it is skipped and stays drained;
- put a stopped or unhealthy node back into traffic unprobed, unless a person confirms that twice;
- let an exception escape a node's work, or leave the release without a final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from commands.addresses import ServerAddress
from commands.errors import StoreError
from commands.events import DECISION_OPTIONS, DecisionNeeded, Event, Notifier, ReleaseUpdate, StepOutput
from commands.health_window import HealthWindow, Verdict
from commands.interfaces import (
    Clock,
    Executor,
    NginxReader,
    Prober,
    ProbeResult,
    ReleaseLock,
    UpstreamStore,
    quoted,
    stops_for_sure,
)
from commands.journal import Journal
from commands.probing import probe_nodes
from commands.release_plan import ReleasePlan, node_healthy, step_problems
from commands.release_state import NOT_RELEASED, NodeState, Phase, ReleaseState, Status
from commands.resume import ResumeMode, ResumePoint
from commands.settings import AppSettings
from commands.steps import OutputLine, StepRefused, StepTarget
from commands.writes import WriteResult, Written, set_down

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL = 0.25  # how often nginx's own view is re-read while waiting for it
DECISION_TIMEOUT = 3600.0  # an unanswered failure leaves the node drained after this
PREFLIGHT_CONCURRENCY = 16
CANCEL_GRACE = 15.0  # how long a cancelled step may take to stop on its node (SIGTERM, grace, SIGKILL)
FINAL_RECORD_ATTEMPTS = 3
LOCK_WAIT_FOR_RECORDS = 10.0  # how long a resume that stops waits for journal writes already scheduled
# Phases recorded in the journal before the engine acts in them (draining is recorded by its caller).
# DRAIN_WAIT and SKIPPED right after the drain's answer: a crash after it then knows whose drain it was.
WRITTEN_AHEAD = (Phase.DRAIN_WAIT, Phase.SKIPPED, Phase.STEP, Phase.PROBING, Phase.RESTORING)
# Past a step's timeout: the node's kill grace (SIGTERM, then SIGKILL: 5 s), the time between this
# deadline being taken and the step starting on the node (a journal write; a reconnect), clock skew.
STEP_KILL_MARGIN = 15.0


class _Stop(Exception):
    """The release cannot go on (guard, preflight); the message says why."""


class _LockLost(_Stop):
    """The release lock can no longer be trusted: nothing more may be written or run."""


def node_summary(node: NodeState) -> str:
    """What a node was left as, in words that are true whatever happened."""
    if node.phase is Phase.DONE:
        return "released"
    if node.phase is Phase.SKIPPED:
        return node.error or "skipped (drained by someone else; left drained)"
    if node.drained:
        stopped = ", stopped" if node.stopped else ""
        return f"drained{stopped} ({node.error or node.label})"
    if node.phase is Phase.WAITING:
        return "not reached (serving, old version)"
    if node.phase is Phase.RESTORED_UNRELEASED:
        return "serving (restored, not released)"
    if node.phase is Phase.FAILED:
        return f"serving ({node.error})"
    return f"serving ({node.label})"


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
        journal: Journal | None = None,
        resume: tuple[ResumePoint, ResumeMode, str] | None = None,
    ) -> None:
        """`resume`: where an interrupted release is taken up, how, and by whom (commands/resume.py)."""
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
        self.journal = journal
        self._journal_writes = asyncio.Lock()  # one write at a time: each is a check-and-set on the last
        self.state = ReleaseState.new(plan, clock.now(), approver) if resume is None else resume[0].state
        self.resume = resume
        if resume is not None:
            self.state.resumed_by = resume[2]
        self._decision: asyncio.Future[str] | None = None
        self._decision_id: str | None = None
        self._options: tuple[str, ...] = ()
        self._health: dict[ServerAddress, tuple[float, ProbeResult]] = {}  # the latest probe of each node
        self._prefetch: asyncio.Future[dict[ServerAddress, ProbeResult]] | None = None
        self._healthy_others: list[ServerAddress] = []  # from the last guard: preferred drain witnesses
        self._lost: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[bool]] = set()
        self._acted = False  # a node was touched in this run (a resume that stops before it stays interrupted)

    # -- control from outside (buttons, commands, Ctrl-C) --------------------------------------------

    def abort(self, by: str) -> bool:
        """Stop before the next step; a stopped node is started and probed, and restored only if healthy.
        False when it is finished or already aborting."""
        if self.state.status.finished or self.state.aborted_by:
            return False
        self.state.aborted_by = by
        self.state.stopping = self.state.stopping or f"aborted by {by}"
        if self._decision is not None and not self._decision.done():
            self._decision.set_result("abort")
        # In the journal now, not at the next phase (a step may run for minutes): a bot taking the release
        # up after a crash must not continue what a person stopped.
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to record with
            task = asyncio.get_running_loop().create_task(self._record(best_effort=True))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return True

    def decide(self, decision_id: str, decision: str, by: str) -> str | None:
        """Answer a DecisionNeeded. None when taken; otherwise why not (stale, answered, not an option)."""
        if self._decision is None or decision_id != self._decision_id:
            return "This question is no longer open: the release has moved on."
        if self._decision.done():
            return "Already answered."
        if decision not in self._options:
            return (
                f"`{decision}` is not an answer to this question (answers: {', '.join(self._options)}); "
                f"`/release abort {self.plan.app}` aborts the release."
            )
        self._decision.set_result(decision)
        self.state.message = f"{decision} chosen by {by}"
        return None

    # -- the run ----------------------------------------------------------------------------------------

    async def run(self) -> ReleaseState:
        """Run to the end. Always returns a finished state, whatever fails on the way."""
        state = self.state
        state.status = Status.RUNNING
        try:
            if self.lock is not None:
                self._lost = asyncio.ensure_future(self.lock.wait_lost())
            await self._record(first=True)  # the journal knows of the release before anything is done for it
            if self.resume is not None:
                return await self._resumed(*self.resume)
            await self._update(
                f"{self.plan.title} started by {self.plan.requester}"
                + (f", approved by {state.approver}" if state.approver else "")
            )
            return await self._run()
        except _LockLost as lost:
            states = "; ".join(f"{a} {node_summary(n)}" for a, n in state.nodes.items())
            return await self._finish(
                Status.FAILED, f"release lock lost ({lost}): stopped, nothing more was written or run. {states}"
            )
        except _Stop as stop:
            if self.resume is not None and not self._acted:
                return await self._still_interrupted(str(stop))
            return await self._finish(Status.FAILED, str(stop))
        except StoreError as error:
            if self.resume is not None and not self._acted:
                return await self._still_interrupted(f"Consul: {error.message}")
            return await self._finish(Status.FAILED, f"Consul: {error.message}")
        except Exception as error:  # a bug must not leave the release "running" with nodes drained
            log.exception("release %s failed", self.plan.id)
            return await self._finish(Status.FAILED, f"internal error ({type(error).__name__}: {quoted(error)})")
        finally:
            if self._lost is not None:
                self._lost.cancel()
            if self._prefetch is not None and not self._prefetch.done():
                self._prefetch.cancel()
                await asyncio.wait({self._prefetch}, timeout=CANCEL_GRACE)

    async def _resumed(self, point: ResumePoint, mode: ResumeMode, by: str) -> ReleaseState:
        """An interrupted release taken up by `by`: continued, its drained nodes restored, or closed."""
        hand = ", ".join(map(str, point.in_hand)) or "none"
        await self._update(f"{self.plan.title}: {mode.value} by {by} after its bot died (drained by it: {hand})")
        if mode is ResumeMode.LEAVE:
            return await self._finish(Status.ABORTED, f"interrupted (its bot died); left as it was by {by}")
        if mode is ResumeMode.RESTORE:
            self.state.stopping = f"restore by {by}"
            left = await self._recover_all(list(point.in_hand))
            return await self._finish(Status.ABORTED, f"interrupted (its bot died); restore by {by}" + _still(left))
        return await self._run()

    async def _still_interrupted(self, why: str) -> ReleaseState:
        """A resume that stopped before touching any node (preflight, a guard): the release is left as its
        dead bot left it, still interrupted in the journal (so Restore and Leave stay possible, and the
        channel is told again once the lock is let go)."""
        state = self.state
        assert self.resume is not None
        mode, by = self.resume[1], self.resume[2]
        state.message = f"{mode.value} by {by} stopped before touching any node: {why}; still interrupted"
        await self._record(best_effort=True)  # running, as before: the interruption stands
        state.status = Status.FAILED  # from here an abort() schedules nothing more
        # An abort's write scheduled before must land while the state has no end (`finished_at`): the
        # journal keeps the release interrupted.
        if self._background:
            await asyncio.wait(set(self._background), timeout=LOCK_WAIT_FOR_RECORDS)
        state.finished_at = self.clock.now()
        await self._update(f"{self.plan.title}: {state.message}")
        return state

    def _todo(self, batch: tuple[ServerAddress, ...]) -> tuple[ServerAddress, ...]:
        """The batch's nodes still to release (a resumed release skips what was done before its bot died)."""
        over = (Phase.DONE, Phase.SKIPPED, Phase.RESTORED_UNRELEASED)
        return tuple(a for a in batch if self.state.nodes[a].phase not in over)

    async def _run(self) -> ReleaseState:
        state = self.state
        await self._preflight()
        for index, whole in enumerate(self.plan.batches):
            if state.aborted_by:
                break
            batch = self._todo(whole)
            if batch:
                await self._guard(batch)
                failed = await self._run_batch(batch)
                if failed:
                    finished = await self._resolve(failed)
                    if finished is not None:
                        return finished
            last = index == len(self.plan.batches) - 1
            # Asked again by a resume when its bot died before anyone answered it.
            canary = state.nodes[whole[0]]
            if (
                self.plan.canary
                and index == 0
                and not last
                and not state.aborted_by
                and not state.canary_passed
                and canary.phase is Phase.DONE  # a canary left drained (a resume skipped it) was not released
            ):
                choice = await self._ask("canary", whole[0], "canary released: continue with the rest?")
                if choice != "continue":
                    state.aborted_by = state.aborted_by or "canary decision"
                else:
                    state.canary_passed = True
        if state.aborted_by:
            return await self._finish(Status.ABORTED, f"aborted by {state.aborted_by}")
        skipped = [n for n in state.nodes.values() if n.phase is Phase.SKIPPED]
        if skipped:
            return await self._finish(Status.INCOMPLETE, f"{state.released} of {len(state.nodes)} node(s) released")
        return await self._finish(Status.SUCCEEDED, f"all {state.released} node(s) released")

    async def _resolve(self, failed: list[ServerAddress]) -> ReleaseState | None:
        """A batch failed: ask what to do until it is settled. None: carry on with the next batch."""
        kind = "failure"
        while failed:
            first = failed[0]
            if self.state.aborted_by:
                left = await self._recover_all(failed, reprobe_failed_window=False)
                return await self._finish(Status.ABORTED, f"aborted by {self.state.aborted_by}" + _still(left))
            choice = await self._ask(kind, first, self.state.nodes[first].error or "failed")
            if choice == "retry":
                failed, kind = await self._run_batch(tuple(failed)), "failure"
            elif choice == "restore":
                self.state.stopping = f"restore of {first} chosen"
                left = await self._recover_all(failed)
                if not left:
                    return await self._finish(
                        Status.FAILED, f"stopped at {first}: started, probed healthy and restored (not released)"
                    )
                # Putting an unhealthy node back is offered only when it runs: a stopped one is never offered.
                stopped = any(self.state.nodes[a].stopped for a in left)
                failed, kind = left, "failure" if stopped else "restore_failed"
            elif choice == "restore_unhealthy":
                await self._restore_unprobed(failed)
                return await self._finish(Status.FAILED, f"stopped at {first}: restored UNHEALTHY on request")
            elif choice != "abort":  # leave (also the answer when nobody answers in time)
                return await self._finish(Status.FAILED, f"stopped at {first}")
        return None

    async def _finish(self, status: Status, message: str) -> ReleaseState:
        state = self.state
        for node in state.nodes.values():
            if node.drained and node.phase not in (Phase.FAILED, Phase.SKIPPED):  # a failed one keeps its error
                node.phase = Phase.LEFT_DRAINED
        left = state.left_drained
        if left:
            message += "; left drained: " + ", ".join(
                f"{n.address}{' (stopped)' if n.stopped else ''}"
                + (" (state unknown: Consul did not answer; check /upstream status)" if n.state_unknown else "")
                for n in left
            )
        elif status is not Status.SUCCEEDED and not state.unsure:
            message += "; nothing is left drained"
        unsure = ", ".join(str(n.address) for n in state.unsure)
        if unsure:
            message += (
                f"; left drained, by this release or by someone else (its bot died as it drained them): {unsure}: "
                "check them and `/undrain`"
            )
        skipped = [str(n.address) for n in state.nodes.values() if n.phase is Phase.SKIPPED and not n.owner_unknown]
        if skipped:
            message += f"; skipped, drained by someone else (not touched, still theirs): {', '.join(skipped)}"
        state.status = status
        state.message = message
        state.finished_at = self.clock.now()
        # How it ended stays in the journal as the app's last release. Tried a few times while the lock is
        # still held: a journal left saying "running" reads as an interrupted release once the lock is free.
        for attempt in range(FINAL_RECORD_ATTEMPTS):
            if await self._record(best_effort=True) or (self.lock is not None and self.lock.lost):
                break
            if attempt + 1 < FINAL_RECORD_ATTEMPTS:
                await self.clock.sleep(1.0)
        await self._update(f"{self.plan.title}: {status.value}: {message}")
        return state

    # -- the lock ------------------------------------------------------------------------------------------

    def _check_lock(self) -> None:
        if self.lock is not None and self.lock.lost:
            raise _LockLost("its Consul session is gone or was not renewed within its TTL")

    async def _guarded(self, work: Awaitable[T], on_stopped: Callable[[], None] | None = None) -> T:
        """Run `work` unless the lock is lost first; when it is, `work` is cancelled (a step is stopped on
        its node) and the release ends. `on_stopped`: called when a cancelled `work` did end in time."""
        try:
            self._check_lock()
        except _LockLost:
            if asyncio.iscoroutine(work):
                work.close()  # never started: close it rather than leave it un-awaited
            raise
        if self._lost is None:
            return await work
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({task, self._lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Cancelled from above (a sibling lost the lock, Ctrl-C): the step is stopped on its node before
            # this returns, so nothing of the release runs after `run()` (bounded: the executor's kill grace).
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_GRACE)
            if task.done() and on_stopped is not None:
                on_stopped()
            raise
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self._check_lock()
            raise _LockLost("its Consul session is gone or was not renewed within its TTL")
        return task.result()

    async def _sleep(self, seconds: float) -> None:
        await self._guarded(self.clock.sleep(seconds))

    # -- checks before draining -------------------------------------------------------------------------

    async def _preflight(self) -> None:
        """Every node's steps, executor and health, before the first drain. Any problem: nothing is drained.
        A resumed release checks the nodes it has still to do; the ones its bot left drained (and maybe
        stopped) are not probed: they run again from their stop."""
        todo = self._todo(self.plan.nodes)
        nothing = "nothing was drained" if self.resume is None else "nothing more was drained"
        problems = step_problems(self.app, self.plan.steps, self.plan.version, todo)
        if problems:
            raise _Stop(f"preflight failed, {nothing}: " + "; ".join(problems))
        limit = asyncio.Semaphore(PREFLIGHT_CONCURRENCY)

        async def check(address: ServerAddress) -> tuple[ServerAddress, str | None]:
            async with limit:
                try:
                    return address, await self.executor.check(self._target(address), self.plan.steps)
                except Exception as error:  # an executor that cannot even check is a preflight problem
                    return address, f"{type(error).__name__}: {quoted(error)}"

        results = await asyncio.gather(*(check(a) for a in todo))
        problems = [f"{a}: {quoted(why)}" for a, why in results if why]
        upstream = await self.store.read(self.app.upstream)
        for address in todo:
            entry = upstream.find(address)
            if entry is None:
                problems.append(f"{address}: no longer in {self.app.upstream}")
        view = await self.nginx.read(self.app.upstream)
        serving = [a for a in todo if not self.state.nodes[a].drained]
        probes = await self._probe_many(serving)
        problems += [f"{a}: {why}" for a in serving if (why := node_healthy(a, probes, view))]
        if problems:
            raise _Stop(f"preflight failed, {nothing}: " + "; ".join(problems))
        await self._update(f"preflight ok: {len(todo)} node(s) reachable" + (" and healthy" if serving else ""))

    async def _guard(self, batch: tuple[ServerAddress, ...]) -> None:
        """Never drain a batch unless another server is serving and healthy (unless forced)."""
        self._healthy_others = []
        if self.plan.needs_second_confirmation:
            return
        upstream, view = await asyncio.gather(self.store.read(self.app.upstream), self.nginx.read(self.app.upstream))
        others = [s.address for s in upstream.servers if not s.drained and s.address not in batch]
        if self._prefetch is not None:
            with contextlib.suppress(Exception):
                await self._prefetch
        probes = await self._probe_many(others, fresh_within=self._freshness)
        healthy = [a for a in others if node_healthy(a, probes, view) is None]
        if not healthy:
            names = ", ".join(str(a) for a in batch)
            raise _Stop(f"not draining {names}: no other server of {self.app.name} is serving and healthy")
        self._healthy_others = healthy

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
        # Its failure only means the next guard probes afresh: retrieve it, so it is not logged as lost.
        self._prefetch.add_done_callback(lambda done: done.cancelled() or done.exception())

    # -- one batch, one node ----------------------------------------------------------------------------

    async def _run_batch(self, batch: tuple[ServerAddress, ...]) -> list[ServerAddress]:
        """Release the batch's nodes together. A lost lock in one cancels the others (TaskGroup): nothing of
        this release runs after it returns."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._node_work(self.state.nodes[a], batch)) for a in batch]
        except* _Stop as stopped:
            raise stopped.exceptions[0] from None
        return [a for a, task in zip(batch, tasks, strict=True) if not task.result()]

    async def _node_work(self, node: NodeState, batch: tuple[ServerAddress, ...]) -> bool:
        """One node's sequence; any error but a lost lock is that node's failure, never an escape."""
        try:
            return await self._release_node(node, batch)
        except (_Stop, asyncio.CancelledError):
            raise
        except StoreError as error:
            return await self._fail(node, f"Consul: {error.message}")
        except Exception as error:
            log.exception("release %s: %s failed", self.plan.id, node.address)
            return await self._fail(node, f"internal error ({type(error).__name__}: {quoted(error)})")

    def _target(self, address: ServerAddress) -> StepTarget:
        return StepTarget(self.app.name, address.host, address.port, self.plan.version)

    async def _phase(self, node: NodeState, phase: Phase, line: str, step: str | None = None) -> None:
        """Move the node on; a phase that acts (a step, the probe window, the restore) is in the journal
        before it acts."""
        node.phase, node.step = phase, step
        if phase is not Phase.STEP:
            node.step_deadline = None
        if phase in WRITTEN_AHEAD:
            # A skip acts on nothing after it (and a resume treats an unconfirmed drain as not its own).
            await self._record(best_effort=phase is Phase.SKIPPED)
        await self._update(f"{node.address}: {line}")

    async def _fail(self, node: NodeState, error: str, thread: str | None = None) -> bool:
        node.phase, node.error, node.finished_at = Phase.FAILED, error, self.clock.now()
        where = " (still drained" + (", stopped)" if node.stopped else ")") if node.drained else " (serving)"
        await self._update(f"{node.address}: FAILED: {error}{where}", thread)
        return False

    async def _release_node(self, node: NodeState, batch: tuple[ServerAddress, ...]) -> bool:
        node.error, node.started_at = None, self.clock.now()
        self._check_lock()
        self._acted = True
        if self.state.aborted_by:
            return True
        if not node.drained:
            await self._phase(node, Phase.DRAINING, "draining")
            await self._record()  # written ahead: "draining" is in the journal before the drain
            result = await self._write_down(node, True, exclude=batch)
            if result.written is Written.ALREADY:
                # Someone else drained it: theirs to put back. Never restore what this release did not drain.
                await self._phase(node, Phase.SKIPPED, "drained by someone else before its turn: skipped, left drained")
                return True
            if not result.ok:
                return await self._fail(node, f"drain {result.detail}; nothing else was done to it")
            node.drained = True
            left = await self._wait_out(node, "drained; waiting for nginx to stop routing to it")
            if left:
                return await self._fail(node, left)
        elif not node.out_of_traffic:
            # Drained, but its waits never finished: a retry after a failed wait or journal write, or a
            # node its dead bot drained (maybe moments before dying). nginx may still route to it, and its
            # in-flight requests may still run: the same waits as after a drain, before anything stops it.
            left = await self._wait_out(node, "drained; waiting for nginx to stop routing to it")
            if left:
                return await self._fail(node, left)
        if not await self._still_drained(node):
            return await self._fail(node, "put back into traffic by someone else: not stopping a serving node")
        for step in self.plan.steps:
            self._check_lock()
            if self.state.aborted_by:
                return await self._recover(node)
            if not await self._run_step(node, step):
                return False
        return await self._probe_and_restore(node)

    async def _wait_out(self, node: NodeState, line: str) -> str | None:
        """After a drain: until nginx stops routing to the node, then the drain wait (in-flight requests)."""
        await self._phase(node, Phase.DRAIN_WAIT, line)
        left = await self._wait_nginx(node.address, routed=False)
        if not left:
            await self._sleep(self.app.release.drain_wait)
            node.out_of_traffic = True
        return left

    async def _still_drained(self, node: NodeState) -> bool:
        """Right before the stop step: is the node still out of traffic? (Another replica, `run` from CI or
        curl may have put it back; stopping it then would fail its share of requests.)"""
        entry = (await self.store.read(self.app.upstream)).find(node.address)
        if entry is not None and entry.drained:
            return True
        node.drained = node.out_of_traffic = False
        return False

    async def _write_down(self, node: NodeState, down: bool, exclude: tuple[ServerAddress, ...] = ()) -> WriteResult:
        """The one write path (check-and-set, a serving witness for a drain), under the lock.

        The lock is checked before the write, not raced against it: a write cut off half-way would leave
        nobody knowing whether it landed. Its answer is bounded by the Consul timeout, and the next check
        (every step and wait does one) stops the release if the lock went meanwhile."""
        self._check_lock()
        prefer = [a for a in self._healthy_others if a not in exclude]
        held = self.lock.held if self.lock is not None else None  # the write lands only while we hold the lock
        # --force, confirmed twice: no serving witness needed.
        keep = not self.plan.needs_second_confirmation
        result = await set_down(self.store, self.app.upstream, node.address, down, prefer, exclude, held, keep)
        if result.written is Written.UNKNOWN:
            node.state_unknown = True  # it may have landed: counted as drained, and said to be unknown
            node.drained = True
        elif result.ok:
            node.state_unknown = False
        return result

    async def _run_step(self, node: NodeState, step: str) -> bool:
        node.stopped = True  # from the first step on, the node may not be serving its old version
        spec = self.app.release.steps.get(step)
        timeout = spec.timeout if spec is not None else self.app.release.step_timeout
        node.step_deadline = self.clock.now() + timeout + STEP_KILL_MARGIN
        await self._phase(node, Phase.STEP, f"{step} ...", step)
        started = self.clock.now()
        def stopped() -> None:
            if stops_for_sure(self.executor):
                node.step_deadline = None

        try:
            result = await self._guarded(self.executor.run(step, self._target(node.address), self._output), stopped)
        except asyncio.CancelledError:
            # Cancelled (the bot is shutting down): the step was stopped on its node in time, or not. The
            # journal says which, so whoever takes the release up knows whether it may run steps there.
            if node.step_deadline is None:
                await self._record(best_effort=True)
            raise
        except StepRefused as refused:
            node.step_deadline = None
            return await self._fail(node, f"{step} refused: {refused.message}")
        node.step_deadline = None  # it ended on the node (a cancelled one keeps it: it may still be dying)
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
        await self._emit(StepOutput(self.plan.id, line))

    async def _probe_and_restore(self, node: NodeState, released: bool = True) -> bool:
        if self.app.health.url:
            await self._phase(
                node,
                Phase.PROBING,
                f"probing every {self.app.health.interval:g} s (window {self.app.health.window:g} s)",
            )
            failure = await self._probe_window(node.address)
            if failure:
                return await self._fail(node, failure)
            return await self._restore(node, released, self._runs_note(node.address))
        return await self._restore(node, released)

    def _runs_note(self, address: ServerAddress) -> str:
        """What the node says it runs (`health.version_header`), said as it is put back; a version other
        than the one released is said plainly (a deploy that did not take), but does not fail the node: the
        header's format is the app's, not ours."""
        if not self.app.health.version_header or address not in self._health:
            return ""
        answered = self._health[address][1].version
        if answered is None:
            return f" (it names no version in {self.app.health.version_header})"
        if self.plan.version and answered != self.plan.version:
            return f" (it answers version {quoted(answered)}, not {self.plan.version}: check the deploy)"
        return f" (it answers version {quoted(answered)})"

    async def _restore(self, node: NodeState, released: bool, note: str = "") -> bool:
        await self._phase(node, Phase.RESTORING, f"restoring{note}", None if released else NOT_RELEASED)
        result = await self._write_down(node, False)
        if not result.ok:
            return await self._fail(node, f"restore {result.detail}")
        node.drained = node.out_of_traffic = False
        already = " (someone else had put it back already)" if result.written is Written.ALREADY else ""
        await self._phase(node, Phase.ROUTE_WAIT, f"restored{already}; waiting for nginx to route to it")
        self._prefetch_guard(self._batch_of(node.address))
        problem = await self._wait_nginx(node.address, routed=True)
        if problem:
            return await self._fail(node, problem)
        node.phase, node.finished_at = (Phase.DONE if released else Phase.RESTORED_UNRELEASED), self.clock.now()
        took = node.finished_at - (node.started_at or 0)
        await self._update(f"{node.address}: {'released' if released else 'restored, not released'} in {took:.1f} s")
        return True

    def _batch_of(self, address: ServerAddress) -> tuple[ServerAddress, ...]:
        return next((b for b in self.plan.batches if address in b), (address,))

    async def _probe_window(self, address: ServerAddress) -> str | None:
        health = self.app.health
        url = health.url_for(address.host, address.port)
        assert url is not None
        window = HealthWindow(health.window, health.rise, self.clock.now())
        probes = 0
        while True:
            result = await self._guarded(self.prober.probe(url, health.timeout, health.version_header))
            probes += 1
            self._health[address] = (self.clock.now(), result)
            verdict = window.record(self.clock.now(), result)
            if verdict is Verdict.HEALTHY:
                return None
            if verdict is Verdict.FAILED:
                return (
                    f"health window failed: no {health.rise} passes in a row within {health.window:g} s "
                    f"(last: {quoted(result.detail)})"
                )
            # On a fixed cadence from the window's start: a probe's own time does not push the next one.
            await self._sleep(max(0.0, window.started_at + probes * health.interval - self.clock.now()))

    async def _wait_nginx(self, address: ServerAddress, routed: bool) -> str | None:
        """At least the upsync propagation time; then, where nginx reports, until it agrees."""
        nginx = self.app.nginx
        await self._sleep(nginx.propagation)
        if not nginx.list_url and not (routed and nginx.status_url):
            return None
        limit = max(30.0, self.app.health.window) if routed else max(30.0, 10 * nginx.propagation)
        deadline = self.clock.now() + limit
        key = str(address)
        while True:
            view = await self._guarded(self.nginx.read(self.app.upstream))
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
            await self._sleep(POLL)

    # -- after a failure or an abort ---------------------------------------------------------------------

    async def _recover(self, node: NodeState, reprobe_failed_window: bool = True) -> bool:
        """Start the node again if a step stopped it, probe it, and restore it only if healthy."""
        if not node.drained:
            return True  # serving already (restored before a later wait failed): nothing to put back
        if not reprobe_failed_window and not node.stopped and (node.error or "").startswith("health window failed"):
            return False  # its window just failed: an abort does not wait a second window; it stays drained
        node.error = None
        if node.stopped:
            last = self.plan.steps[-1]
            await self._update(f"{node.address}: running {last} again before anything else")
            if not await self._run_step(node, last):
                return False
        return await self._probe_and_restore(node, released=False)

    async def _recover_all(self, nodes: list[ServerAddress], reprobe_failed_window: bool = True) -> list[ServerAddress]:
        """`_recover` each node; the ones still drained (their start or probe failed)."""
        left = []
        for address in nodes:
            if not await self._node_recovery(self.state.nodes[address], reprobe_failed_window):
                left.append(address)
        return [a for a in left if self.state.nodes[a].drained]

    async def _node_recovery(self, node: NodeState, reprobe_failed_window: bool) -> bool:
        try:
            return await self._recover(node, reprobe_failed_window)
        except (_Stop, asyncio.CancelledError):
            raise
        except StoreError as error:
            return await self._fail(node, f"Consul: {error.message}")
        except Exception as error:
            log.exception("release %s: recovering %s failed", self.plan.id, node.address)
            return await self._fail(node, f"internal error ({type(error).__name__}: {quoted(error)})")

    async def _restore_unprobed(self, nodes: list[ServerAddress]) -> None:
        """Confirmed twice by a person: back into traffic although its probe failed."""
        for address in nodes:
            node = self.state.nodes[address]
            error = node.error
            if await self._restore(node, released=False, note=" UNHEALTHY, as confirmed"):
                node.error = f"restored unhealthy on request (it failed: {error})"

    async def _ask(self, kind: str, node: ServerAddress, reason: str) -> str:
        loop = asyncio.get_running_loop()
        self._decision = loop.create_future()
        self._decision_id = uuid.uuid4().hex[:12]
        self._options = DECISION_OPTIONS[kind]
        self.state.status = Status.PAUSED
        self.state.message = reason
        await self._record(best_effort=True)
        # Shown on its own: a front end that asks in place (the terminal's prompt) must not hold the
        # decision's timeout or the lock's watch.
        shown = asyncio.ensure_future(self._emit(DecisionNeeded(self.state, kind, self._decision_id, node, reason)))
        try:
            choice = await self._guarded(asyncio.wait_for(asyncio.shield(self._decision), self.decision_timeout))
        except TimeoutError:
            choice = "leave" if kind != "canary" else "abort"
        finally:
            self._decision_id, self._options = None, ()
            if not shown.done():
                shown.cancel()  # the question is over: a prompt still open is closed
                await asyncio.wait({shown}, timeout=1.0)
        self.state.status = Status.RUNNING
        await self._update(f"{kind} decision: {choice}")
        return choice

    async def _record(self, best_effort: bool = False, first: bool = False) -> bool:
        """Write the state to the journal (under the lock). Raises StoreError unless `best_effort`: then
        the action that follows is not taken. False: a best-effort write did not land."""
        if self.journal is None:
            return True
        try:
            async with self._journal_writes:
                await self.journal.write(self.state, self.lock.held if self.lock is not None else None, first)
        except StoreError as error:
            if not best_effort:
                raise StoreError(f"cannot write the release journal: {error.message}") from None
            log.warning("release %s: journal not written: %s", self.plan.id, error.message)
            return False
        return True

    async def _update(self, line: str, thread: str | None = None) -> None:
        self.state.version += 1
        if line:
            self.state.message = line if self.state.status is not Status.PAUSED else self.state.message
        await self._emit(ReleaseUpdate(self.state, line, thread))

    async def _emit(self, event: Event) -> None:
        """Front ends must never stop a release: a notifier that fails is logged, and the next update
        re-renders the whole state anyway."""
        try:
            await self.notifier.emit(event)
        except Exception:
            log.exception("release %s: a front end failed to show %s", self.plan.id, type(event).__name__)


def _still(left: list[ServerAddress]) -> str:
    return f"; {', '.join(map(str, left))} could not be restored healthy" if left else ""
