"""Pending confirmations behind Slack buttons. A button works once: the first press claims it.

What waits: a change plan (Confirm), a release plan (Start; stage 0: its approval), a watch-off
request (Confirm). With a `PendingKV` (the bot's Consul) they are kept in Consul KV
(`upstream-bot/pending/<id>:<stage>`, see bot/consul/pending.py), so a press that reaches any replica,
or comes after a restart, finds them; the first press claims one with a check-and-set. Without one
(tests of the handlers) they are kept in this process's memory. After `TTL` a press is answered
"expired; run the command again", and nothing changes. When Consul cannot be asked, the press is
refused and nothing changes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from bot.consul.pending import PendingKV, valid_key
from bot.slack.mrkdwn import mention
from commands.errors import StoreError
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


EXPIRED_OR_UNKNOWN = (
    "This confirmation has expired or belongs to an earlier run of the bot; nothing was changed. Run the command again."
)


def _refusal(pending: Pending | None, approval: bool, ttl: float, now: float) -> str | None:
    """Why `pending` cannot be claimed by this press, or None when it can."""
    if pending is not None and (pending.stage == APPROVAL) != approval:
        return "This button does not answer that question; nothing was changed."
    if pending is None:
        return EXPIRED_OR_UNKNOWN
    if pending.used_by is not None:
        return (
            f"Already {pending.verdict} by {mention(pending.used_by)} at "
            f"{time.strftime('%H:%M:%S UTC', time.gmtime(pending.used_at or 0))}; nothing more was done."
        )
    if now - pending.created_at > ttl:
        return (
            f"This confirmation expired after {ttl / 60:.0f} minutes; nothing was changed. "
            "Run the command again to see the current state."
        )
    return None


def _unreachable(error: StoreError) -> ClaimRefused:
    return ClaimRefused(
        f"Cannot check this button: Consul did not answer ({error}). Nothing was changed; press again in a moment."
    )


class Confirmations:
    def __init__(self, ttl: float = TTL, kv: PendingKV | None = None) -> None:
        self.ttl = ttl
        self.kv = kv
        self._pending: dict[str, Pending] = {}

    async def add(self, subject: Subject, stage: int, channel: str) -> Pending:
        """Keep a new pending confirmation. Raises StoreError when Consul cannot keep it."""
        now = time.time()
        pending = Pending(subject, stage, channel, now, f"{subject_id(subject)}:{stage}")
        if self.kv is None:
            self._forget_old()
            self._pending[pending.key] = pending
            return pending
        await self.kv.write(pending.key, self._record(pending))
        try:
            await self.kv.prune(now - 4 * self.ttl)  # used ones are kept a while to answer double presses
        except StoreError:
            pass  # pruning waits for the next one
        return pending

    async def remember_message(self, pending: Pending, channel: str, ts: str) -> None:
        """The message carrying the buttons (an approval request the bot posted), kept with it."""
        pending.message = (channel, ts)
        if self.kv is None:
            return
        try:
            stored, index = await self.kv.read(pending.key)
            if stored is not None and stored["used_by"] is None:
                await self.kv.swap(pending.key, {**stored, "message": [channel, ts]}, index)
        except StoreError:
            pass  # without it, the verdict edits the pressed message instead

    def get(self, key: str) -> Pending | None:
        return self._pending.get(key)

    async def check(self, key: str, approval: bool = False) -> Pending:
        """The pending confirmation behind `key` if it can still be claimed; raises ClaimRefused (saying
        why) when it cannot. Claims nothing. `approval`: the press is an Approve or Reject, which only
        claims a release's approval, as Confirm and Start never claim one (a button's value is whatever
        the press's payload says: an approval key sent as Start must not skip the approval)."""
        pending, _index = await self._read(key)
        refusal = _refusal(pending, approval, self.ttl, time.time())
        if refusal:
            raise ClaimRefused(refusal)
        assert pending is not None
        return pending

    async def claim(self, key: str, user: str, verdict: str, approval: bool = False) -> Pending:
        """Mark the confirmation used, once whichever replica is pressed: in memory without an await,
        in Consul with a check-and-set on the entry's ModifyIndex. Raises ClaimRefused when it cannot."""
        pending, index = await self._read(key)
        now = time.time()
        refusal = _refusal(pending, approval, self.ttl, now)
        if refusal:
            if self.kv is not None and pending is not None and pending.used_by is None and index:
                try:  # expired: pruned now rather than later
                    await self.kv.delete(key, index)
                except StoreError:
                    pass
            raise ClaimRefused(refusal)
        assert pending is not None
        pending.used_by, pending.used_at, pending.verdict = user, now, verdict
        if self.kv is None:
            return pending
        try:
            won = await self.kv.swap(key, self._record(pending), index)
        except StoreError as error:
            raise ClaimRefused(
                f"Cannot claim this button: Consul did not answer ({error}). Nothing was done; "
                "check with /upstream status (or /release status) and run the command again if needed."
            ) from None
        if not won:  # another press (a double click, a retry, another replica) was first
            latest, _ = await self._read(key)
            raise ClaimRefused(_refusal(latest, approval, self.ttl, now) or EXPIRED_OR_UNKNOWN)
        return pending

    async def _read(self, key: str) -> tuple[Pending | None, int]:
        if self.kv is None:
            return self._pending.get(key), 0
        if not valid_key(key):
            return None, 0
        try:
            stored, index = await self.kv.read(key)
        except StoreError as error:
            raise _unreachable(error) from None
        if stored is None:
            return None, 0
        message = stored["message"]
        pending = Pending(
            stored["subject"], stored["stage"], stored["channel"], stored["created_at"], key,
            stored["used_by"], stored["used_at"], stored["verdict"], message,
        )  # fmt: skip
        return pending, index

    def _record(self, pending: Pending) -> dict[str, object]:
        return {
            "subject": pending.subject,
            "stage": pending.stage,
            "channel": pending.channel,
            "requester": pending.subject.requester,
            "created_at": pending.created_at,
            "expires_at": pending.created_at + self.ttl,
            "used_by": pending.used_by,
            "used_at": pending.used_at,
            "verdict": pending.verdict,
            "message": list(pending.message) if pending.message else None,
        }

    def _forget_old(self) -> None:
        cutoff = time.time() - 4 * self.ttl  # used ones are kept a while to answer double presses
        for key in [k for k, p in self._pending.items() if p.created_at < cutoff]:
            del self._pending[key]
