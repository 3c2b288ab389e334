"""Releases as a service: plan, start under the app's lock, status, abort, decisions.

One release per app: the Consul lock covers every bot replica; `active` is this replica's running
engines (what `/release status` and `/release abort` act on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from commands.errors import UserError
from commands.events import Notifier, ReleaseFinished, ReleaseStatusReport
from commands.interfaces import Clock, Executor, LockBusy, LockInfo, LockManager, NginxReader, Prober, UpstreamStore
from commands.journal import Journal
from commands.probing import probe_nodes
from commands.release_engine import ReleaseEngine
from commands.release_plan import ReleasePlan, plan_release
from commands.release_state import ReleaseState
from commands.requests import ReleaseRequest
from commands.settings import AppSettings
from commands.versions import version_problem

ExecutorFactory = Callable[[AppSettings], Executor]
log = logging.getLogger(__name__)
LOCK_RELEASE_TIMEOUT = 10.0


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
            await self._refuse_if_running(app.name)
        upstream, view = await asyncio.gather(self.store.read(app.upstream), self.nginx.read(app.upstream))
        serving = [s.address for s in upstream.servers if not s.drained]
        probes = await probe_nodes(self.prober, app, serving)
        return plan_release(app, request, requester, upstream, probes, view)

    async def _refuse_if_running(self, app: str) -> None:
        if app in self.active:
            engine = self.active[app]
            raise UserError(
                f"Refused: a release of {app} is running here, started by <@{engine.plan.requester}> "
                f"at {_when(engine.state.started_at)}. `/release status {app}` shows it."
            )
        holder = await self.locks.holder(app)
        if holder is not None:
            raise UserError(f"Refused: {held_by(holder, app)}.")

    async def run(self, plan: ReleasePlan, approver: str | None, notifier: Notifier) -> ReleaseState:
        """Take the app's lock and run the release to its end (the caller runs this as its own job)."""
        app = self.apps[plan.app]
        if plan.app in self.active:
            await self._refuse_if_running(plan.app)
        # The executor first: one that cannot be built (an unreadable agent secret, say) must not leave
        # the lock taken behind it.
        try:
            executor = self.executors(app)
        except Exception as error:
            raise UserError(f"{plan.title} did not start: its executor cannot be set up ({error}).") from None
        info = LockInfo(plan.app, plan.id, plan.requester, self.holder, self.clock.now())
        try:
            try:
                lock = await self.locks.acquire(info)
            except LockBusy as busy:
                raise UserError(f"Refused: {held_by(busy.info, plan.app)}.") from None
            engine = ReleaseEngine(
                plan,
                app,
                self.store,
                executor,
                self.prober,
                self.nginx,
                self.clock,
                notifier,
                lock=lock,
                approver=approver,
                journal=self.journal,
            )
            self.active[plan.app] = engine
            try:
                state = await engine.run()
            finally:
                self.active.pop(plan.app, None)
                # Bounded: a Consul that does not answer must not hold the end of the release (the session
                # expires by itself), and an error here must not hide how the release ended.
                try:
                    await asyncio.wait_for(asyncio.shield(lock.release()), LOCK_RELEASE_TIMEOUT)
                except Exception as error:
                    log.warning("release lock of %s not released (%s); its session expires", plan.app, error)
                try:
                    # Announced once the app is free again: whoever reads "finished" can start the next one.
                    await notifier.emit(ReleaseFinished(engine.state))
                except Exception:
                    log.exception("cannot show the end of %s", plan.title)
        finally:
            with contextlib.suppress(Exception):
                await executor.close()
        return state

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
