"""Slash commands (`/upstream`, `/drain`, `/undrain`, `/release`) and the status pages' buttons.

A command is taken only in the allowed channels (`slack.channels`): that check needs no I/O, so its
refusal is the acknowledgement itself, ephemeral, and nothing else happens (no task, no Consul read,
no history entry). Otherwise: acknowledge, then parse and hand the request to the command service,
which asks the access policy itself."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from typing import Any

from bot.metrics import COMMANDS
from bot.slack.front import SlackFrontEnd
from bot.slack.mrkdwn import own
from bot.slack.status_messages import status_message
from commands.errors import UserError
from commands.events import Problem
from commands.grammar import parse
from commands.requests import StatusRequest

log = logging.getLogger(__name__)
SEEN_TRIGGERS = 2000  # slash-command trigger_ids remembered to ignore Slack's retries


class SlashCommands:
    def __init__(self, front: SlackFrontEnd) -> None:
        self.front = front
        self._seen: OrderedDict[str, float] = OrderedDict()

    async def on_command(self, ack: Any, command: dict[str, Any]) -> None:
        refusal = self.front.service.policy.channel_refusal(command.get("channel_id", ""))
        if refusal:
            await ack(text=own(refusal), response_type="ephemeral")
            return
        await ack()  # before any other I/O: Slack gives up after 3 s
        if not self._first_time(command.get("trigger_id")):
            log.info("ignoring a retry of %s %s", command.get("command"), command.get("trigger_id"))
            return
        self.front.spawn(self._command(command), command)

    def _first_time(self, trigger_id: str | None) -> bool:
        if not trigger_id:
            return True
        if trigger_id in self._seen:
            return False
        self._seen[trigger_id] = time.time()
        while len(self._seen) > SEEN_TRIGGERS:
            self._seen.popitem(last=False)
        return True

    async def _command(self, command: dict[str, Any]) -> None:
        user = command["user_id"]  # the Slack user ID: never the user name, which anyone can change
        notifier = self.front.notifier(command["channel_id"], user, command.get("response_url"))
        try:
            request = parse(command["command"], command.get("text", ""))
        except UserError as error:
            COMMANDS.labels(command["command"], "usage").inc()
            await notifier.emit(Problem(error.message))
            return
        outcome = await self.front.guarded(
            self.front.service.handle(request, user, notifier), notifier, command["command"]
        )
        COMMANDS.labels(command["command"], getattr(outcome, "value", "failed")).inc()

    async def on_status_page(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.front.spawn(self._status_page(body), body)

    async def _status_page(self, body: dict[str, Any]) -> None:
        """Another page of a status report (reading: open to everyone), in place of the one shown."""
        _, notifier = self.front.presser(body)
        if await self.front.outside(body, notifier):
            return
        value = json.loads(body["actions"][0]["value"])
        try:
            report = await self.front.service.status(StatusRequest(str(value["app"]), int(value["page"])))
        except UserError as error:
            await notifier.emit(Problem(error.message))
            return
        text, blocks = status_message(report)
        url = body.get("response_url")
        if url:
            await self.front.respond(url, notifier.channel, text=text, blocks=blocks, replace_original=True)
        else:
            await notifier.private((text, blocks))
