"""The health watch's scheduler: one APScheduler (3.x) job per app, every `health.interval`.

Each round reads Consul and nginx's view, probes the app's serving nodes concurrently with a bound
(never more than `watch.concurrency` in flight), leaves the nodes of a running release alone, and
hands the results to the app's `AppWatch`, whose events go to the front end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from commands.errors import StoreError
from commands.events import Notifier
from commands.interfaces import Clock, NginxReader, Prober, UpstreamStore
from commands.probing import probe_nodes
from commands.releases import Releases
from commands.settings import AppSettings
from commands.watch import AppWatch

log = logging.getLogger(__name__)


def watchable(app: AppSettings) -> bool:
    return app.health.url is not None or app.nginx.status_url is not None or app.nginx.list_url is not None


@dataclass
class RoundStats:
    rounds: int = 0
    probes: int = 0
    lateness: list[float] = field(default_factory=list)  # seconds each round started after its time
    durations: list[float] = field(default_factory=list)


class HealthWatcher:
    def __init__(
        self,
        apps: dict[str, AppSettings],
        store: UpstreamStore,
        prober: Prober,
        nginx: NginxReader,
        clock: Clock,
        releases: Releases | None = None,
    ) -> None:
        self.apps = apps
        self.store = store
        self.prober = prober
        self.nginx = nginx
        self.clock = clock
        self.releases = releases
        self.watches = {name: AppWatch(app) for name, app in apps.items() if watchable(app)}
        self.stats = {name: RoundStats() for name in self.watches}
        self.notifier: Notifier | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self._due: dict[str, float] = {}

    # -- WatchControl -------------------------------------------------------------------------------------

    def watch(self, app: str) -> AppWatch | None:
        return self.watches.get(app)

    def set_enabled(self, app: str, on: bool) -> str:
        watch = self.watches.get(app)
        if watch is None:
            return f"{app} has nothing to watch: set its health.url or nginx.status_url."
        watch.enabled = on
        if on:
            return (
                f"Health watch of {app} is on: every {self.apps[app].health.interval:g} s; a node failing for "
                f"{self.apps[app].health.window:g} s is alerted once."
            )
        return f"Health watch of {app} is off (until `/upstream watch {app} on` or a restart)."

    # -- scheduling ----------------------------------------------------------------------------------------

    def start(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        for name in self.watches:
            interval = self.apps[name].health.interval
            self._due[name] = time.time()
            self.scheduler.add_job(
                self.round,
                "interval",
                seconds=interval,
                args=[name],
                id=f"watch-{name}",
                next_run_time=now,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    # -- one round -------------------------------------------------------------------------------------

    async def round(self, name: str) -> None:
        started = time.time()
        stats = self.stats[name]
        stats.lateness.append(max(0.0, started - self._due.get(name, started)))
        interval = self.apps[name].health.interval
        # The next round is due one interval after this one was due (or now, if it is very late).
        self._due[name] = max(self._due.get(name, started) + interval, started - interval)
        watch = self.watches[name]
        if not watch.enabled:
            return
        try:
            await self._round(name, watch)
        except StoreError as error:
            log.warning("health watch of %s skipped a round: %s", name, error.message)
        except asyncio.CancelledError:
            log.info("health watch of %s: round cancelled (shutting down)", name)
            return
        except Exception:
            log.exception("health watch of %s failed a round", name)
        stats.rounds += 1
        stats.durations.append(time.time() - started)

    async def _round(self, name: str, watch: AppWatch) -> None:
        app = self.apps[name]
        upstream, view = await asyncio.gather(self.store.read(app.upstream), self.nginx.read(app.upstream))
        engine = self.releases.engine(name) if self.releases is not None else None
        releasing = set(engine.plan.nodes) if engine is not None else set()
        serving = [s.address for s in upstream.servers if not s.drained and s.address not in releasing]
        probes = await probe_nodes(self.prober, app, serving, app.watch.concurrency)
        self.stats[name].probes += len(probes)
        for event in watch.observe(self.clock.now(), upstream, probes, view, releasing):
            if self.notifier is not None:
                await self.notifier.emit(event)
