"""Releases as a service: plan, start under the app's lock, status, abort, decisions, and taking up a
release whose bot died (resume, restore, leave).

One release per app: the Consul lock covers every bot replica; `active` is this replica's running
engines. Another replica reads a release from its journal, and asks for its abort through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from commands.errors import StoreError, UserError
from commands.events import Notifier, ReleaseFinished, ReleaseStatusReport
from commands.interfaces import (
    Clock,
    Executor,
    LockBusy,
    LockInfo,
    LockManager,
    NginxReader,
    Prober,
    ReleaseLock,
    UpstreamStore,
)
from commands.journal import Journal, JournalEntry
from commands.probing import probe_nodes
from commands.release_engine import ReleaseEngine
from commands.release_plan import ReleasePlan, plan_release
from commands.release_state import ReleaseState
from commands.requests import ReleaseRequest
from commands.resume import ResumeMode, interrupted_summary, resume_point, steps_may_run_until
from commands.settings import AppSettings
from commands.versions import version_problem

ExecutorFactory = Callable[[AppSettings], Executor]
log = logging.getLogger(__name__)
LOCK_RELEASE_TIMEOUT = 10.0
ABORT_POLL = 1.0  # how often a running release looks for an abort asked on another replica
LOCK_DELAY_RETRIES = 4  # a lock freed by a dead session stays unavailable for its lock-delay (1 s)
EngineBuilder = Callable[[Executor, ReleaseLock], Awaitable[ReleaseEngine]]


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def held_by(info: LockInfo | None, app: str) -> str:
    if info is None:
        return f"a release of {app} is running (its lock is held; holder unknown)"
    return (
        f"a release of {app} is running: started by <@{info.requester}> at {_when(info.since)} "
        f"on {info.holder} (release {info.release_id})"
    )


class Releases:
    def __init__(
        self,
        apps: dict[str, AppSettings],
        store: UpstreamStore,
        prober: Prober,
        nginx: NginxReader,
        clock: Clock,
        locks: LockManager,
        executors: ExecutorFactory,
        holder: str,
        journal: Journal | None = None,
    ) -> None:
        self.apps = apps
        self.store = store
        self.prober = prober
        self.nginx = nginx
        self.clock = clock
        self.locks = locks
        self.executors = executors
        self.holder = holder
        self.journal = journal
        self.active: dict[str, ReleaseEngine] = {}

    async def plan(self, app: AppSettings, request: ReleaseRequest, requester: str) -> ReleasePlan:
        problem = None if request.version is None else version_problem(request.version, app.release.version_pattern)
        if problem:
            raise UserError(f"Refused: `--version`: {problem} ({app.name}). Nothing was changed.")
        if not request.dry_run:
            await self.refuse_if_running(app.name)
        upstream, view = await asyncio.gather(self.store.read(app.upstream), self.nginx.read(app.upstream))
        serving = [s.address for s in upstream.servers if not s.drained]
        probes = await probe_nodes(self.prober, app, serving)
        return plan_release(app, request, requester, upstream, probes, view)

    async def refuse_if_running(self, app: str) -> None:
        if app in self.active:
            engine = self.active[app]
            raise UserError(
                f"Refused: a release of {app} is running here, started by <@{engine.plan.requester}> "
                f"at {_when(engine.state.started_at)}. `/release status {app}` shows it."
            )
        holder = await self.locks.holder(app)
        if holder is not None:
            raise UserError(f"Refused: {held_by(holder, app)}.")
        interrupted = await self.interrupted(app)
        if interrupted is not None:
            # A new release would overwrite its journal, and with it what is left drained and stopped.
            raise UserError(
                f"Refused: {self.summary(interrupted)}. Take it up first: `/release resume {app}` continues it;"
                " `--restore` restores what it left drained; `--leave` closes it as it is."
            )

    async def run(self, plan: ReleasePlan, approver: str | None, notifier: Notifier) -> ReleaseState:
        """Take the app's lock and run the release to its end (the caller runs this as its own job)."""
        app = self.apps[plan.app]

        async def engine(executor: Executor, lock: ReleaseLock) -> ReleaseEngine:
            return self._engine(plan, app, executor, lock, notifier, approver=approver)

        return await self._under_lock(plan, plan.requester, engine, notifier)

    def _engine(self, plan: ReleasePlan, app: AppSettings, executor: Executor, lock: ReleaseLock,
                notifier: Notifier, **more: Any) -> ReleaseEngine:
        return ReleaseEngine(
            plan, app, self.store, executor, self.prober, self.nginx, self.clock, notifier,
            lock=lock, journal=self.journal, **more,
        )

    async def _under_lock(
        self, plan: ReleasePlan, requester: str, build: EngineBuilder, notifier: Notifier, retries: int = 0
    ) -> ReleaseState:
        """Build the executor, take the app's lock, build the engine (it may still refuse: the lock is then
        let go) and run it to its end; the end is announced once the app is free again."""
        app = self.apps[plan.app]
        if plan.app in self.active:
            await self.refuse_if_running(plan.app)
        # The executor first: one that cannot be built (an unreadable agent secret, say) must not leave
        # the lock taken behind it.
        try:
            executor = self.executors(app)
        except Exception as error:
            raise UserError(f"{plan.title} did not start: its executor cannot be set up ({error}).") from None
        info = LockInfo(plan.app, plan.id, requester, self.holder, self.clock.now())
        try:
            lock = await self._acquire(info, retries)
            try:
                engine = await build(executor, lock)
            except BaseException:
                await self._let_go(lock, plan.app)
                raise
            self.active[plan.app] = engine
            aborts = asyncio.ensure_future(self._follow_aborts(engine))
            try:
                state = await engine.run()
            finally:
                aborts.cancel()
                self.active.pop(plan.app, None)
                if self.journal is not None:
                    with contextlib.suppress(Exception):  # a leftover abort names this release only: harmless
                        await asyncio.wait_for(self.journal.clear_abort(plan.app, plan.id), LOCK_RELEASE_TIMEOUT)
                await self._let_go(lock, plan.app)
                try:
                    # Announced once the app is free again: whoever reads "finished" can start the next one.
                    await notifier.emit(ReleaseFinished(engine.state))
                except Exception:
                    log.exception("cannot show the end of %s", plan.title)
        finally:
            with contextlib.suppress(Exception):
                await executor.close()
        return state

    async def _acquire(self, info: LockInfo, retries: int) -> ReleaseLock:
        for attempt in range(retries + 1):
            try:
                return await self.locks.acquire(info)
            except LockBusy as busy:
                # Held by nobody: a dead holder's session just ended and Consul's lock-delay still runs.
                if busy.info is not None or attempt == retries:
                    raise UserError(f"Refused: {held_by(busy.info, info.app)}.") from None
                await asyncio.sleep(1.0)  # Consul's lock-delay is real time
        raise AssertionError("unreachable")

    @staticmethod
    async def _let_go(lock: ReleaseLock, app: str) -> None:
        # Bounded: a Consul that does not answer must not hold the end of the release (the session
        # expires by itself), and an error here must not hide how the release ended.
        try:
            await asyncio.wait_for(asyncio.shield(lock.release()), LOCK_RELEASE_TIMEOUT)
        except Exception as error:
            log.warning("release lock of %s not released (%s); its session expires", app, error)

    async def _follow_aborts(self, engine: ReleaseEngine) -> None:
        """`/release abort` confirmed on another replica reaches this one through Consul."""
        if self.journal is None:
            return
        while not engine.state.status.finished:
            await asyncio.sleep(ABORT_POLL)  # Consul's own time, not the release's clock: a poll
            try:
                by = await self.journal.abort_requested(engine.plan.app, engine.plan.id)
            except StoreError:
                continue  # Consul is slow or away: the release's own checks deal with that
            if by is not None:
                engine.abort(by)
                return

    # -- a release whose bot died ------------------------------------------------------------------------

    async def interrupted(self, app: str, strict: bool = False) -> JournalEntry | None:
        """The app's release if its bot died: the journal says running and nobody holds the lock.
        `strict`: a journal Consul cannot read raises StoreError (else: None, as "nothing to take up")."""
        if self.journal is None or app in self.active:
            return None
        entry = await self.journal.read(app, strict=strict)
        if entry is None or not entry.running or await self.locks.holder(app) is not None:
            return None
        return entry

    async def claim_interrupted(self, app: str) -> JournalEntry | None:
        """The app's release if its bot died and nobody told it yet, now marked as told in its journal (a
        check-and-set: of several replicas looking at once, exactly one gets it). Raises StoreError when
        Consul cannot be read, so the caller looks again rather than taking it for "nothing"."""
        entry = await self.interrupted(app, strict=True)
        if entry is None or entry.interrupted_at is not None:
            return None
        assert self.journal is not None
        return entry if await self.journal.mark_interrupted(entry, self.clock.now()) else None

    async def resume(
        self,
        app_name: str,
        release_id: str | None,
        mode: ResumeMode,
        by: str,
        notifier: Notifier,
        taken: Callable[[JournalEntry], Awaitable[None]] | None = None,
    ) -> ReleaseState:
        """Take up an interrupted release: continue it, restore what it left drained, or close it as it is.
        Under the app's lock like any release; the journal is read again once the lock is held. `taken` is
        called then, once it is sure this bot takes it up (the audit entry: one, however many presses)."""
        app = self.apps[app_name]
        entry = await self.takeable(app_name, release_id, mode)
        assert self.journal is not None
        plan = self.journal.plan_of(entry)

        async def engine(executor: Executor, lock: ReleaseLock) -> ReleaseEngine:
            # Someone else may have taken it up and finished it while this one waited for the lock.
            now = await self.takeable(app_name, entry.release_id, mode, locked=True)
            point = resume_point(now, plan, await self.store.read(app.upstream), mode)
            if taken is not None:
                await taken(now)
            return self._engine(plan, app, executor, lock, notifier, resume=(point, mode, by))

        return await self._under_lock(plan, by, engine, notifier, retries=LOCK_DELAY_RETRIES)

    async def resume_refusal(self, app: str, release_id: str | None, mode: ResumeMode) -> str | None:
        """Why `mode` cannot be done now (nothing to take up, a step may still run, ...), or None."""
        try:
            await self.takeable(app, release_id, mode)
        except UserError as error:
            return error.message
        return None

    async def takeable(
        self, app: str, release_id: str | None, mode: ResumeMode, locked: bool = False
    ) -> JournalEntry:
        """The interrupted release `mode` may take up now (`release_id`: that one only), or UserError
        saying why not. `locked`: asked again under the app's lock, just before taking it up."""
        if locked:  # the lock is ours now: whatever still runs in the journal is this one to take up
            entry = await self.journal.read(app) if self.journal is not None else None
            entry = entry if entry is not None and entry.running else None
        else:
            entry = await self.interrupted(app)
        if entry is None or (release_id is not None and entry.release_id != release_id):
            if not locked:
                await self.refuse_if_running(app)
            raise UserError(
                f"No interrupted release of {app} to {mode.value} (it was taken up already, or never "
                f"interrupted); `/release status {app}` shows the last one."
            )
        until = steps_may_run_until(entry)
        if mode is not ResumeMode.LEAVE and until is not None and until > self.clock.now():
            raise UserError(
                f"Not yet: the step its bot started may still be running on its node until {_when(until)} "
                f"(the step's timeout). {mode.value.capitalize()} then; `--leave` closes it now without "
                "touching any node."
            )
        if mode is not ResumeMode.RESUME:
            return entry
        asked = await self.journal.abort_requested(app, entry.release_id) if self.journal is not None else None
        if asked:
            raise UserError(
                f"An abort of {entry.title} was asked (by {asked}) before it could be carried out: it is not "
                f"continued. `/release resume {app} --restore` restores what it left drained; `--leave` closes it."
            )
        if entry.stopping:
            raise UserError(
                f"{entry.title} was being stopped ({entry.stopping}) when its bot died: it is not continued. "
                f"`/release resume {app} --restore` restores what it left drained; `--leave` closes it as it is."
            )
        return entry

    def summary(self, entry: JournalEntry) -> str:
        return interrupted_summary(entry, self.clock.now())

    async def status(self, app: str) -> ReleaseStatusReport:
        engine = self.active.get(app)
        lock = await self.locks.holder(app)
        if engine is not None:
            return ReleaseStatusReport(app, engine.state, lock)
        # Run by another replica, or over: the journal says how it stands, node by node.
        journal = await self.journal.read(app) if self.journal is not None else None
        return ReleaseStatusReport(app, None, lock, journal)

    def engine(self, app: str) -> ReleaseEngine | None:
        return self.active.get(app)
