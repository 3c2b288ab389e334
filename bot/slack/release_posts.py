"""A release's messages in the channel: one progress message per release (edited in place, see
progress.py), the failing step's output in its thread, the decisions it waits for, its end."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from bot.metrics import NODE_SECONDS, RELEASES_FINISHED, RELEASES_STARTED
from bot.slack.blocks import Blocks
from bot.slack.calls import slack_call
from bot.slack.mrkdwn import code_block, mention
from bot.slack.progress import FINAL_BACKOFF, ProgressMessage
from bot.slack.release_messages import decision_message, failed_alert, finished_line, interrupted_message
from commands.events import DecisionNeeded, ReleaseInterrupted
from commands.release_plan import ReleasePlan
from commands.release_state import ReleaseState, Status

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from bot.slack.front import SlackFrontEnd


class ReleasePosts:
    def __init__(self, front: SlackFrontEnd) -> None:
        self.front = front
        self.progresses: dict[str, ProgressMessage] = {}  # release id -> its progress message
        self.alerted: set[str] = set()  # releases whose failure was already posted with buttons

    def people(self, plan: ReleasePlan) -> str:
        """The requester and the app's approvers, as mentions (who a release's questions are for)."""
        approvers = self.front.service.apps[plan.app].approvers if plan.app in self.front.service.apps else ()
        return " ".join(mention(i) for i in dict.fromkeys([plan.requester, *approvers]))

    def progress(self, state: ReleaseState, origin: str) -> ProgressMessage:
        progress = self.progresses.get(state.plan.id)
        if progress is None:
            where = state.progress or {}
            # A release taken up after its bot died edits the message its first bot posted.
            progress = ProgressMessage(self.front.client, where.get("channel") or self.front.release_channel(origin))
            progress.ts = where.get("ts")
            self.progresses[state.plan.id] = progress
            if not where:  # not one taken up after its bot died
                RELEASES_STARTED.labels(state.plan.app).inc()
        return progress

    async def interrupted(self, event: ReleaseInterrupted, origin: str) -> None:
        """A release whose bot died: its progress message says so, with Resume, Restore and Leave, and the
        channel is told (the people concerned are mentioned)."""
        entry = event.entry
        approvers = self.front.service.apps[entry.app].approvers if entry.app in self.front.service.apps else ()
        who = " ".join(mention(i) for i in dict.fromkeys([entry.requester, *approvers])) + ": "
        text, blocks = interrupted_message(event, who)
        # It is marked told in Consul already: a Slack that is down must not lose it. Retried in the
        # background with the same backoff as a release's final state (progress.FINAL_BACKOFF).
        self.front.spawn(self._tell_interrupted(entry.progress or {}, self.front.release_channel(origin), text, blocks))

    async def _tell_interrupted(self, where: dict[str, str], channel: str, text: str, blocks: Blocks) -> None:
        edited = not (where.get("channel") and where.get("ts"))  # no progress message to edit
        posted = False
        for pause in (*FINAL_BACKOFF, None):
            if not edited:
                call = self.front.client.chat_update(channel=where["channel"], ts=where["ts"], text=text, blocks=blocks)
                edited = await slack_call("chat.update", where["channel"], call) is not None
            if not posted:
                posted = await self.front.post(channel, (text, blocks)) is not None
            if (edited and posted) or pause is None:
                break
            await asyncio.sleep(pause)  # backoff while Slack is down: there is nothing to poll
        if not posted:
            log.error("the interrupted release was not told in %s: Slack did not take it", channel)

    async def update(self, state: ReleaseState, thread: str | None, origin: str) -> None:
        # The thread is a failing step's output: the node's words, in a code block they cannot close.
        await self.progress(state, origin).update(state, code_block(thread) if thread else None)

    def output(self, release_id: str, node: str, line: str) -> None:
        """The last line a step printed on a node, shown beside it (escaped when rendered)."""
        progress = self.progresses.get(release_id)
        if progress is not None:
            progress.last_output[node] = line

    async def decision(self, event: DecisionNeeded, origin: str) -> None:
        self.alerted.add(event.state.plan.id)
        message = decision_message(event, self.people(event.state.plan))
        await self.front.post(self.front.release_channel(origin), message)

    async def finished(self, state: ReleaseState, origin: str) -> None:
        RELEASES_FINISHED.labels(state.plan.app, state.status.value).inc()
        for node in state.nodes.values():
            for phase, seconds in node.durations.items():
                NODE_SECONDS.labels(state.plan.app, phase).observe(seconds)
            if node.started_at is not None and node.finished_at is not None:
                NODE_SECONDS.labels(state.plan.app, "total").observe(node.finished_at - node.started_at)
        progress = self.progress(state, origin)
        progress.reply(finished_line(state))  # sent after the final edit
        # In the background: with Slack down, finish retries for about 30 s; nothing waits for that.
        self.front.spawn(progress.finish(state))
        if state.status is Status.FAILED and state.plan.id not in self.alerted:
            # Stopped without a question (preflight, guard, lost lock): still tell the people concerned.
            await self.front.post(progress.channel, failed_alert(state, self.people(state.plan)))
        self.progresses.pop(state.plan.id, None)
        self.alerted.discard(state.plan.id)
