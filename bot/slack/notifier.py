"""`SlackNotifier`: one request's events as Slack messages. Answers to the person who asked are
ephemeral; results (a change applied, an announcement, a release's progress) go to the channel."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from bot.slack.alert_messages import alerts_message
from bot.slack.blocks import Message, own_message
from bot.slack.calls import slack_call
from bot.slack.change_messages import applied_message, confirmation_message, watch_off_message
from bot.slack.history_messages import history_message
from bot.slack.pending import APPROVAL
from bot.slack.release_messages import (
    abort_message,
    approval_message,
    release_plan_message,
    release_status_message,
    resume_confirm_message,
)
from bot.slack.status_messages import status_message
from commands.errors import StoreError
from commands.events import (
    AbortRequested,
    AlertsReport,
    Announcement,
    ApprovalRequested,
    ChangeApplied,
    ConfirmationNeeded,
    DecisionNeeded,
    Event,
    Help,
    HistoryReport,
    Notice,
    Problem,
    ReleaseDryRun,
    ReleaseFinished,
    ReleaseInterrupted,
    ReleasePlanned,
    ReleaseStatusReport,
    ReleaseUpdate,
    ResumeRequested,
    StatusReport,
    StepOutput,
    WatchOffRequested,
)
from commands.watch import WatchEvent

if TYPE_CHECKING:
    from bot.slack.front import SlackFrontEnd

log = logging.getLogger(__name__)


class SlackNotifier:
    """`channel` is where the request came from (the history records it as `where`); `user` who asked."""

    def __init__(self, front: SlackFrontEnd, channel: str, user: str, response_url: str | None) -> None:
        self.front = front
        self.channel = channel
        self.user = user
        self.response_url = response_url

    async def emit(self, event: Event) -> None:
        """Never raises: the release engine and the commands emit through this, and nothing on the Slack
        side (Slack down, a rendering bug) may stop or corrupt them. Slack calls are guarded one by one
        (slack_call); this catches the rest."""
        try:
            await self._emit(event)
        except StoreError as error:
            # A question whose buttons could not be kept in Consul: the person is told, nothing is pending.
            log.error("cannot keep %s for a press: %s", type(event).__name__, error.message)
            try:
                await self.private(
                    own_message(f"Nothing was asked and nothing changed: Consul did not answer ({error.message}).")
                )
            except Exception:
                log.exception("cannot tell %s in %s", self.user, self.channel)
        except Exception:
            log.exception("cannot show %s in Slack", type(event).__name__)

    async def _emit(self, event: Event) -> None:
        front = self.front
        match event:
            case StatusReport():
                await self.private(status_message(event))
            case ConfirmationNeeded(plan=plan, stage=stage):
                pending = await front.pending.add(plan, stage, self.channel)
                await self.private(confirmation_message(event, pending.key))
            case WatchOffRequested():
                pending = await front.pending.add(event, 1, self.channel)
                await self.private(watch_off_message(event, pending.key))
            case ChangeApplied():
                await front.announce(self.channel, applied_message(event))
            case Announcement(text=text):
                await front.announce(self.channel, own_message(text, ":mega:"))
            case Problem(text=text):
                await self.private(own_message(text, ":no_entry:"))
            case Notice(text=text) | Help(text=text):
                await self.private(own_message(text))
            case HistoryReport():
                await self.private(history_message(event))
            case ReleasePlanned(plan=plan, stage=stage):
                pending = await front.pending.add(plan, stage, self.channel)
                await self.private(release_plan_message(plan, pending.key, stage))
            case ReleaseDryRun(plan=plan):
                await self.private(release_plan_message(plan, "", dry_run=True))
            case ApprovalRequested(plan=plan):
                pending = await front.pending.add(plan, APPROVAL, self.channel)
                channel = front.release_channel(self.channel)
                ts = await front.post(channel, approval_message(plan, pending.key))
                if ts:
                    # edited with the verdict once someone decides
                    await front.pending.remember_message(pending, channel, ts)
            case ReleaseUpdate(state=state, thread=thread):
                await front.releases.update(state, thread, self.channel)
            case StepOutput(release_id=release_id, output=output):
                front.releases.output(release_id, output.node, output.line)
            case DecisionNeeded():
                await front.releases.decision(event, self.channel)
            case ReleaseFinished(state=state):
                await front.releases.finished(state, self.channel)
            case ReleaseStatusReport():
                await self.private(release_status_message(event, time.time()))
            case AbortRequested():
                await self.private(abort_message(event))
            case ResumeRequested():
                await self.private(resume_confirm_message(event))
            case ReleaseInterrupted():
                await front.releases.interrupted(event, self.channel)
            case AlertsReport():
                await self.private(alerts_message(event, time.time()))
            case WatchEvent():
                await front.alerts.watch_event(event)

    async def private(self, message: Message) -> None:
        """chat.postEphemeral; through the response_url where that failed (the bot is not in the channel)."""
        text, blocks = message
        call = self.front.client.chat_postEphemeral(channel=self.channel, user=self.user, text=text, blocks=blocks)
        if await slack_call("chat.postEphemeral", self.channel, call) is not None or not self.response_url:
            return
        await self.front.respond(self.response_url, self.channel, text=text, blocks=blocks, response_type="ephemeral")
