"""Planned changes to Consul and how they are applied: check-and-set, guards re-checked at write time."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from commands.addresses import ServerAddress
from commands.quoting import quoted
from commands.servers import DEFAULTS, ServerEntry, Upstream

CAS_ATTEMPTS = 3  # a rewrite with unchanged content is retried this often; a real change is reported


@dataclass(frozen=True)
class KeyChange:
    """One entry to write (or create, or delete) in one app's upstream."""

    app: str
    upstream: str
    address: ServerAddress
    before: ServerEntry | None  # None: the entry is created
    after: dict[str, Any] | None  # None: the entry is deleted
    serving_after: int
    total_after: int

    @property
    def impact(self) -> str:
        added = f"added with weight {self.after.get('weight')}; " if self.before is None and self.after else ""
        return f"{self.app}: {added}{self.serving_after} of {self.total_after} will be serving"


@dataclass(frozen=True)
class ChangePlan:
    """What a command will change once confirmed. Built from one read of Consul."""

    action: str  # "drain" | "undrain" | "add" | "remove"
    address: ServerAddress
    requester: str
    changes: tuple[KeyChange, ...]
    force: bool = False
    warnings: tuple[str, ...] = ()
    needs_second_confirmation: bool = False
    # Probe the server before writing (undrain, add) unless forced.
    probe_first: bool = False
    reason: str | None = None  # --reason, recorded in the history and shown in the channel
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def title(self) -> str:
        apps = ", ".join(c.app for c in self.changes)
        verb = {"drain": "Drain", "undrain": "Undrain", "add": "Add", "remove": "Remove"}[self.action]
        where = "to" if self.action == "add" else "from" if self.action == "remove" else "in"
        return f"{verb} {self.address} {where} {apps}"

    @property
    def impact(self) -> tuple[str, ...]:
        return tuple(c.impact for c in self.changes)


@dataclass(frozen=True)
class ChangeResult:
    change: KeyChange
    ok: bool
    detail: str  # "drained", "already drained", "changed since you asked: down 0 -> 1", ...


def describe_difference(before: dict[str, Any] | None, now: dict[str, Any] | None) -> str:
    """A short account of how an entry changed, e.g. `down 0 -> 1, weight 1 -> 3`."""
    if before is None and now is None:
        return "nothing"
    if before is None:
        return "it was created by someone else"
    if now is None:
        return "it was deleted"
    parts = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key, "unset"), now.get(key, "unset")
        if old != new:
            # Values anyone with KV access wrote: quoted, never markup in the bot's answer.
            parts.append(f"{quoted(key)} {quoted(old)} -> {quoted(new)}")
    return ", ".join(parts) or "rewritten with the same value"


def serving_after(upstream: Upstream, address: ServerAddress, down: bool | None) -> tuple[int, int]:
    """(serving, total) once `address` is set to `down` (None: removed)."""
    serving, total = 0, 0
    for server in upstream.servers:
        if server.address == address:
            if down is None:
                continue
            total += 1
            serving += 0 if down else 1
        else:
            total += 1
            serving += 0 if server.drained else 1
    if upstream.find(address) is None and down is not None:
        total += 1
        serving += 0 if down else 1
    return serving, total


def new_entry_fields(weight: int) -> dict[str, Any]:
    return {**DEFAULTS, "weight": weight}
