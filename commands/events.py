"""What commands emit. Both front ends (Slack, terminal) render these and nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from commands.addresses import ServerAddress
from commands.history import HistoryEntry
from commands.interfaces import LockInfo, ProbeResult
from commands.journal import JournalEntry
from commands.plans import ChangePlan, ChangeResult
from commands.release_plan import ReleasePlan
from commands.release_state import ReleaseState
from commands.steps import OutputLine
from commands.watch import Incident, WatchEvent


@dataclass(frozen=True)
class ServerStatus:
    address: ServerAddress
    weight: int
    max_fails: int
    fail_timeout: int
    drained: bool
    invalid_value: str | None = None
    nginx_check: str | None = None  # "up" / "down" / "unknown" (not in check_status); None: not configured
    nginx_listed: str | None = None  # "serving" / "drained" / "missing"; None: not configured
    probe: ProbeResult | None = None
    disagreement: str | None = None
    drained_note: str | None = None  # "drained by <@U1> at 2026-11-29T10:00:00Z: disk full" (the history)

    @property
    def needs_attention(self) -> bool:
        return bool(
            self.drained
            or self.disagreement
            or self.invalid_value
            or self.nginx_check == "down"
            or (self.probe is not None and not self.probe.healthy)
        )


@dataclass(frozen=True)
class StatusReport:
    app: str
    upstream: str
    servers: tuple[ServerStatus, ...]
    notes: tuple[str, ...] = ()  # nginx not readable, skipped keys, servers nginx has but Consul not
    page: int = 1

    @property
    def serving(self) -> int:
        return sum(1 for s in self.servers if not s.drained)

    @property
    def summary(self) -> str:
        total = len(self.servers)
        parts = [f"{self.app}: {self.serving} of {total} serving"]
        down = sum(1 for s in self.servers if s.nginx_check == "down")
        if down:
            parts.append(f"{down} down in nginx's check")
        sick = sum(1 for s in self.servers if s.probe is not None and not s.probe.healthy)
        if sick:
            parts.append(f"{sick} failing the probe")
        disagreements = sum(1 for s in self.servers if s.disagreement)
        if disagreements:
            parts.append(f"{disagreements} disagreement{'s' if disagreements > 1 else ''} between Consul and nginx")
        return ", ".join(parts)


@dataclass(frozen=True)
class ConfirmationNeeded:
    """Ask the requester before applying `plan`. Stage 2 is the second, explicit confirmation."""

    plan: ChangePlan
    stage: int = 1


@dataclass(frozen=True)
class ChangeApplied:
    """The result of a confirmed change, for the channel: who, what, when."""

    plan: ChangePlan
    actor: str
    results: tuple[ChangeResult, ...]
    at: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


@dataclass(frozen=True)
class Notice:
    """Information for the requester only (e.g. `probe skipped (--force)`)."""

    text: str


@dataclass(frozen=True)
class Problem:
    """A refusal or an error, for the requester only. Nothing was changed unless `text` says so."""

    text: str


@dataclass(frozen=True)
class Help:
    text: str


# -- releases ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleasePlanned:
    """The requester sees the plan with Start and Cancel. Stage 2: the explicit --force confirmation."""

    plan: ReleasePlan
    stage: int = 1


@dataclass(frozen=True)
class ReleaseDryRun:
    plan: ReleasePlan


@dataclass(frozen=True)
class ApprovalRequested:
    """Posted to the channel: an approver other than the requester may approve or reject."""

    plan: ReleasePlan


@dataclass(frozen=True)
class ReleaseUpdate:
    """The release moved on. `line` is what changed, for the terminal; `thread` is detail (a failing
    step's output tail) for the progress message's thread."""

    state: ReleaseState
    line: str
    thread: str | None = None


DECISION_OPTIONS: dict[str, tuple[str, ...]] = {
    "canary": ("continue", "abort"),
    # restore: start the node if it was stopped, probe it, and put it back only when healthy.
    "failure": ("retry", "restore", "leave"),
    # The restore's probe failed: putting it back needs an explicit second confirmation.
    "restore_failed": ("retry", "restore_unhealthy", "leave"),
}
# Options that put an unhealthy node back into traffic: front ends confirm them a second time
# (Slack: a button with a danger `confirm` dialog; terminal: typing "yes").
DANGEROUS_OPTIONS = frozenset({"restore_unhealthy"})


@dataclass(frozen=True)
class DecisionNeeded:
    """The release waits: after the canary (continue, abort), a failed node (retry, restore, leave),
    or a restore whose probe failed (retry, restore_unhealthy, leave). Abort is always possible
    through `/release abort`, never as a decision."""

    state: ReleaseState
    kind: str  # "canary" | "failure" | "restore_failed"
    decision_id: str
    node: ServerAddress | None = None
    reason: str = ""

    @property
    def options(self) -> tuple[str, ...]:
        return DECISION_OPTIONS[self.kind]


@dataclass(frozen=True)
class ReleaseFinished:
    state: ReleaseState


@dataclass(frozen=True)
class StepOutput:
    release_id: str
    output: OutputLine


@dataclass(frozen=True)
class ReleaseStatusReport:
    app: str
    state: ReleaseState | None
    lock: LockInfo | None
    journal: JournalEntry | None = None  # when this replica does not run it: the journal in Consul


@dataclass(frozen=True)
class AbortRequested:
    """`/release abort app` asks first; confirming calls the engine's abort."""

    app: str
    release_id: str
    requester: str
    reason: str | None = None


@dataclass(frozen=True)
class ReleaseInterrupted:
    """A release whose bot died (found by whichever replica looked first): for the channel, with Resume,
    Restore and Leave; Slack also updates the release's own progress message (`entry.progress`)."""

    entry: JournalEntry
    summary: str  # "Release app 7 (...) was interrupted at 10.0.0.5:9000 during deploy; 2 of 4 node(s) done"


@dataclass(frozen=True)
class ResumeRequested:
    """`/release resume <app> [--restore | --leave]` asks first; confirming takes the release up."""

    app: str
    release_id: str
    mode: str  # ResumeMode.value
    requester: str
    summary: str
    reason: str | None = None


@dataclass(frozen=True)
class Announcement:
    """For the whole channel (and the terminal): a change people should know of, naming who."""

    text: str


@dataclass(frozen=True)
class WatchOffRequested:
    """`/upstream watch app off` asks first; confirming calls `CommandService.set_watch`."""

    app: str
    requester: str
    reason: str | None = None


@dataclass(frozen=True)
class HistoryReport:
    app: str
    target: str | None
    entries: tuple[HistoryEntry, ...]


@dataclass(frozen=True)
class AlertsReport:
    incidents: tuple[Incident, ...]
    watching: tuple[str, ...]  # apps whose watch is on
    paused: tuple[str, ...]  # apps whose watch is off


Event = (
    StatusReport
    | ConfirmationNeeded
    | ChangeApplied
    | Notice
    | Problem
    | Help
    | ReleasePlanned
    | ReleaseDryRun
    | ApprovalRequested
    | ReleaseUpdate
    | DecisionNeeded
    | ReleaseFinished
    | StepOutput
    | ReleaseStatusReport
    | AbortRequested
    | ReleaseInterrupted
    | ResumeRequested
    | WatchEvent
    | AlertsReport
    | Announcement
    | WatchOffRequested
    | HistoryReport
)


class Notifier(Protocol):
    async def emit(self, event: Event) -> None: ...
