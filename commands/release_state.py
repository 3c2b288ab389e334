"""What a release is doing, node by node: the state the engine moves and both front ends show."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from commands.addresses import ServerAddress
from commands.release_plan import ReleasePlan
from commands.steps import StepResult

NOT_RELEASED = "not released"  # the step noted with a restore that puts back a node it did not release


class Phase(enum.Enum):
    WAITING = "waiting"
    DRAINING = "draining"
    DRAIN_WAIT = "waiting for traffic to leave"
    STEP = "running"
    PROBING = "probing"
    RESTORING = "restoring"
    ROUTE_WAIT = "waiting for nginx to route to it"
    DONE = "released"
    FAILED = "failed"
    LEFT_DRAINED = "left drained"
    RESTORED_UNRELEASED = "restored (not released)"
    SKIPPED = "skipped (drained by someone else; left drained)"
    NOT_REACHED = "not reached"


class Status(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"  # canary done, or a failure waiting for a decision
    SUCCEEDED = "succeeded"
    INCOMPLETE = "incomplete"  # every node it touched was released; some were skipped (drained by others)
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in (Status.SUCCEEDED, Status.INCOMPLETE, Status.FAILED, Status.ABORTED)


@dataclass
class NodeState:
    address: ServerAddress
    phase: Phase = Phase.WAITING
    step: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    durations: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    drained: bool = False  # drained by this release and not restored yet
    # nginx was seen to stop routing to it and the drain wait passed since it was drained: only then may
    # it be stopped (a retry, or a resume of a node its dead bot drained, waits again otherwise)
    out_of_traffic: bool = False
    # Found drained after a crash with only "draining" journalled: this release's drain or someone else's?
    # Left drained and untouched, and never counted as fine.
    owner_unknown: bool = False
    stopped: bool = False  # its stop step ran and its start step has not succeeded since
    state_unknown: bool = False  # a write's answer was lost and Consul could not be read back
    # While a step runs: the wall-clock time by which it is surely over on the node (its timeout, the
    # node's kill grace). A bot taking the release up after a crash does not start the node's steps again
    # before it: the dead bot's step may still be running there.
    step_deadline: float | None = None
    results: list[StepResult] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.phase is Phase.STEP and self.step:
            return f"{self.step}..."
        return self.phase.value


@dataclass
class ReleaseState:
    plan: ReleasePlan
    nodes: dict[ServerAddress, NodeState]
    status: Status = Status.STARTING
    started_at: float = 0.0
    finished_at: float | None = None
    approver: str | None = None
    message: str = ""  # the latest headline: why it stopped, what it waits for
    aborted_by: str | None = None
    # Set once the release is being wound down (an abort, a "restore" answer): a resume after a crash then
    # only restores, never continues what a person stopped.
    stopping: str | None = None
    resumed_by: str | None = None  # who continued it after its bot died
    canary_passed: bool = False  # someone answered "continue" after the canary
    # Where a front end shows its progress (Slack: {"channel": ..., "ts": ...}); kept in the journal so a
    # bot that takes over after a crash updates the same message.
    progress: dict[str, str] | None = None
    version: int = 0  # bumped on every change, so front ends can skip identical renders

    @classmethod
    def new(cls, plan: ReleasePlan, now: float, approver: str | None = None) -> ReleaseState:
        return cls(plan, {a: NodeState(a) for a in plan.nodes}, started_at=now, approver=approver)

    def elapsed(self, now: float) -> float:
        return (self.finished_at or now) - self.started_at

    @property
    def left_drained(self) -> list[NodeState]:
        """Nodes this release drained and did not put back (what a person must look at)."""
        return [n for n in self.nodes.values() if n.drained]

    @property
    def unsure(self) -> list[NodeState]:
        """Nodes left drained whose drain may have been this release's (see NodeState.owner_unknown)."""
        return [n for n in self.nodes.values() if n.owner_unknown]

    @property
    def released(self) -> int:
        return sum(1 for n in self.nodes.values() if n.phase is Phase.DONE)
