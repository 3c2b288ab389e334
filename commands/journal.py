"""The release journal: what a release is doing, kept in Consul (`upstream-bot/releases/<app>`) so that
any replica, and `upstream-bot run`, can say how it stands, and a bot that comes back can see what its
predecessor left. Written ahead, under the lock (the store checks the lock's session in the same
transaction): when the release starts, before each node is drained (which also records the nodes done
before it), at every question, and how it ended (which stays there as the app's last release). A node
the journal shows between "draining" and done may be drained and stopped, or already restored: what
comes after a crash reads Consul for which, and treats the node as one to run again from its stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from commands.interfaces import HeldLock
from commands.release_state import ReleaseState


@dataclass(frozen=True)
class JournalNode:
    address: str
    phase: str  # Phase.value
    drained: bool  # drained by this release and not put back
    stopped: bool
    error: str | None = None
    state_unknown: bool = False


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

    @property
    def running(self) -> bool:
        return self.finished_at is None

    @property
    def left_drained(self) -> list[JournalNode]:
        return [n for n in self.nodes if n.drained]

    @classmethod
    def of(cls, state: ReleaseState, holder: str, plan: dict[str, Any]) -> JournalEntry:
        nodes = tuple(
            JournalNode(str(n.address), n.phase.value, n.drained, n.stopped, n.error, n.state_unknown)
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
        )


class Journal(Protocol):
    async def write(self, state: ReleaseState, held: HeldLock | None) -> None:
        """Record `state` before the engine acts on it. Raises StoreError when it cannot: the engine then
        does not act (nothing happens that the journal does not know of)."""
        ...

    async def read(self, app: str) -> JournalEntry | None:
        """The app's running or last release; None when it never had one (or it cannot be read)."""
        ...
