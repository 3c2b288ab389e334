"""A running release's buttons: the decisions it waits for (continue, retry, restore, leave, ...) and
Abort. The service decides who may press them (`decide`, `abort_release` ask the access policy)."""

from __future__ import annotations

import json
from typing import Any

from bot.slack.blocks import text_message
from bot.slack.front import SlackFrontEnd
from bot.slack.mrkdwn import escape, mention
from bot.slack.release_messages import RESUME_CHOICES, decision_label
from commands.events import Problem


class Steering:
    def __init__(self, front: SlackFrontEnd) -> None:
        self.front = front

    async def on_decision(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.front.spawn(self._decision(body), body)

    async def _decision(self, body: dict[str, Any]) -> None:
        user, notifier = self.front.presser(body)
        if await self.front.outside(body, notifier):
            return
        value = json.loads(body["actions"][0]["value"])
        app, decision = str(value["app"]), str(value["decision"])
        work = self.front.service.decide(app, str(value["decision_id"]), decision, user, notifier)
        outcome = await self.front.guarded(work, notifier, f"a decision about the release of {app}")
        if outcome is not None and outcome.ok:
            # The option comes from the press's payload: shown escaped, whatever it says.
            await self.front.post_thread(
                notifier.channel,
                (body.get("message") or {}).get("ts"),
                f"{mention(user)} chose: {escape(decision_label(decision))}",
            )

    async def on_resume(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.front.spawn(self._resume(body), body)

    async def _resume(self, body: dict[str, Any]) -> None:
        """Resume, Restore or Leave on a release whose bot died. Pressed twice, or on two replicas at once,
        it runs once: the app's lock and the journal (read again under the lock) decide."""
        user, notifier = self.front.presser(body)
        if await self.front.outside(body, notifier):
            return
        value = json.loads(body["actions"][0]["value"])
        app, mode = str(value["app"]), str(value["mode"])
        if mode not in RESUME_CHOICES:
            return
        reason = value.get("reason")
        label = RESUME_CHOICES[mode][0]
        refusal = await self.front.service.resume_refusal(app, str(value["release_id"]), mode, user)
        if refusal:  # refused before the buttons go: someone allowed (or later) must still find them
            await notifier.emit(Problem(refusal))
            return
        text = f"{label} of the interrupted release of {escape(app)} chosen by {mention(user)}."
        await self.front.replace(body, text_message(text))  # its buttons are gone; the outcome follows
        work = self.front.service.resume_release(
            app, str(value["release_id"]), mode, user, notifier, str(reason) if reason else None
        )
        await self.front.guarded(work, notifier, f"taking up the release of {app}")

    async def on_abort(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.front.spawn(self._abort(body), body)

    async def _abort(self, body: dict[str, Any]) -> None:
        user, notifier = self.front.presser(body)
        if await self.front.outside(body, notifier):
            return
        value = json.loads(body["actions"][0]["value"])
        app = str(value["app"])
        reason = value.get("reason")  # the --reason of `/release abort`, carried by the button
        work = self.front.service.abort_release(
            app, str(value["release_id"]), user, notifier, str(reason) if reason else None
        )
        outcome = await self.front.guarded(work, notifier, f"aborting the release of {app}")
        if outcome is not None and outcome.ok:
            text = f"Abort of the release of {escape(app)} requested by {mention(user)}."
            await self.front.replace(body, text_message(text))  # the Abort button cannot be pressed again
