"""Pending confirmations behind Slack buttons. A button works once: the first press claims it.

Kept in this process's memory: a press that reaches another replica, or comes after a restart or
after `TTL`, is answered "expired; run the command again", and nothing changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from commands.plans import ChangePlan
from commands.release_plan import ReleasePlan

Plan = ChangePlan | ReleasePlan

TTL = 15 * 60.0


@dataclass
class Pending:
    plan: Plan
    stage: int  # 1, 2 (second confirmation); 0 for a release's approval
    channel: str
    created_at: float
    used_by: str | None = None
    used_at: float | None = None
    verdict: str | None = None  # "confirmed" | "cancelled"

    @property
    def key(self) -> str:
        return f"{self.plan.id}:{self.stage}"


class ClaimRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Confirmations:
    def __init__(self, ttl: float = TTL) -> None:
        self.ttl = ttl
        self._pending: dict[str, Pending] = {}

    def add(self, plan: Plan, stage: int, channel: str) -> Pending:
        self._forget_old()
        pending = Pending(plan, stage, channel, time.time())
        self._pending[pending.key] = pending
        return pending

    def get(self, key: str) -> Pending | None:
        return self._pending.get(key)

    def apps(self, key: str) -> list[str]:
        pending = self._pending.get(key)
        if pending is None:
            return []
        if isinstance(pending.plan, ReleasePlan):
            return [pending.plan.app]
        return list(dict.fromkeys(c.app for c in pending.plan.changes))

    def claim(self, key: str, user: str, verdict: str) -> Pending:
        """Mark the confirmation used (atomically: no await in here). Raises when it cannot be used."""
        pending = self._pending.get(key)
        if pending is None:
            raise ClaimRefused(
                "This confirmation has expired or belongs to an earlier run of the bot; "
                "nothing was changed. Run the command again."
            )
        if pending.used_by is not None:
            raise ClaimRefused(
                f"Already {pending.verdict} by <@{pending.used_by}> at "
                f"{time.strftime('%H:%M:%S UTC', time.gmtime(pending.used_at or 0))}; nothing more was done."
            )
        if time.time() - pending.created_at > self.ttl:
            raise ClaimRefused(
                f"This confirmation expired after {self.ttl / 60:.0f} minutes; nothing was changed. "
                "Run the command again to see the current state."
            )
        pending.used_by, pending.used_at, pending.verdict = user, time.time(), verdict
        return pending

    def _forget_old(self) -> None:
        cutoff = time.time() - 4 * self.ttl  # used ones are kept a while to answer double presses
        for key in [k for k, p in self._pending.items() if p.created_at < cutoff]:
            del self._pending[key]
