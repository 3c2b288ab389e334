"""Confirm / Start / Cancel under a question (a change, a release, turning the watch off).

A press is checked against the access policy before it claims the button, so a refused press neither
uses the button up nor shows a verdict; then it is claimed once (a double click or a Slack retry is
answered "already confirmed"), the buttons are replaced by the verdict, and the service method is
called, which asks the policy again at the moment it acts and answers with a Problem when refused."""

from __future__ import annotations

from typing import Any

from bot.slack.change_messages import verdict_message
from bot.slack.front import SlackFrontEnd
from bot.slack.notifier import SlackNotifier
from bot.slack.pending import ClaimRefused, Pending, title
from commands.events import Notice, Problem, WatchOffRequested
from commands.plans import ChangePlan
from commands.release_plan import ReleasePlan
from commands.service import Outcome


class Presses:
    def __init__(self, front: SlackFrontEnd) -> None:
        self.front = front

    async def on_confirm(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.front.spawn(self._press(body, confirmed=True), body)

    async def on_cancel(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.front.spawn(self._press(body, confirmed=False), body)

    async def _press(self, body: dict[str, Any], confirmed: bool) -> None:
        user, notifier = self.front.presser(body)
        if await self.front.outside(body, notifier):
            return
        key = str(body["actions"][0].get("value", ""))
        try:
            pending = await self.front.pending.check(key)
        except ClaimRefused as refused:
            await notifier.emit(Notice(refused.message))
            return
        refusal = await self.front.service.press_refusal(pending.subject, user)
        if refusal:
            await notifier.emit(Problem(refusal))
            return
        verdict = ("started" if isinstance(pending.subject, ReleasePlan) else "confirmed") if confirmed else "cancelled"
        try:
            pending = await self.front.pending.claim(key, user, verdict)
        except ClaimRefused as refused:  # someone (or a double click) was faster since the check
            await notifier.emit(Notice(refused.message))
            return
        await self.front.replace(body, verdict_message(title(pending.subject), verdict, user))
        if confirmed:
            await self.front.guarded(self._act(pending, user, notifier), notifier, title(pending.subject))

    async def _act(self, pending: Pending, user: str, notifier: SlackNotifier) -> Outcome:
        service, subject = self.front.service, pending.subject
        if isinstance(subject, ChangePlan):
            return await service.confirm(subject, pending.stage, user, notifier)
        if isinstance(subject, ReleasePlan):
            return await service.start_release(subject, pending.stage, user, notifier)
        assert isinstance(subject, WatchOffRequested)
        return await service.set_watch(subject.app, False, user, subject.reason, notifier)
