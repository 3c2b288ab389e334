"""Pending confirmations behind Slack buttons. A button works once: the first press claims it.

What waits: a change plan (Confirm), a release plan (Start; stage 0: its approval), a watch-off
request (Confirm). Kept in this process's memory: a press that reaches another replica, or comes after
a restart or after `TTL`, is answered "expired; run the command again", and nothing changes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from bot.slack.mrkdwn import mention
from commands.events import WatchOffRequested
from commands.plans import ChangePlan
from commands.release_plan import ReleasePlan

Subject = ChangePlan | ReleasePlan | WatchOffRequested

TTL = 15 * 60.0
APPROVAL = 0  # the stage of a release's approval


def subject_id(subject: Subject) -> str:
    # A plan has its own id (so the same question asked again is the same button); a watch-off
    # request has none, so each gets a fresh one.
    return subject.id if isinstance(subject, ChangePlan | ReleasePlan) else f"watch-{uuid.uuid4().hex[:12]}"


def title(subject: Subject) -> str:
    if isinstance(subject, WatchOffRequested):
        return f"Turn the health watch of {subject.app} OFF"
    return subject.title


@dataclass
class Pending:
    subject: Subject
    stage: int  # 1, 2 (second confirmation); APPROVAL for a release's approval
    channel: str
    created_at: float
    key: str
    used_by: str | None = None
    used_at: float | None = None
    verdict: str | None = None  # "confirmed" | "cancelled" | "started" | "approved" | "rejected"
    # The message carrying the buttons, where the bot posted it itself (an approval request): (channel, ts).
    message: tuple[str, str] | None = field(default=None)


class ClaimRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Confirmations:
    def __init__(self, ttl: float = TTL) -> None:
        self.ttl = ttl
        self._pending: dict[str, Pending] = {}

    def add(self, subject: Subject, stage: int, channel: str) -> Pending:
        self._forget_old()
        pending = Pending(subject, stage, channel, time.time(), f"{subject_id(subject)}:{stage}")
        self._pending[pending.key] = pending
        return pending

    def get(self, key: str) -> Pending | None:
        return self._pending.get(key)

    def check(self, key: str, approval: bool = False) -> Pending:
        """The pending confirmation behind `key` if it can still be claimed; raises ClaimRefused (saying
        why) when it cannot. Claims nothing. `approval`: the press is an Approve or Reject, which only
        claims a release's approval, as Confirm and Start never claim one (a button's value is whatever
        the press's payload says: an approval key sent as Start must not skip the approval)."""
        pending = self._pending.get(key)
        if pending is not None and (pending.stage == APPROVAL) != approval:
            raise ClaimRefused("This button does not answer that question; nothing was changed.")
        if pending is None:
            raise ClaimRefused(
                "This confirmation has expired or belongs to an earlier run of the bot; "
                "nothing was changed. Run the command again."
            )
        if pending.used_by is not None:
            raise ClaimRefused(
                f"Already {pending.verdict} by {mention(pending.used_by)} at "
                f"{time.strftime('%H:%M:%S UTC', time.gmtime(pending.used_at or 0))}; nothing more was done."
            )
        if time.time() - pending.created_at > self.ttl:
            raise ClaimRefused(
                f"This confirmation expired after {self.ttl / 60:.0f} minutes; nothing was changed. "
                "Run the command again to see the current state."
            )
        return pending

    def claim(self, key: str, user: str, verdict: str, approval: bool = False) -> Pending:
        """Mark the confirmation used (atomically: no await in here). Raises when it cannot be used."""
        pending = self.check(key, approval)
        pending.used_by, pending.used_at, pending.verdict = user, time.time(), verdict
        return pending

    def _forget_old(self) -> None:
        cutoff = time.time() - 4 * self.ttl  # used ones are kept a while to answer double presses
        for key in [k for k, p in self._pending.items() if p.created_at < cutoff]:
            del self._pending[key]
