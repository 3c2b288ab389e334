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
from commands.interfaces import NginxView, ProbeResult
from commands.servers import Upstream
from commands.settings import AppSettings


@dataclass
class Incident:
    app: str
    address: ServerAddress | None  # None: the app itself (the watch cannot see it: Consul or nginx unreadable)
    reason: str  # "failing its health probe", "nginx's check reports it down", "flapping", ...
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
    group: str | None = None  # the id of the grouped alert it was announced in (many nodes failing at once)

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def take_marks(self, other: Incident) -> None:
        """Marks only grow: the later silence wins, the first acknowledgement stays, a known post stays."""
        if (other.silenced_until or 0) > (self.silenced_until or 0):
            self.silenced_until = other.silenced_until
        self.acknowledged_by = self.acknowledged_by or other.acknowledged_by
        self.post_ref = self.post_ref or other.post_ref


GROUP_AT = 3  # this many alerts (reminders, recoveries) of one app in one round are one message


@dataclass(frozen=True)
class WatchEvent:
    """What the watch tells people. Kinds:

    - "alert", "reminder", "recovered": one node's incident (`incident`); "recovered" also ends an
      app-level incident (`incident.address` None: the watch sees the app again);
    - "blind": the watch cannot see the app (Consul or nginx unreadable for longer than its window);
      `incident.address` is None, `incident.reason` says why;
    - "group_alert", "group_reminder", "group_recovered": GROUP_AT or more of those of one app in one
      round, as one message: `incidents` (a group_alert's all share `group`; the others may come from
      several alerts); `incident` and `address` are None;
    - "drained_reminder": a node drained for long (`address`, `since`, `by`).
    """

    kind: str
    app: str
    address: ServerAddress | None
    incident: Incident | None = None
    since: float | None = None
    by: str | None = None
    incidents: tuple[Incident, ...] = ()
    # False once the replica that observed it no longer leads the watch: post nothing more for it.
    valid: Callable[[], bool] | None = field(default=None, compare=False, repr=False)

    def still_valid(self) -> bool:
        return self.valid is None or self.valid()


@dataclass(slots=True)
class _Node:
    """What the watch keeps per node between rounds: small and bounded (thousands of nodes per replica)."""

    passes: int = 0  # consecutive passes of our own probes
    failing_since: float | None = None  # the first failure of the current failing run (own probes)
    recent: int = 0  # the last `span` probe results, newest in bit 0, 1 = failed
    recent_count: int = 0  # how many results `recent` holds (up to `span`)
    last_error: str = ""  # the last failed probe's answer
    check_down_since: float | None = None
    routed_while_drained_since: float | None = None
    drained_since: float | None = None
    drained_reminded: bool = False
    incident: Incident | None = None

    def forget_probes(self) -> None:
        self.passes, self.failing_since, self.recent, self.recent_count, self.last_error = 0, None, 0, 0, ""
        self.check_down_since = None


def _failures(node: _Node) -> int:
    return node.recent.bit_count()


class AppWatch:
    def __init__(self, app: AppSettings) -> None:
        self.app = app
        self.enabled = app.watch.enabled
        self.nodes: dict[ServerAddress, _Node] = {}
        self.silenced: dict[ServerAddress, float] = {}  # address -> until (pruned once over)
        self.drained_by: dict[ServerAddress, str] = {}  # who drained it through the bot (while it stays drained)
        self.on_mark: Callable[[Incident], None] | None = None  # a silence or acknowledgement to share
        self.blind: Incident | None = None  # the watch cannot see the app (open)
        self.unseen_since: float | None = None  # since when Consul or nginx could not be read
        self.unannounced: list[Incident] = []  # adopted open incidents whose alert nobody posted
        health = app.health
        # Probes a window holds: a node failing most of them is flapping (failures shorter than the
        # window, with passes between them, never make a continuous failure).
        self.span = max(health.rise + 1, min(60, round(health.window / health.interval)))
        self.uses_probe = health.probes
        self.uses_check = app.nginx.status_url is not None and health.source in ("nginx", "both")

    # -- people ----------------------------------------------------------------------------------------

    def incidents(self) -> list[Incident]:
        found = [n.incident for n in self.nodes.values() if n.incident is not None and n.incident.open]
        if self.blind is not None and self.blind.open:
            found.insert(0, self.blind)
        return found

    def find(self, incident_id: str) -> Incident | None:
        return next((i for i in self.incidents() if i.id == incident_id), None)

    def silence(self, incident_id: str, until: float) -> Incident | None:
        incident = self.find(incident_id)
        if incident is not None:
            incident.silenced_until = until
            if incident.address is not None:
                self.silenced[incident.address] = until
            self._marked(incident)
        return incident

    def acknowledge(self, incident_id: str, by: str) -> Incident | None:
        incident = self.find(incident_id)
        if incident is not None and incident.acknowledged_by is None:
            incident.acknowledged_by = by
            self._marked(incident)
        return incident

    def in_group(self, group: str) -> list[Incident]:
        """The open incidents announced in one grouped alert."""
        return [i for i in self.incidents() if i.group == group]

    def silence_group(self, group: str, until: float) -> list[Incident]:
        """Silence every open incident of a grouped alert; those silenced."""
        return [i for i in self.in_group(group) if self.silence(i.id, until) is not None]

    def acknowledge_group(self, group: str, by: str) -> list[Incident]:
        """Acknowledge every open incident of a grouped alert not acknowledged yet; those acknowledged now."""
        return [i for i in self.in_group(group) if i.acknowledged_by is None and self.acknowledge(i.id, by)]

    def _marked(self, incident: Incident) -> None:
        if self.on_mark is not None:
            self.on_mark(incident)

    # -- state shared through Consul ---------------------------------------------------------------

    def adopt(self, stored: Iterable[Incident]) -> None:
        """Replace what this watch knows with the incidents kept in Consul (a takeover, or the mirror of
        a replica that does not lead): open ones are open here, with fresh probe windows; a resolved one
        kept for its silence only silences. Marks made here and not yet stored are kept; so is an open
        "cannot see" incident of this replica that Consul does not have (it could not be written)."""
        stored = list(stored)
        mine = {i.id: i for i in self.incidents()}
        silenced = dict(self.silenced)
        self.nodes = {}
        blind = None
        for incident in stored:
            if incident.id in mine:
                incident.take_marks(mine[incident.id])
            if incident.address is None:
                blind = incident if incident.open else blind
                continue
            if (incident.silenced_until or 0) > silenced.get(incident.address, 0):
                silenced[incident.address] = incident.silenced_until or 0
            if incident.open:
                self.nodes[incident.address] = _Node(incident=incident)
        # This replica's own "cannot see" (Consul unreadable: it could not be stored) stays while it lasts.
        if blind is not None or self.unseen_since is None or self.blind is None or not self.blind.open:
            self.blind = blind
        self.silenced = silenced
        # Open and never shown (its alert was still waiting for Slack when its leader went): announced
        # by the next round this watch leads. (One its leader posted but could not note yet may repeat.)
        self.unannounced = [i for i in self.incidents() if i.post_ref is None]

    def merge(self, stored: Iterable[Incident]) -> None:
        """The leader, each round: take the marks pressed on other replicas."""
        mine = {i.id: i for i in self.incidents()}
        for incident in stored:
            own = mine.get(incident.id)
            if own is not None:
                own.take_marks(incident)
                if own.address is not None and (own.silenced_until or 0) > self.silenced.get(own.address, 0):
                    self.silenced[own.address] = own.silenced_until or 0

    def record_drain(self, address: ServerAddress, by: str) -> None:
        self.drained_by[address] = by

    # -- sight: can the watch read what it needs? ------------------------------------------------------

    def unseen(self, now: float, reason: str) -> list[WatchEvent]:
        """Consul or nginx could not be read this round: nothing about the nodes is known (no alert, no
        recovery); after `health.window` of it, one "blind" alert says why."""
        if self.unseen_since is None:
            self.unseen_since = now
        blind = self.blind if self.blind is not None and self.blind.open else None
        if blind is not None:
            blind.last_error = reason
            return self._remind(now, blind)
        if now - self.unseen_since < self.app.health.window:
            return []
        self.blind = Incident(
            self.app.name, None, "the health watch cannot see it", self.unseen_since, reason, None, True, now
        )
        return [WatchEvent("blind", self.app.name, None, self.blind)]

    def seen(self, now: float) -> list[WatchEvent]:
        self.unseen_since = None
        blind, self.blind = self.blind, None
        if blind is None or not blind.open:
            return []
        blind.resolved_at, blind.resolution = now, "the watch sees it again"
        return [WatchEvent("recovered", self.app.name, None, blind)]

    # -- one round -------------------------------------------------------------------------------------

    def observe(
        self,
        now: float,
        upstream: Upstream,
        probes: dict[ServerAddress, ProbeResult],
        view: NginxView,
        releasing: set[ServerAddress] | None = None,
    ) -> list[WatchEvent]:
        """One round. A source that could not be read (nginx's page, a node's probe not taken) is
        unknown: it neither opens nor resolves an incident."""
        events: list[WatchEvent] = [
            WatchEvent("blind" if i.address is None else "alert", self.app.name, i.address, i)
            for i in self.unannounced
            if i.open and i.post_ref is None
        ]
        self.unannounced = []
        # What the watch could not read of what it uses (nginx's check page only when it decides).
        errors = [e for e in (view.checks_error if self.uses_check else None, view.listed_error) if e]
        if not (view.checks_error or view.listed_error):
            errors = list(view.errors)  # a reader that does not say which
        events += self.unseen(now, "; ".join(errors)) if errors else self.seen(now)
        releasing = releasing or set()
        seen = set()
        checks = view.checks if self.uses_check else None
        for entry in upstream.servers:
            address = entry.address
            seen.add(address)
            node = self.nodes.get(address)
            if node is None:
                node = self.nodes[address] = _Node()
            if address in releasing:
                # The release engine drains, restarts and probes it: its own rules apply, not ours.
                node.forget_probes()
                node.routed_while_drained_since = None
                continue
            if entry.drained:
                events += self._drained(now, address, node, view)
            else:
                node.drained_since, node.drained_reminded = None, False
                node.routed_while_drained_since = None
                self.drained_by.pop(address, None)
                check = checks.get(str(address)) if checks is not None else None
                events += self._serving(now, address, node, probes.get(address), check, checks is not None)
        for address in list(self.nodes):
            if address not in seen:  # removed from the upstream
                node = self.nodes.pop(address)
                self.drained_by.pop(address, None)
                if node.incident is not None and node.incident.open:
                    events.append(self._resolve(now, node, "removed from the upstream"))
        for address, until in list(self.silenced.items()):
            if until <= now:
                del self.silenced[address]
        # An adopted incident never announced that ends this very round: its recovery alone says it.
        ended = {e.incident.id for e in events if e.kind == "recovered" and e.incident is not None}
        events = [e for e in events if not (e.kind in ("alert", "blind") and e.incident and e.incident.id in ended)]
        return self._grouped(events)

    def _probed(self, now: float, node: _Node, probe: ProbeResult) -> None:
        node.recent = ((node.recent << 1) | (not probe.healthy)) & ((1 << self.span) - 1)
        node.recent_count = min(self.span, node.recent_count + 1)
        if probe.healthy:
            node.passes += 1
            node.failing_since = None
        else:
            node.passes = 0
            node.last_error = probe.detail
            if node.failing_since is None:
                node.failing_since = now

    def _flapping(self, node: _Node) -> bool:
        """Most of a full window's probes failed, with passes between them (one run of failures going on
        is a node going down: the continuous rule alerts it when it lasts the window)."""
        failures = _failures(node)
        trailing = (node.recent ^ (node.recent + 1)).bit_length() - 1  # the current run of failures
        full = node.recent_count >= self.span
        return full and 2 * failures > self.span and failures > trailing and 2 * trailing < self.span

    def _serving(
        self,
        now: float,
        address: ServerAddress,
        node: _Node,
        probe: ProbeResult | None,
        check: str | None,
        check_read: bool,
    ) -> list[WatchEvent]:
        window = self.app.health.window
        if probe is not None and self.uses_probe:
            self._probed(now, node, probe)
        if check_read:
            if check == "down":
                node.check_down_since = node.check_down_since if node.check_down_since is not None else now
            else:
                node.check_down_since = None
        probe_failed = node.failing_since is not None and now - node.failing_since >= window
        check_failed = node.check_down_since is not None and now - node.check_down_since >= window
        flapping = not probe_failed and self._flapping(node)
        incident = node.incident if node.incident is not None and node.incident.open else None
        if incident is not None and not incident.consul_serving:
            return [self._resolve(now, node, "serving again in Consul")]
        if incident is None:
            if not (probe_failed or check_failed or flapping):
                return []
            if self.silenced.get(address, 0) > now:
                return []
            if probe_failed:
                assert node.failing_since is not None
                since, reason, error = node.failing_since, "failing its health probe", node.last_error
            elif check_failed:
                assert node.check_down_since is not None
                since, reason = node.check_down_since, "reported down by nginx's check while Consul lists it serving"
                error = f"nginx check: {check}"
            else:
                since = now - window
                reason = f"flapping: failed {_failures(node)} of its last {self.span} probes"
                error = node.last_error
            node.incident = Incident(self.app.name, address, reason, since, error, check, True, now)
            return [WatchEvent("alert", self.app.name, address, node.incident)]
        if check_read:
            incident.nginx_check = check
        if probe is not None and not probe.healthy:
            incident.last_error = probe.detail
        if self._healthy_again(node, incident, check, check_read):
            return [self._resolve(now, node, "healthy again")]
        return self._remind(now, incident)

    def _healthy_again(self, node: _Node, incident: Incident, check: str | None, check_read: bool) -> bool:
        """Every source the app uses was read and says healthy: `rise` passes in a row (and, for a
        flapping node, most of its window passed), nginx's check "up". Unknown is never healthy; a
        node nginx's page does not list at all is not checked by nginx: the probes decide alone."""
        flapped = incident.reason.startswith("flapping")
        if self.uses_probe and (node.passes < self.app.health.rise or (flapped and self._flapping(node))):
            return False
        if self.uses_check:
            if not check_read:
                return False
            if check is None:
                return self.uses_probe
            return check == "up"
        return self.uses_probe

    def _drained(self, now: float, address: ServerAddress, node: _Node, view: NginxView) -> list[WatchEvent]:
        events: list[WatchEvent] = []
        node.forget_probes()
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
        if view.listed_down is None:
            return events  # not configured, or unreadable this round: unknown, nothing decided
        listed = view.listed_down.get(str(address))
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
        elif listed is True:
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
        # A fresh window from here: the failures that made the incident must not make it flap again.
        node.recent, node.recent_count = 0, 0
        node.incident.resolved_at = now
        node.incident.resolution = how
        incident, node.incident = node.incident, None
        return WatchEvent("recovered", self.app.name, incident.address, incident)

    def _grouped(self, events: list[WatchEvent]) -> list[WatchEvent]:
        """GROUP_AT or more node alerts (reminders, recoveries) in one round: one event for them all, so
        a shared dependency going down is one message, not a storm."""
        for kind in ("alert", "reminder", "recovered"):
            same = [e for e in events if e.kind == kind and e.incident is not None and e.incident.address is not None]
            if len(same) < GROUP_AT:
                continue
            incidents = tuple(e.incident for e in same if e.incident is not None)
            if kind == "alert":
                group = uuid.uuid4().hex[:12]
                for incident in incidents:
                    incident.group = group
            # In the place of the first of them: the order of alerts and recoveries stays.
            first = events.index(same[0])
            grouped = WatchEvent(f"group_{kind}", self.app.name, None, incidents=incidents)
            events = [*[e for e in events[:first]], grouped, *[e for e in events[first:] if e not in same]]
        return events


class WatchControl(Protocol):
    """What commands may ask of the running watch (the scheduler in `bot/` provides it)."""

    def watch(self, app: str) -> AppWatch | None: ...

    def set_enabled(self, app: str, on: bool) -> str:
        """Turn an app's watch on or off; what happened, in a sentence."""
        ...
