"""The health watch's scheduler: one APScheduler (3.x) job per app, every `health.interval`.

Each round reads Consul and nginx's view, probes the app's serving nodes concurrently with a bound
(never more than `watch.concurrency` in flight), leaves the nodes of a running release alone, and
hands the results to the app's `AppWatch`, whose events go to the front end.

Several replicas (with `election` and `state`): only the replica holding the watch lock runs rounds
(bot/consul/election.py). On winning it loads the incidents kept in Consul (bot/consul/watch_state.py),
so a node still failing is not alerted again and one that recovered gets its recovery; each round it
reads them again (silences and acknowledgements pressed on other replicas, the on/off switch) and
writes back what changed, after posting. It asks `leading` before every alert: a replica that lost
the lock posts nothing more. The others mirror Consul every `FOLLOW_EVERY` seconds, for
`/upstream alerts` and the alert buttons pressed there (which write through to Consul).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.consul.election import WatchElection
from bot.consul.watch_state import AppState, WatchStateKV, encode
from bot.health.probe_worker import ProbeWorker
from bot.metrics import OPEN_INCIDENTS, PROBES
from commands.addresses import ServerAddress
from commands.errors import StoreError
from commands.events import Notifier
from commands.interfaces import Clock, NginxReader, Prober, ProbeResult, UpstreamStore
from commands.probing import probe_nodes
from commands.releases import Releases
from commands.settings import AppSettings
from commands.watch import AppWatch, Incident, WatchEvent

log = logging.getLogger(__name__)
FOLLOW_EVERY = 1.0  # seconds: how stale a replica that does not lead may show the incidents
CLOSE_TIMEOUT = 5.0
CONSUL_UNREADABLE = "Consul unreadable: "  # seconds for freeing the watch lock at shutdown


def watchable(app: AppSettings) -> bool:
    return app.health.url is not None or app.nginx.status_url is not None or app.nginx.list_url is not None


STATS_KEPT = 1000  # the last rounds whose lateness and duration are kept (bounded: the bot runs for months)


@dataclass
class RoundStats:
    started: int = 0  # rounds begun (led or not)
    rounds: int = 0  # rounds done
    probes: int = 0
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_KEPT))  # seconds late, per round
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_KEPT))


class HealthWatcher:
    def __init__(
        self,
        apps: dict[str, AppSettings],
        store: UpstreamStore,
        prober: Prober,
        nginx: NginxReader,
        clock: Clock,
        releases: Releases | None = None,
        state: WatchStateKV | None = None,
        election: WatchElection | None = None,
        worker: ProbeWorker | None = None,
    ) -> None:
        """Without `state` and `election`, one process watching with its incidents in memory (tests).
        With `worker`, the rounds' probes run in its process (serve), else through `prober` here."""
        self.apps = apps
        self.store = store
        self.prober = prober
        self.nginx = nginx
        self.clock = clock
        self.releases = releases
        self.worker = worker
        self.watches = {name: AppWatch(app) for name, app in apps.items() if watchable(app)}
        self.stats = {name: RoundStats() for name in self.watches}
        self.notifier: Notifier | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self._due: dict[str, float] = {}
        self._offsets: dict[str, float] = {}  # app -> seconds its rounds start after the first app's
        self.state = state
        self.election = election
        self._saved: dict[str, tuple[str, int]] = {}  # incident id -> (its JSON as stored, ModifyIndex)
        self._adopted_term = -1  # the election term whose incidents from Consul are loaded
        self._adopting = asyncio.Lock()
        self._saving = asyncio.Lock()
        self._switch_busy: dict[str, int] = {}  # app -> on/off writes of ours in flight
        self._switch_done: dict[str, float] = {}  # app -> monotonic when our last on/off write ended
        self._tasks: set[asyncio.Task[Any]] = set()  # writes of on/off and marks
        self._follower: asyncio.Task[None] | None = None
        self._led_term: int | None = None  # the term of the last round this replica ran as leader
        self._speaking_for: set[str] = set()  # apps whose blindness this ex-leader still reports
        for watch in self.watches.values():
            watch.on_mark = self._share_mark

    # -- WatchControl -------------------------------------------------------------------------------------

    def watch(self, app: str) -> AppWatch | None:
        return self.watches.get(app)

    def set_enabled(self, app: str, on: bool) -> str:
        watch = self.watches.get(app)
        if watch is None:
            return f"{app} has nothing to watch: set its health.url or nginx.status_url."
        watch.enabled = on
        if self.state is not None:  # for whichever replica leads, now and after a restart
            self._spawn(self._write_switch(app, on))
        if on:
            return (
                f"Health watch of {app} is on: every {self.apps[app].health.interval:g} s; a node failing for "
                f"{self.apps[app].health.window:g} s is alerted once."
            )
        until = "" if self.state is not None else " or a restart"
        return f"Health watch of {app} is off (until `/upstream watch {app} on`{until})."

    async def _write_switch(self, app: str, on: bool) -> None:
        assert self.state is not None
        self._switch_busy[app] = self._switch_busy.get(app, 0) + 1
        try:
            await self.state.set_enabled(app, on)
        except StoreError as error:
            log.warning("the health watch of %s is %s here only: %s", app, "on" if on else "off", error.message)
        finally:
            self._switch_busy[app] -= 1
            self._switch_done[app] = time.monotonic()

    def _share_mark(self, incident: Incident) -> None:
        """A silence or acknowledgement pressed here: into Consul, for the replica that leads."""
        if self.state is not None:
            self._spawn(self._write_mark(incident))

    async def _write_mark(self, incident: Incident) -> None:
        assert self.state is not None
        try:
            await self.state.mark(incident.app, incident.id, incident.silenced_until, incident.acknowledged_by)
        except StoreError as error:
            log.warning("incident %s of %s marked here only: %s", incident.id, incident.app, error.message)

    def posted(self, incidents: list[Incident]) -> None:
        """The front end posted these incidents' alert (their `post_ref` is set): into Consul now."""
        if self.state is not None and self.leading():
            self._spawn(self._save_all(incidents))

    async def _save_all(self, incidents: list[Incident]) -> None:
        for incident in incidents:
            if incident.open:
                await self._save(incident)

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the on/off and mark writes started so far (bounded by the Consul adapter's timeouts)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- leadership ----------------------------------------------------------------------------------------

    def leading(self, term: int | None = None) -> bool:
        """This replica runs the watch (and, with `term`, still in the leadership that round started in)."""
        if self.election is None:
            return True
        return self.election.leading and (term is None or self.election.term == term)

    def _elected(self) -> None:
        """Won the watch: run every app's round now rather than one interval later, each at its offset
        (all at once, 10,000 nodes would be probed in the same second: the loop that answers Slack lags)."""
        if self.scheduler is not None and self.scheduler.running:
            now = datetime.now(UTC)
            for name, offset in self._offsets.items():
                job = self.scheduler.get_job(f"watch-{name}")
                if job is not None:
                    self._due[name] = time.time() + offset
                    job.modify(next_run_time=now + timedelta(seconds=offset))

    async def _adopted(self) -> bool:
        """The incidents in Consul are loaded for the current leadership (read once per election won)."""
        if self.state is None:
            return True
        term = self.election.term if self.election is not None else 0
        async with self._adopting:
            if self._adopted_term == term:
                return True
            read_at = time.monotonic()
            states = await self.state.read_all()
            if not self.leading(term):
                return False
            for name, watch in self.watches.items():
                self._apply(name, watch, states.get(name, AppState()), adopt=True, read_at=read_at)
            self._saved = {
                i: (encode(incident), index) for st in states.values() for i, (incident, index) in st.incidents.items()
            }
            self._adopted_term = term
            open_count = sum(len(w.incidents()) for w in self.watches.values())
            log.info("health watch: %d open incident(s) loaded from Consul", open_count)
            return True

    def _apply(self, name: str, watch: AppWatch, state: AppState, adopt: bool, read_at: float) -> None:
        """What Consul holds for an app into its watch: the incidents (all of them, or only the marks) and
        the switch, unless an on/off of ours is in flight or ended after this read began."""
        stored = [incident for incident, _ in state.incidents.values()]
        if adopt:
            watch.adopt(stored)
        else:
            watch.merge(stored)
        if not self._switch_busy.get(name) and self._switch_done.get(name, -1.0) < read_at:
            watch.enabled = self.apps[name].watch.enabled if state.enabled is None else state.enabled

    # -- scheduling ----------------------------------------------------------------------------------------

    def start(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        for i, name in enumerate(self.watches):
            interval = self.apps[name].health.interval
            # Apps' rounds spread over the interval rather than all at once: an even load on the CPU,
            # the event loop and the nodes' network.
            offset = self._offsets[name] = interval * i / len(self.watches)
            self._due[name] = time.time() + offset
            self.scheduler.add_job(
                self.round,
                "interval",
                seconds=interval,
                args=[name],
                id=f"watch-{name}",
                next_run_time=now + timedelta(seconds=offset),
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self.scheduler.start()

        if self.election is not None and self.state is not None:
            self.election.on_elected = self._elected
            self.election.start()
            self._follower = asyncio.get_running_loop().create_task(self._follow(), name="watch mirror")

    async def _follow(self) -> None:
        """While another replica leads: mirror the incidents and switches in Consul."""
        assert self.state is not None
        while True:
            await asyncio.sleep(FOLLOW_EVERY)
            if self.leading():
                continue
            # Only the leader reports open incidents: a replica that stopped leading (or never led) says
            # nothing rather than what it last saw, whether or not it can read Consul now.
            OPEN_INCIDENTS.clear()
            read_at = time.monotonic()
            try:
                states = await self.state.read_all()
            except StoreError as error:
                log.debug("health watch mirror not refreshed: %s", error.message)
                continue
            if self.leading():  # won meanwhile: the takeover loads them itself
                continue
            self._adopted_term = -1
            for name, watch in self.watches.items():
                self._apply(name, watch, states.get(name, AppState()), adopt=True, read_at=read_at)

    def stop_rounds(self) -> None:
        """No more rounds (so no new events); writes in flight go on (shutdown: flush first)."""
        # Forgotten at once: APScheduler stops later (in a loop callback), and a second shutdown()
        # before then raises SchedulerNotRunningError.
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)

    def shutdown(self) -> None:
        self.stop_rounds()
        for task in [*self._tasks, *([self._follower] if self._follower else [])]:
            task.cancel()

    async def aclose(self) -> None:
        """shutdown(), and free the watch lock at once, so another replica takes over without waiting
        for the session's TTL. Bounded, never raises."""
        self.shutdown()
        if self.election is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.election.close()

    # -- one round -------------------------------------------------------------------------------------

    async def round(self, name: str) -> None:
        started = time.time()
        stats = self.stats[name]
        stats.started += 1
        stats.lateness.append(max(0.0, started - self._due.get(name, started)))
        interval = self.apps[name].health.interval
        # The next round is due one interval after this one was due (or now, if it is very late).
        self._due[name] = max(self._due.get(name, started) + interval, started - interval)
        watch = self.watches[name]
        if not self.leading():
            if self._led_term is not None:
                # Lost the watch. Until Consul is read again, this replica speaks for what it cannot see:
                # when Consul itself is down nobody else leads, and silence would look like health.
                self._led_term = None
                self._speaking_for = set(self.watches)
            if name in self._speaking_for:
                await self._blind_round(name, watch)
            return
        self._led_term = self.election.term if self.election is not None else 0
        try:
            if not await self._adopted():
                return
            if self.state is not None:
                await self._sync(name, watch)
            if not watch.enabled:
                return
            await self._round(name, watch)
        except StoreError as error:
            log.warning("health watch of %s skipped a round: %s", name, error.message)
            if watch.enabled:
                await self._post(watch.unseen(self.clock.now(), f"{CONSUL_UNREADABLE}{error.message}"))
        except asyncio.CancelledError:
            log.info("health watch of %s: round cancelled (shutting down)", name)
            return
        except Exception:
            log.exception("health watch of %s failed a round", name)
        stats.rounds += 1
        stats.durations.append(time.time() - started)

    async def _blind_round(self, name: str, watch: AppWatch) -> None:
        """The replica that led, while nobody can be seen to lead: is Consul readable? Its "cannot see"
        alert after the window, its recovery once Consul answers (then whoever leads watches)."""
        app = self.apps[name]
        if not watch.enabled:
            self._speaking_for.discard(name)
            return
        try:
            await self.store.read(app.upstream)
        except StoreError as error:
            events = watch.unseen(self.clock.now(), f"{CONSUL_UNREADABLE}{error.message}")
        except Exception:
            log.exception("health watch of %s: Consul check failed", name)
            return
        else:
            self._speaking_for.discard(name)
            # Only its own "cannot see Consul" ends here; one about nginx is the leader's to end.
            mine = watch.blind is not None and watch.blind.last_error.startswith(CONSUL_UNREADABLE)
            events = watch.seen(self.clock.now()) if mine or watch.blind is None else []
        for event in events:
            if self.notifier is not None and not self.leading():
                await self.notifier.emit(event)

    async def _post(self, events: list[WatchEvent]) -> None:
        """Hand events to the front end; alerts and reminders only while this leadership lasts (the one
        whose incidents were loaded)."""
        term = self._adopted_term if self.state is not None else None
        for event in events:
            bound = event.kind in ("alert", "reminder", "group_alert", "group_reminder")
            if bound and not self.leading(term):
                log.warning("health watch of %s: not leading any more, %s not posted", event.app, event.kind)
                continue
            if self.notifier is not None:
                # An alert or reminder still queued when this leadership ends is the successor's to say
                # (it announces what it adopts unposted). A recovery or "cannot see" is said anyway: the
                # successor has nothing left to recover, and a lost leadership is often why it cannot see.
                await self.notifier.emit(replace(event, valid=(lambda: self.leading(term)) if bound else None))

    async def _round(self, name: str, watch: AppWatch) -> None:
        app = self.apps[name]
        upstream, view = await asyncio.gather(self.store.read(app.upstream), self.nginx.read(app.upstream))
        engine = self.releases.engine(name) if self.releases is not None else None
        releasing = set(engine.plan.nodes) if engine is not None else set()
        probes: dict[ServerAddress, ProbeResult] = {}
        if app.health.probes:
            serving = [s.address for s in upstream.servers if not s.drained and s.address not in releasing]
            if self.worker is not None:
                urls = [app.health.url_for(a.host, a.port) or "" for a in serving]
                got = await self.worker.probe_all(urls, app.health.timeout, app.watch.concurrency)
                if got is None:
                    # Nothing is known of the nodes this round: not a round seen. Lasting the window, it
                    # is one "cannot see" alert, as when Consul or nginx cannot be read.
                    reason = "the health probe worker did not answer (it is started again next round)"
                    PROBES.labels(name, "unknown").inc(len(serving))
                    await self._post(watch.unseen(self.clock.now(), reason))
                    return
                probes = dict(zip(serving, got, strict=True))
            else:
                probes = await probe_nodes(self.prober, app, serving, app.watch.concurrency)
        self.stats[name].probes += len(probes)
        healthy = sum(1 for p in probes.values() if p.healthy)
        PROBES.labels(name, "healthy").inc(healthy)
        PROBES.labels(name, "failing").inc(len(probes) - healthy)
        events = watch.observe(self.clock.now(), upstream, probes, view, releasing)
        await self._post(events)
        if self.leading():  # a leadership lost while posting: the follower loop has cleared the gauge
            OPEN_INCIDENTS.labels(name).set(len(watch.incidents()))
        if self.state is not None:
            await self._persist(watch, events)

    # -- the incidents in Consul -------------------------------------------------------------------------

    async def _sync(self, name: str, watch: AppWatch) -> None:
        """Read the app's state: marks and switch in; stored incidents this leader no longer has out."""
        assert self.state is not None
        read_at = time.monotonic()
        state = await self.state.read(name)
        self._apply(name, watch, state, adopt=False, read_at=read_at)
        mine = {i.id for i in watch.incidents()}
        now = self.clock.now()
        for incident_id, (incident, index) in state.incidents.items():
            if incident_id in mine:
                self._saved[incident_id] = (encode(incident), index)
            elif incident.open or (incident.silenced_until or 0) <= now:
                # Resolved here (its delete failed or is pending), or its silence is over.
                await self._remove(incident, index)

    async def _persist(self, watch: AppWatch, events: list[WatchEvent]) -> None:
        """After posting: write the incidents that opened or changed, delete the resolved ones (keep one
        while its silence lasts). A write that fails is retried next round (it still differs)."""
        now = self.clock.now()
        resolved = [e.incident for e in events if e.kind == "recovered" and e.incident is not None]
        resolved += [i for e in events if e.kind == "group_recovered" for i in e.incidents]
        for incident in watch.incidents() + resolved:
            saved = self._saved.get(incident.id)
            if not incident.open and (incident.silenced_until or 0) <= now:
                if saved is not None:
                    await self._remove(incident, saved[1])
                continue
            if not await self._save(incident):
                return  # no longer leading: the successor owns them

    async def _save(self, incident: Incident) -> bool:
        """Write the incident if it differs from what is stored; False when this replica no longer leads.
        A write that fails is retried at the next round (it still differs). One write at a time: the
        round's and the one noting where its alert went must not race on the same check-and-set index."""
        async with self._saving:
            return await self._save_now(incident)

    async def _save_now(self, incident: Incident) -> bool:
        saved = self._saved.get(incident.id)
        text = encode(incident)
        if saved is not None and saved[0] == text:
            return True
        held = self.election.held if self.election is not None else None
        if self.election is not None and held is None:
            return False
        assert self.state is not None
        try:
            index = await self.state.save(incident, saved[1] if saved else 0, held)
        except StoreError as error:
            log.warning("incident %s of %s not stored in Consul: %s", incident.id, incident.app, error.message)
            return True
        if index is not None:
            self._saved[incident.id] = (text, index)
        return True

    async def _remove(self, incident: Incident, index: int) -> None:
        held = self.election.held if self.election is not None else None
        if self.state is None or (self.election is not None and held is None):
            return
        try:
            if await self.state.remove(incident, index, held):
                self._saved.pop(incident.id, None)
        except StoreError as error:
            log.warning("incident %s of %s not deleted from Consul: %s", incident.id, incident.app, error.message)
