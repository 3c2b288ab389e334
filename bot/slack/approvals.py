"""Approve / Reject under a release's approval request (posted in the channel, so anyone can press).

Approve: the service is asked whether this person may approve (`approval_refusal`: an approver, never
the requester) before the button is claimed, so a refused press does not use it up; then
`approve_release`, which asks again as it acts and starts the release.

Reject: the policy's `rejection_refusal` is asked at the press; a modal then asks why. The rejection
is the modal's submission: asked again, claimed, the request edited to say who rejected it and why,
and `reject_release` records it with the reason (None when the field was left empty). Closing the
modal rejects nothing: the request stays open, as if Reject had not been pressed. Only when the modal
cannot be opened at all (Slack refused `views.open`) is the release rejected at once, without a
reason, so a rejection never depends on the modal.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from bot.slack.calls import slack_call
from bot.slack.front import SlackFrontEnd
from bot.slack.mrkdwn import escape, mention
from bot.slack.notifier import SlackNotifier
from bot.slack.pending import ClaimRefused, Pending
from bot.slack.release_messages import approval_verdict
from commands.events import Notice, Problem
from commands.grammar import REASON_CHARS
from commands.grammar import clean_reason as clean_reason_text
from commands.release_plan import ReleasePlan

REJECT_VIEW = "release_reject_reason"


def clean_reason(raw: str | None) -> str | None:
    """A reason typed in the modal, held to the rules of `--reason`; None when empty."""
    return clean_reason_text(raw)[:REASON_CHARS] or None


class Approvals:
    def __init__(self, front: SlackFrontEnd) -> None:
        self.front = front

    async def _open(
        self, key: str, notifier: SlackNotifier, refusal: Callable[[ReleasePlan], Awaitable[str | None]]
    ) -> tuple[Pending, ReleasePlan] | None:
        """The approval request `key` still waits and `refusal` finds nothing against the presser: the
        request and its plan. Otherwise the presser is told why, and None (nothing is used up)."""
        try:
            pending = await self.front.pending.check(key, approval=True)
        except ClaimRefused as refused:
            await notifier.emit(Notice(refused.message))
            return None
        assert isinstance(pending.subject, ReleasePlan)  # only a release plan waits for an approval
        why = await refusal(pending.subject)
        if why:
            await notifier.emit(Problem(why))
            return None
        return pending, pending.subject

    async def _claim(self, key: str, user: str, verdict: str, notifier: SlackNotifier) -> bool:
        """The first press takes the request (check-and-set in Consul); a later one is told who did."""
        try:
            await self.front.pending.claim(key, user, verdict, approval=True)
        except ClaimRefused as refused:
            await notifier.emit(Notice(refused.message))
            return False
        return True

    def _rejection_refusal(self, user: str) -> Callable[[ReleasePlan], Awaitable[str | None]]:
        return lambda plan: self.front.service.policy.rejection_refusal(user, plan.app, plan.requester)

    # -- approve ----------------------------------------------------------------------------------

    async def on_approve(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.front.spawn(self._approve(body), body)

    async def _approve(self, body: dict[str, Any]) -> None:
        user, notifier = self.front.presser(body)
        if await self.front.outside(body, notifier):
            return
        key = str(body["actions"][0].get("value", ""))
        opened = await self._open(key, notifier, lambda plan: self.front.service.approval_refusal(plan, user))
        if opened is None or not await self._claim(key, user, "approved", notifier):
            return
        pending, plan = opened
        await self._show_verdict(pending, body, "approved", user)
        await self.front.guarded(self.front.service.approve_release(plan, user, notifier), notifier, plan.title)

    # -- reject -----------------------------------------------------------------------------------

    async def on_reject(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.front.spawn(self._ask_reason(body), body)

    async def _ask_reason(self, body: dict[str, Any]) -> None:
        user, notifier = self.front.presser(body)
        if await self.front.outside(body, notifier):
            return
        key = str(body["actions"][0].get("value", ""))
        opened = await self._open(key, notifier, self._rejection_refusal(user))
        if opened is None:
            return
        pending, plan = opened
        ts = pending.message[1] if pending.message else _message_ts(body)
        meta = {"key": key, "channel": notifier.channel, "ts": ts}
        trigger = body.get("trigger_id")
        opened = None
        if trigger:
            call = self.front.client.views_open(trigger_id=trigger, view=_reject_view(plan, meta))
            opened = await slack_call("views.open", notifier.channel, call)
        if opened is None:
            await self._reject(key, user, None, notifier, body)

    async def on_reject_submitted(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()  # closes the modal; the rejection is said in the channel
        self.front.spawn(self._submitted(body), body)

    async def _submitted(self, body: dict[str, Any]) -> None:
        view = body.get("view") or {}
        meta = json.loads(view.get("private_metadata") or "{}")
        values = (view.get("state") or {}).get("values") or {}
        reason = clean_reason(((values.get("reason") or {}).get("text") or {}).get("value"))
        user = body["user"]["id"]
        notifier = self.front.notifier(str(meta.get("channel") or ""), user)
        await self._reject(str(meta.get("key") or ""), user, reason, notifier, None)

    async def _reject(
        self, key: str, user: str, reason: str | None, notifier: SlackNotifier, body: dict[str, Any] | None
    ) -> None:
        # Asked again: the modal may have stayed open while this person left the approvers' group.
        opened = await self._open(key, notifier, self._rejection_refusal(user))
        if opened is None or not await self._claim(key, user, "rejected", notifier):
            return
        pending, plan = opened
        await self._show_verdict(pending, body, "rejected", user, reason)
        await self.front.guarded(
            self.front.service.reject_release(plan, user, reason, notifier), notifier, f"rejecting {plan.title}"
        )

    async def _show_verdict(
        self, pending: Pending, body: dict[str, Any] | None, verdict: str, user: str, reason: str | None = None
    ) -> None:
        """The request's buttons give way to who decided (and why), so it cannot be pressed again."""
        assert isinstance(pending.subject, ReleasePlan)
        where = pending.message
        if where is None and body is not None:
            ts = _message_ts(body)
            channel = (body.get("channel") or {}).get("id") or pending.channel
            where = (channel, ts) if ts else None
        if where is not None:
            await self.front.update(where[0], where[1], approval_verdict(pending.subject, verdict, user, reason))


def _message_ts(body: dict[str, Any]) -> str | None:
    return body.get("container", {}).get("message_ts") or (body.get("message") or {}).get("ts")


def _reject_view(plan: ReleasePlan, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": REJECT_VIEW,
        "private_metadata": json.dumps(meta),
        "title": {"type": "plain_text", "text": "Reject the release"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Back"},
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"Reject *{escape(plan.title)}*, asked by {mention(plan.requester)}? It will not start."[
                        :3000
                    ],
                },
            },
            {
                "type": "input",
                "block_id": "reason",
                "optional": True,
                "label": {"type": "plain_text", "text": "Why (recorded in the history)"},
                "element": {"type": "plain_text_input", "action_id": "text", "max_length": REASON_CHARS},
            },
        ],
    }
