"""The Slack front end: Bolt AsyncApp listeners, kept thin. Acknowledge first, then work.

Transport (HTTP endpoint or Socket Mode) lives elsewhere; this module only turns Slack payloads into
requests for `CommandService` and its events into Slack messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.approvers import ApproverDirectory, slack_error
from bot.blocks import applied_message, confirmation_message, status_message, text_message
from bot.confirmations import ClaimRefused, Confirmations
from commands.errors import UserError
from commands.events import ChangeApplied, ConfirmationNeeded, Event, Help, Notice, Problem, StatusReport
from commands.grammar import COMMANDS, parse
from commands.requests import StatusRequest
from commands.service import CommandService

log = logging.getLogger(__name__)
SEEN_TRIGGERS = 2000  # slash-command trigger_ids remembered to ignore Slack's retries


def make_client(token: str, api_url: str | None) -> AsyncWebClient:
    client = AsyncWebClient(token=token, base_url=api_url or "https://slack.com/api/")
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
    return client


class SlackNotifier:
    """Renders one request's events: answers to the requester are ephemeral, results go to the channel."""

    def __init__(self, front: SlackFrontEnd, channel: str, user: str, response_url: str | None) -> None:
        self.front = front
        self.channel = channel
        self.user = user
        self.response_url = response_url

    async def emit(self, event: Event) -> None:
        match event:
            case StatusReport():
                await self.private(*status_message(event))
            case ConfirmationNeeded():
                pending = self.front.confirmations.add(event.plan, event.stage, self.channel)
                await self.private(*confirmation_message(event, pending.key))
            case ChangeApplied():
                await self.front.announce(self.channel, *applied_message(event))
            case Problem(text=text):
                await self.private(*text_message(text, ":no_entry:"))
            case Notice(text=text) | Help(text=text):
                await self.private(*text_message(text))

    async def private(self, text: str, blocks: list[dict[str, Any]]) -> None:
        """chat.postEphemeral; through the response_url where the bot is not in the channel."""
        try:
            await self.front.client.chat_postEphemeral(channel=self.channel, user=self.user, text=text, blocks=blocks)
            return
        except SlackApiError as error:
            if not self.response_url:
                log.error("cannot answer %s in %s: %s", self.user, self.channel, slack_error(error))
                return
        await AsyncWebhookClient(self.response_url).send(text=text, blocks=blocks, response_type="ephemeral")


class SlackFrontEnd:
    def __init__(self, service: CommandService, client: AsyncWebClient, channel: str | None = None) -> None:
        self.service = service
        self.client = client
        self.channel = channel  # the team's deploy channel: every result is posted there too
        self.confirmations = Confirmations()
        self.directory = ApproverDirectory(client)
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    async def announce(self, origin: str, text: str, blocks: list[dict[str, Any]]) -> None:
        for channel in dict.fromkeys(c for c in (origin, self.channel) if c):
            try:
                await self.client.chat_postMessage(channel=channel, text=text, blocks=blocks)
            except SlackApiError as error:
                log.error("cannot post to %s: %s", channel, slack_error(error))

    def _first_time(self, trigger_id: str | None) -> bool:
        if not trigger_id:
            return True
        if trigger_id in self._seen:
            return False
        self._seen[trigger_id] = time.time()
        while len(self._seen) > SEEN_TRIGGERS:
            self._seen.popitem(last=False)
        return True

    # -- listeners -------------------------------------------------------------------------------

    def register(self, app: AsyncApp) -> None:
        for name in COMMANDS:
            app.command(name)(self.on_command)
        app.action("confirm")(self.on_confirm)
        app.action("cancel")(self.on_cancel)
        app.action("status_page")(self.on_status_page)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` after the acknowledgement has gone out; keep a reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def on_command(self, ack: Any, command: dict[str, Any]) -> None:
        await ack()  # before any other I/O: Slack gives up after 3 s
        if not self._first_time(command.get("trigger_id")):
            log.info("ignoring a retry of %s %s", command.get("command"), command.get("trigger_id"))
            return
        self.spawn(self._command(command))

    async def _command(self, command: dict[str, Any]) -> None:
        notifier = SlackNotifier(self, command["channel_id"], command["user_id"], command.get("response_url"))
        try:
            request = parse(command["command"], command.get("text", ""))
        except UserError as error:
            await notifier.emit(Problem(error.message))
            return
        try:
            await self.service.handle(request, command["user_id"], notifier)
        except Exception:
            log.exception("command %s failed", command.get("command"))
            await notifier.emit(Problem("Internal error; nothing more was done. The bot's log has the details."))

    async def _may_confirm(self, user: str, key: str) -> str | None:
        """Why `user` may not press the button behind `key`, or None."""
        pending = self.confirmations.get(key)
        if pending is None or user == pending.plan.requester:
            return None  # claim() explains an unknown key
        approvers: tuple[str, ...] = ()
        for change in pending.plan.changes:
            approvers += self.service.apps[change.app].approvers
        if await self.directory.is_approver(user, approvers):
            return None
        apps = ", ".join(dict.fromkeys(c.app for c in pending.plan.changes))
        return (
            f"Only <@{pending.plan.requester}> (who asked) or an approver of {apps} can press this; "
            "nothing was changed."
        )

    async def on_confirm(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._press(body, "confirmed"))

    async def on_cancel(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._press(body, "cancelled"))

    async def _press(self, body: dict[str, Any], verdict: str) -> None:
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id") or body.get("container", {}).get("channel_id", "")
        key = body["actions"][0].get("value", "")
        notifier = SlackNotifier(self, channel, user, body.get("response_url"))
        refusal = await self._may_confirm(user, key)
        if refusal:
            await notifier.private(*text_message(refusal, ":no_entry:"))
            return
        try:
            pending = self.confirmations.claim(key, user, verdict)
        except ClaimRefused as refused:
            await notifier.private(*text_message(refused.message, ":information_source:"))
            return
        await self._replace(body, f"{pending.plan.title}: {verdict} by <@{user}>.")
        if verdict == "cancelled":
            return
        try:
            await self.service.confirm(pending.plan, pending.stage, user, notifier)
        except Exception:
            log.exception("confirmed change %s failed", pending.plan.title)
            await notifier.emit(
                Problem(
                    f"Internal error during {pending.plan.title}; check the state with "
                    "/upstream status. The bot's log has the details."
                )
            )

    async def _replace(self, body: dict[str, Any], text: str) -> None:
        """Swap the buttons for the verdict, so the message cannot be pressed again."""
        url = body.get("response_url")
        if url:
            await AsyncWebhookClient(url).send(text=text, replace_original=True, blocks=text_message(text)[1])

    async def on_status_page(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._status_page(body))

    async def _status_page(self, body: dict[str, Any]) -> None:
        value = json.loads(body["actions"][0]["value"])
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id", "")
        notifier = SlackNotifier(self, channel, user, body.get("response_url"))
        try:
            report = await self.service.status(StatusRequest(value["app"], int(value["page"])))
        except UserError as error:
            await notifier.emit(Problem(error.message))
            return
        text, blocks = status_message(report)
        url = body.get("response_url")
        if url:
            await AsyncWebhookClient(url).send(text=text, blocks=blocks, replace_original=True)
        else:
            await notifier.private(text, blocks)


def build_app(front: SlackFrontEnd, signing_secret: str | None) -> AsyncApp:
    app = AsyncApp(
        client=front.client,
        signing_secret=signing_secret,
        request_verification_enabled=signing_secret is not None,
        # Listeners only ack and spawn their work (SlackFrontEnd.spawn), so Bolt can answer as soon as
        # they return, instead of polling every 10 ms for the ack of a listener still running.
        process_before_response=True,
    )
    front.register(app)
    return app


async def warm_up(app: AsyncApp) -> None:
    """Call auth.test now, so no command waits for it before its acknowledgement."""
    from slack_bolt.middleware.authorization.async_single_team_authorization import (
        AsyncSingleTeamAuthorization,
    )

    try:
        result = await app.client.auth_test()
    except SlackApiError as error:
        raise RuntimeError(f"Slack refused the bot token (auth.test: {slack_error(error)})") from None
    for middleware in app._async_middleware_list:  # Bolt keeps its result here; no public setter
        if isinstance(middleware, AsyncSingleTeamAuthorization):
            middleware.auth_test_result = result
