"""The Slack front end's shared state and its ways of speaking to Slack.

One `SlackFrontEnd` per bot: the command service, the Web API client, the team's channel, the pending
confirmations, the release and alert messages it keeps editing, and the background work it runs after
each acknowledgement. Handlers (slash.py, presses.py, approvals.py, steering.py, alert_buttons.py) and
the notifier (notifier.py) act through it; every Slack call goes through `slack_call` (never raises).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.consul.pending import PendingKV
from bot.slack.alert_posts import AlertPosts
from bot.slack.blocks import Message
from bot.slack.calls import slack_call
from bot.slack.notifier import SlackNotifier
from bot.slack.pending import Confirmations
from bot.slack.release_posts import ReleasePosts
from commands.events import Problem
from commands.service import CommandService

log = logging.getLogger(__name__)
# What reading a payload of the wrong shape raises (a missing key, a number where a dict was expected).
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class SlackFrontEnd:
    def __init__(
        self,
        service: CommandService,
        client: AsyncWebClient,
        channel: str | None = None,
        pending: PendingKV | None = None,
    ) -> None:
        self.service = service
        self.client = client
        self.channel = channel  # the team's deploy channel: every result is posted there too
        # In Consul when given (any replica takes a press), else in this process's memory.
        self.pending = Confirmations(kv=pending)
        self.releases = ReleasePosts(self)
        self.alerts = AlertPosts(self)
        self._tasks: set[asyncio.Task[object]] = set()

    # -- who and where ----------------------------------------------------------------------------

    def notifier(self, channel: str, user: str, response_url: str | None = None) -> SlackNotifier:
        return SlackNotifier(self, channel, user, response_url)

    def presser(self, body: dict[str, Any]) -> tuple[str, SlackNotifier]:
        """Who pressed (their Slack user ID, the only identity the bot uses) and a notifier that answers
        them where they pressed."""
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id") or body.get("container", {}).get("channel_id", "")
        return user, self.notifier(channel, user, body.get("response_url"))

    async def outside(self, body: dict[str, Any], notifier: SlackNotifier) -> bool:
        """A press from a channel commands are not taken in (a DM, a channel not in `slack.channels`): the
        presser is told, and True means the handler does nothing else."""
        channel = (body.get("channel") or {}).get("id") or body.get("container", {}).get("channel_id", "")
        refusal = self.service.policy.channel_refusal(channel)
        if refusal:
            await notifier.emit(Problem(refusal))
            return True
        return False

    def channel_notifier(self) -> SlackNotifier:
        """For events nobody asked for (the health watch): they go to the team's channel."""
        return self.notifier(self.channel or "", "")

    def release_channel(self, origin: str) -> str:
        return self.channel or origin

    # -- background work --------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, object], payload: Any = None) -> None:
        """Run `work` after the acknowledgement has gone out; keep a reference until it ends. With the
        request's `payload`, work that trips over a field missing or of the wrong type is logged once
        (with its traceback: it may as well be a bug here) and the person is told, through the payload's
        response_url, that it could not be handled: not that nothing was done, which nobody knows."""
        task = asyncio.get_running_loop().create_task(work if payload is None else self._shaped(work, payload))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def _shaped(self, work: Coroutine[Any, Any, object], payload: Any) -> None:
        try:
            await work
        except MALFORMED as error:
            log.error(
                "Slack request not handled (malformed, or a bug here): %s: %s",
                type(error).__name__,
                error,
                exc_info=True,
            )
            url = payload.get("response_url") if isinstance(payload, dict) else None
            if isinstance(url, str) and url.startswith(("https://", "http://")):
                text = (
                    "That request could not be handled (a field was missing or not what was expected). "
                    "Check the state (/upstream status, /release status) before trying again."
                )
                await self.respond(url, None, text=text, response_type="ephemeral")

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        # Said now, not whenever the task is collected: a listener's work that failed is a bug to see.
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def guarded(self, work: Coroutine[Any, Any, Any], notifier: SlackNotifier, what: str) -> Any:
        """Run a handler's work; an exception is logged and the person told, never left unsaid."""
        try:
            return await work
        except Exception:
            log.exception("%s failed", what)
            await notifier.emit(
                Problem(
                    f"Internal error in {what}; check the state with /upstream status (and /release status). "
                    "The bot's log has the details."
                )
            )
            return None

    # -- speaking ---------------------------------------------------------------------------------

    async def post(self, channel: str, message: Message) -> str | None:
        """chat.postMessage; the message's ts, or None when Slack did not take it."""
        text, blocks = message
        call = self.client.chat_postMessage(channel=channel, text=text, blocks=blocks)
        response = await slack_call("chat.postMessage", channel, call)
        return None if response is None else str(response.get("ts") or "") or None

    async def post_thread(self, channel: str, ts: str | None, text: str) -> None:
        """A reply in a message's thread; `text` is safe mrkdwn."""
        call = self.client.chat_postMessage(channel=channel, thread_ts=ts, text=text)
        await slack_call("chat.postMessage", channel, call)

    async def update(self, channel: str, ts: str, message: Message) -> None:
        text, blocks = message
        call = self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
        await slack_call("chat.update", channel, call)

    async def announce(self, origin: str, message: Message) -> None:
        """To the channel the request came from and to the team's channel (once if they are the same)."""
        for channel in dict.fromkeys(c for c in (origin, self.channel) if c):
            await self.post(channel, message)

    async def respond(self, url: str, channel: str | None, **message: Any) -> None:
        """Post to an interaction's response_url (a Slack webhook), with the Web API client's timeout."""
        webhook = AsyncWebhookClient(url, timeout=self.client.timeout)
        await slack_call("response_url", channel, webhook.send(**message))

    async def replace(self, body: dict[str, Any], message: Message) -> None:
        """Swap a pressed message's buttons for `message`, so it cannot be pressed again."""
        url = body.get("response_url")
        if url:
            text, blocks = message
            channel = (body.get("channel") or {}).get("id")
            await self.respond(url, channel, text=text, blocks=blocks, replace_original=True)
