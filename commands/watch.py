"""The health watch of one app: turns probe results, Consul's flags and nginx's view into incidents.

Pure logic, driven by `observe(now, ...)` once a round: a node that fails continuously for
`health.window` opens one incident (one alert); it recovers after `health.rise` consecutive passes.
Flaps shorter than the window are not alerted. Nodes drained on purpose are not alerted (one
reminder when drained too long); nodes in a release are left to the release engine. Disagreements
(Consul serving but nginx's check down, or nginx routing to a node Consul drained) count when they
last the window too.

Several replicas: only the one leading the watch observes (bot/health/scheduler.py); its incidents are
kept in Consul, and `adopt` loads them into a watch that takes over, or mirrors them on the others
(for `/upstream alerts` and the alert buttons there). Silence and acknowledge reach Consul through
`on_mark`, on whichever replica they are pressed. Probe windows, drained-since and drained-by stay in
the replica's memory: a takeover restarts them (an open incident is neither re-alerted nor forgotten;
a failure not yet alerted needs a full window again).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from commands.addresses import ServerAddress
from commands.health_window import HealthWindow
from commands.interfaces import NginxView, ProbeResult
from commands.servers import Upstream
from commands.settings import AppSettings


@dataclass
class Incident:
    app: str
    address: ServerAddress
    reason: str  # "failing its health probe", "nginx's check reports it down", ...
    failing_since: float
    last_error: str
    nginx_check: str | None  # what nginx's check says, when configured
    consul_serving: bool
    opened_at: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    reminded_at: float | None = None
    silenced_until: float | None = None
    acknowledged_by: str | None = None
    resolved_at: float | None = None
    resolution: str = ""
    post_ref: dict[str, str] | None = None  # where the front end posted its alert (opaque: Slack channel, ts)

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def take_marks(self, other: Incident) -> None:
        """Marks only grow: the later silence wins, the first acknowledgement stays, a known post stays."""
        if (other.silenced_until or 0) > (self.silenced_until or 0):
            self.silenced_until = other.silenced_until
        self.acknowledged_by = self.acknowledged_by or other.acknowledged_by
        self.post_ref = self.post_ref or other.post_ref


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "alert" | "reminder" | "recovered" | "drained_reminder"
    app: str
    address: ServerAddress
    incident: Incident | None = None
    since: float | None = None
    by: str | None = None


@dataclass
class _Node:
    probe: HealthWindow | None = None
    check_down_since: float | None = None
    routed_while_drained_since: float | None = None
    drained_since: float | None = None
    drained_reminded: bool = False
    incident: Incident | None = None


class AppWatch:
    def __init__(self, app: AppSettings) -> None:
        self.app = app
        self.enabled = app.watch.enabled
        self.nodes: dict[ServerAddress, _Node] = {}
        self.silenced: dict[ServerAddress, float] = {}  # address -> until
        self.drained_by: dict[ServerAddress, str] = {}  # who drained it through the bot (this run)
        self.on_mark: Callable[[Incident], None] | None = None  # a silence or acknowledgement to share

    # -- people ----------------------------------------------------------------------------------------

    def incidents(self) -> list[Incident]:
        return [n.incident for n in self.nodes.values() if n.incident is not None and n.incident.open]

    def find(self, incident_id: str) -> Incident | None:
        return next((i for i in self.incidents() if i.id == incident_id), None)

    def silence(self, incident_id: str, until: float) -> Incident | None:
        incident = self.find(incident_id)
        if incident is not None:
            incident.silenced_until = until
            self.silenced[incident.address] = until
            self._marked(incident)
        return incident

    def acknowledge(self, incident_id: str, by: str) -> Incident | None:
        incident = self.find(incident_id)
        if incident is not None and incident.acknowledged_by is None:
            incident.acknowledged_by = by
            self._marked(incident)
        return incident

    def _marked(self, incident: Incident) -> None:
        if self.on_mark is not None:
            self.on_mark(incident)

    # -- state shared through Consul ---------------------------------------------------------------

    def adopt(self, stored: Iterable[Incident]) -> None:
        """Replace what this watch knows with the incidents kept in Consul (a takeover, or the mirror of
        a replica that does not lead): open ones are open here, with fresh probe windows; a resolved one
        kept for its silence only silences. Marks made here and not yet stored are kept."""
        stored = list(stored)
        mine = {i.id: i for i in self.incidents()}
        silenced = dict(self.silenced)
        self.nodes = {}
        for incident in stored:
            if incident.id in mine:
                incident.take_marks(mine[incident.id])
            if (incident.silenced_until or 0) > silenced.get(incident.address, 0):
                silenced[incident.address] = incident.silenced_until or 0
            if incident.open:
                self.nodes[incident.address] = _Node(incident=incident)
        self.silenced = silenced

    def merge(self, stored: Iterable[Incident]) -> None:
        """The leader, each round: take the marks pressed on other replicas."""
        mine = {i.id: i for i in self.incidents()}
        for incident in stored:
            own = mine.get(incident.id)
            if own is not None:
                own.take_marks(incident)
                if own.silenced_until and own.silenced_until > self.silenced.get(own.address, 0):
                    self.silenced[own.address] = own.silenced_until

    def record_drain(self, address: ServerAddress, by: str) -> None:
        self.drained_by[address] = by

    # -- one round -------------------------------------------------------------------------------------

    def observe(
        self,
        now: float,
        upstream: Upstream,
        probes: dict[ServerAddress, ProbeResult],
        view: NginxView,
        releasing: set[ServerAddress] | None = None,
    ) -> list[WatchEvent]:
        events: list[WatchEvent] = []
        releasing = releasing or set()
        seen = set()
        for entry in upstream.servers:
            address = entry.address
            seen.add(address)
            node = self.nodes.setdefault(address, _Node())
            if address in releasing:
                # The release engine drains, restarts and probes it: its own rules apply, not ours.
                node.probe, node.check_down_since, node.routed_while_drained_since = None, None, None
                continue
            if entry.drained:
                events += self._drained(now, address, node, view)
            else:
                node.drained_since, node.drained_reminded = None, False
                node.routed_while_drained_since = None
                events += self._serving(now, address, node, probes.get(address), view)
        for address in list(self.nodes):
            if address not in seen:  # removed from the upstream
                node = self.nodes.pop(address)
                if node.incident is not None and node.incident.open:
                    events.append(self._resolve(now, node, "removed from the upstream"))
        return events

    def _serving(
        self, now: float, address: ServerAddress, node: _Node, probe: ProbeResult | None, view: NginxView
    ) -> list[WatchEvent]:
        health = self.app.health
        check = view.checks.get(str(address)) if view.checks is not None else None
        if probe is not None:
            if node.probe is None:
                node.probe = HealthWindow(health.window, health.rise, now)
            node.probe.record(now, probe)
        if check == "down":
            node.check_down_since = node.check_down_since if node.check_down_since is not None else now
        else:
            node.check_down_since = None
        probe_failed = node.probe is not None and node.probe.failed_continuously(now)
        check_failed = node.check_down_since is not None and now - node.check_down_since >= health.window
        incident = node.incident if node.incident is not None and node.incident.open else None
        if incident is not None and not incident.consul_serving:
            return [self._resolve(now, node, "serving again in Consul")]
        if incident is None:
            if not (probe_failed or check_failed):
                return []
            if self.silenced.get(address, 0) > now:
                return []
            if probe_failed:
                assert node.probe is not None and node.probe.failing_since is not None
                since, reason = node.probe.failing_since, "failing its health probe"
            else:
                assert node.check_down_since is not None
                since, reason = node.check_down_since, "reported down by nginx's check while Consul lists it serving"
            node.incident = Incident(
                self.app.name,
                address,
                reason,
                since,
                probe.detail if probe is not None and not probe.healthy else f"nginx check: {check}",
                check,
                True,
                now,
            )
            return [WatchEvent("alert", self.app.name, address, node.incident)]
        incident.nginx_check = check
        if probe is not None and not probe.healthy:
            incident.last_error = probe.detail
        healthy_again = (node.probe is None or node.probe.recovered) and check != "down"
        if healthy_again:
            return [self._resolve(now, node, "healthy again")]
        return self._remind(now, incident)

    def _drained(self, now: float, address: ServerAddress, node: _Node, view: NginxView) -> list[WatchEvent]:
        events: list[WatchEvent] = []
        node.probe, node.check_down_since = None, None
        if node.incident is not None and node.incident.open and node.incident.consul_serving:
            # A sick node drained on purpose (the alert's Drain button, say): the incident is handled.
            by = self.drained_by.get(address)
            events.append(self._resolve(now, node, f"drained{f' by {by}' if by else ''}"))
        if node.drained_since is None:
            node.drained_since = now
        if not node.drained_reminded and now - node.drained_since >= self.app.watch.drained_reminder:
            node.drained_reminded = True
            events.append(
                WatchEvent(
                    "drained_reminder",
                    self.app.name,
                    address,
                    since=node.drained_since,
                    by=self.drained_by.get(address),
                )
            )
        listed = view.listed_down.get(str(address)) if view.listed_down is not None else None
        if listed is False:  # nginx still routes to it
            if node.routed_while_drained_since is None:
                node.routed_while_drained_since = now
            lasting = now - node.routed_while_drained_since >= self.app.health.window
            if lasting and node.incident is None:
                node.incident = Incident(
                    self.app.name,
                    address,
                    "routed by nginx although Consul drained it",
                    node.routed_while_drained_since,
                    "nginx-upsync has not applied the drain",
                    None,
                    False,
                    now,
                )
                events.append(WatchEvent("alert", self.app.name, address, node.incident))
        else:
            node.routed_while_drained_since = None
            if node.incident is not None and node.incident.open and not node.incident.consul_serving:
                events.append(self._resolve(now, node, "nginx stopped routing to it"))
        return events

    def _remind(self, now: float, incident: Incident) -> list[WatchEvent]:
        if incident.acknowledged_by or (incident.silenced_until or 0) > now:
            return []
        last = incident.reminded_at or incident.opened_at
        if now - last >= self.app.watch.reminder:
            incident.reminded_at = now
            return [WatchEvent("reminder", self.app.name, incident.address, incident)]
        return []

    def _resolve(self, now: float, node: _Node, how: str) -> WatchEvent:
        assert node.incident is not None
        node.incident.resolved_at = now
        node.incident.resolution = how
        incident, node.incident = node.incident, None
        return WatchEvent("recovered", self.app.name, incident.address, incident)


class WatchControl(Protocol):
    """What commands may ask of the running watch (the scheduler in `bot/` provides it)."""

    def watch(self, app: str) -> AppWatch | None: ...

    def set_enabled(self, app: str, on: bool) -> str:
        """Turn an app's watch on or off; what happened, in a sentence."""
        ...
