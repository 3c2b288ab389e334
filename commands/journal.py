"""The release journal: what a release is doing, kept in Consul (`upstream-bot/releases/<app>`) so that
any replica, and `upstream-bot run`, can say how it stands, and a bot that comes back can see what its
predecessor left. Written ahead, under the lock (the store checks the lock's session in the same
transaction): when the release starts, before each node is drained (which also records the nodes done
before it), before each of a node's phases (every step, the probe window, the restore), at every
question, and how it ended (which stays there as the app's last release). A node the journal shows
between "draining" and done may be drained and stopped, or already restored: what comes after a crash
(commands/resume.py) reads Consul for which.

A journal that says "running" while the app's lock is free was left by a bot that died: the release is
interrupted. Whoever first notices it marks the entry (`interrupted_at`, a check-and-set, so several
replicas announce it once) and tells the channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from commands.interfaces import HeldLock
from commands.release_plan import ReleasePlan
from commands.release_state import ReleaseState


@dataclass(frozen=True)
class JournalNode:
    address: str
    phase: str  # Phase.value
    drained: bool  # drained by this release and not put back
    stopped: bool
    error: str | None = None
    state_unknown: bool = False
    step: str | None = None  # the step it is in (phase "running"), or was last in
    step_deadline: float | None = None  # a step running: by when it is surely over on the node

    @property
    def label(self) -> str:
        """ "deploy..." while in a step, else the phase (as NodeState.label says it)."""
        return f"{self.step}..." if self.phase == "running" and self.step else self.phase


@dataclass(frozen=True)
class JournalEntry:
    app: str
    release_id: str
    title: str
    status: str  # Status.value
    message: str
    requester: str
    approver: str | None
    version: str | None
    started_at: float
    finished_at: float | None
    holder: str  # the bot instance that wrote it (host:pid)
    nodes: tuple[JournalNode, ...]
    plan: dict[str, Any]  # the plan as the store encodes it (what a resume rebuilds it from)
    stopping: str | None = None  # being wound down (abort, restore) when last written: no plain resume
    resumed_by: str | None = None
    progress: dict[str, str] | None = None  # where the front end shows it (Slack channel and ts)
    interrupted_at: float | None = None  # when a replica found it interrupted and told the channel
    canary_passed: bool = False
    index: int = 0  # the store's version of it when read (0: not read from the store); never written

    @property
    def running(self) -> bool:
        return self.finished_at is None

    @property
    def done(self) -> int:
        return sum(1 for n in self.nodes if n.phase == "released")

    @property
    def left_drained(self) -> list[JournalNode]:
        return [n for n in self.nodes if n.drained]

    @classmethod
    def of(cls, state: ReleaseState, holder: str, plan: dict[str, Any]) -> JournalEntry:
        nodes = tuple(
            JournalNode(
                str(n.address), n.phase.value, n.drained, n.stopped, n.error, n.state_unknown, n.step, n.step_deadline
            )
            for n in state.nodes.values()
        )
        p = state.plan
        return cls(
            p.app,
            p.id,
            p.title,
            state.status.value,
            state.message,
            p.requester,
            state.approver,
            p.version,
            state.started_at,
            state.finished_at,
            holder,
            nodes,
            plan,
            state.stopping,
            state.resumed_by,
            state.progress,
            canary_passed=state.canary_passed,
        )


class Journal(Protocol):
    async def write(self, state: ReleaseState, held: HeldLock | None, first: bool = False) -> None:
        """Record `state` before the engine acts on it. Raises StoreError when it cannot: the engine then
        does not act (nothing happens that the journal does not know of). `first`: an engine's first
        write, over whatever the key holds now (the lock is held: only a release's own bot writes it,
        besides the mark of an interruption); later writes check-and-set on the one before."""
        ...

    async def read(self, app: str, strict: bool = False) -> JournalEntry | None:
        """The app's running or last release; None when it never had one, or it cannot be read (`strict`:
        Consul not answering raises StoreError; an entry that does not parse is still None)."""
        ...

    def plan_of(self, entry: JournalEntry) -> ReleasePlan:
        """The release's plan, as the entry keeps it (what a resume continues)."""
        ...

    async def request_abort(self, app: str, release_id: str, by: str) -> None:
        """Ask the replica running `release_id` to abort it (`/release abort` on another replica)."""
        ...

    async def abort_requested(self, app: str, release_id: str) -> str | None:
        """Who asked to abort `release_id` (from any replica), or None."""
        ...

    async def clear_abort(self, app: str, release_id: str) -> None:
        """Forget an abort asked for `release_id` (it ended, or is taken up afresh after its bot died)."""
        ...

    async def mark_interrupted(self, entry: JournalEntry, at: float) -> bool:
        """Mark `entry` (as read) interrupted, unless it changed since: True for the one replica that did
        (it tells the channel); False when another did first, or the release moved on."""
        ...
