"""The audit history: one entry per change the bot makes or is asked to make.

An entry says when, who (Slack user ID or `local:<user>`), where (channel ID, `terminal`, `ci`), what
(`drain`, `release.start`, `approve`, `watch.off`, ...), on which target (`ip:port` or a release id),
the KV value before and after where a key changed, the reason given, and whether `--force` was used.
The store keeps them per app under `upstream-bot/history/<app>/` (bounded) and echoes each as one JSON
line for log shippers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


def iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


@dataclass(frozen=True)
class Actor:
    """Who acts, and from where: a Slack user in a channel, or the local user at a terminal or in CI."""

    who: str
    where: str = "terminal"


@dataclass(frozen=True)
class HistoryEntry:
    app: str
    what: str
    who: str
    where: str
    target: str = ""
    at: str = field(default_factory=lambda: iso(time.time()))
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    reason: str | None = None
    force: bool = False
    outcome: str | None = None  # what came of it: "drained", "refused: ...", "failed: ..."

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HistoryEntry:
        """An entry read back from Consul (anyone with KV access could have written it): every field is
        checked; ValueError when one is not what it should be."""
        if not isinstance(data, dict):
            raise ValueError("a history entry is a JSON object")
        text = ("app", "what", "who", "where", "target", "at")
        for name in text:
            if name in data and not isinstance(data[name], str):
                raise ValueError(f"history field {name} is not text")
        for name in ("before", "after"):
            if data.get(name) is not None and not isinstance(data[name], dict):
                raise ValueError(f"history field {name} is not an object")
        for name in ("reason", "outcome"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ValueError(f"history field {name} is not text")
        if not isinstance(data.get("force", False), bool):
            raise ValueError("history field force is not true or false")
        if not all(isinstance(data.get(n), str) for n in ("app", "what", "who", "where")):
            raise ValueError("a history entry needs app, what, who and where")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class History(Protocol):
    async def record(self, entry: HistoryEntry) -> None:
        """Keep `entry`. Never raises: a history that cannot be written is logged, not a reason to stop
        a release half-way (the JSON line on stdout is written first, so the log keeps it anyway)."""
        ...

    async def entries(self, app: str, target: str | None = None, limit: int = 20) -> list[HistoryEntry]:
        """The newest entries of `app` first (only `target`'s when given)."""
        ...


class NoHistory:
    """For callers that keep none (a few unit tests)."""

    async def record(self, entry: HistoryEntry) -> None:
        return None

    async def entries(self, app: str, target: str | None = None, limit: int = 20) -> list[HistoryEntry]:
        return []


class MemoryHistory:
    """History in memory (engine tests with fakes)."""

    def __init__(self) -> None:
        self.kept: list[HistoryEntry] = []

    async def record(self, entry: HistoryEntry) -> None:
        self.kept.append(entry)

    async def entries(self, app: str, target: str | None = None, limit: int = 20) -> list[HistoryEntry]:
        found = [e for e in reversed(self.kept) if e.app == app and (target is None or e.target == target)]
        return found[:limit]

    def whats(self) -> list[str]:
        return [e.what for e in self.kept]


def where_of(notifier: object) -> str:
    """Where a request came from: the notifier's `where` (terminal, ci) or its Slack channel."""
    return str(getattr(notifier, "where", None) or getattr(notifier, "channel", None) or "terminal")
