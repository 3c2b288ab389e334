"""An alert's buttons: Drain it (exactly `/drain <node> <app>` by whoever pressed: the same question,
guard and access check), Silence 1 h and Acknowledge (`CommandService.mark_incident`, operators only).
A grouped alert's Silence all 1 h and Acknowledge all are the same two actions, their value naming the
group instead of an incident (`CommandService.mark_group`: every open incident of the group, the same
access check). The answer goes in the alert's thread."""

from __future__ import annotations

import json
import time
from typing import Any

from bot.slack.alert_messages import (
    acknowledged_text,
    group_acknowledged_text,
    group_silenced_text,
    silenced_text,
)
from bot.slack.front import SlackFrontEnd
from bot.slack.mrkdwn import mention
from bot.slack.notifier import SlackNotifier
from commands.errors import UserError
from commands.events import Notice, Problem
from commands.grammar import parse

SILENCE = 3600.0  # the alert's "Silence 1 h"


class AlertButtons:
    def __init__(self, front: SlackFrontEnd) -> None:
        self.front = front

    async def on_drain(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.front.spawn(self._drain(body), body)

    async def _drain(self, body: dict[str, Any]) -> None:
        user, notifier = self.front.presser(body)
        if await self.front.outside(body, notifier):
            return
        value = json.loads(body["actions"][0]["value"])
        try:
            # Parsed like typed text: the payload is the presser's, the grammar validates it.
            request = parse("/drain", f"{value['address']} {value['app']}")
        except UserError as error:
            await notifier.emit(Problem(error.message))
            return
        await self.front.guarded(self.front.service.handle(request, user, notifier), notifier, "drain from an alert")

    async def on_silence(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.front.spawn(self._mark(body, "silence"), body)

    async def on_acknowledge(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.front.spawn(self._mark(body, "acknowledge"), body)

    async def _mark(self, body: dict[str, Any], what: str) -> None:
        user, notifier = self.front.presser(body)
        if await self.front.outside(body, notifier):
            return
        value = json.loads(body["actions"][0]["value"])
        until = time.time() + SILENCE
        try:
            if "group" in value:
                text = await self._mark_group(str(value["app"]), str(value["group"]), what, user, until, notifier)
            else:
                text = await self._mark_one(str(value["app"]), str(value["incident"]), what, user, until, notifier)
        except UserError as error:  # refused by the access policy: nothing was marked
            await notifier.emit(Problem(error.message))
            return
        if text is None:
            return
        ts = (body.get("message") or {}).get("ts") or body.get("container", {}).get("message_ts")
        await self.front.post_thread(notifier.channel or self.front.channel or "", ts, text)

    async def _mark_one(
        self, app: str, incident_id: str, what: str, user: str, until: float, notifier: SlackNotifier
    ) -> str | None:
        marked = await self.front.service.mark_incident(app, incident_id, what, user, until, notifier)
        if marked is None:
            await notifier.emit(Notice("That incident is already resolved."))
            return None
        incident, now = marked
        if not now:  # a double-click, or a second person: said to the presser only, not to the thread
            await notifier.emit(Notice(f"Already acknowledged by {mention(incident.acknowledged_by or '')}."))
            return None
        return silenced_text(user, incident, until) if what == "silence" else acknowledged_text(incident)

    async def _mark_group(
        self, app: str, group: str, what: str, user: str, until: float, notifier: SlackNotifier
    ) -> str | None:
        marked = await self.front.service.mark_group(app, group, what, user, until, notifier)
        if not marked:
            already = "resolved" if what == "silence" else "resolved or acknowledged"
            await notifier.emit(Notice(f"Every incident of that alert is already {already}."))
            return None
        return group_silenced_text(user, marked, until) if what == "silence" else group_acknowledged_text(user, marked)
