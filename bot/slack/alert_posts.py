"""The health watch's messages in the team's channel: an alert per incident (its ts kept, so the
recovery goes in its thread and the alert is updated), reminders, drained-for-long reminders."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from bot.slack.alert_messages import alert_message, drained_reminder_message, resolved_message
from bot.slack.mrkdwn import mention
from commands.watch import WatchEvent

if TYPE_CHECKING:
    from bot.slack.front import SlackFrontEnd

log = logging.getLogger(__name__)


class AlertPosts:
    def __init__(self, front: SlackFrontEnd) -> None:
        self.front = front
        self.messages: dict[str, tuple[str, str]] = {}  # incident id -> (channel, ts) of its alert

    def people(self, app: str) -> str:
        """The app's approvers, as mentions (who an alert is for)."""
        approvers = self.front.service.apps[app].approvers if app in self.front.service.apps else ()
        return " ".join(mention(i) for i in approvers)

    async def watch_event(self, event: WatchEvent) -> None:
        channel = self.front.channel
        if not channel:
            log.warning("health watch event with no slack.channel to post it to: %s", event)
            return
        incident, now = event.incident, time.time()
        if event.kind in ("alert", "reminder") and incident is not None:
            message = alert_message(incident, now, self.people(event.app), event.kind == "reminder")
            ts = await self.front.post(channel, message)
            if ts and event.kind == "alert":
                self.messages[incident.id] = (channel, ts)
                # Kept with the incident in Consul: a replica taking the watch over replies in this thread.
                incident.post_ref = {"channel": channel, "ts": ts}
        elif event.kind == "recovered" and incident is not None:
            message = resolved_message(incident, now)
            ref = incident.post_ref or {}
            posted = self.messages.pop(incident.id, None) or (
                (ref["channel"], ref["ts"]) if ref.get("channel") and ref.get("ts") else None
            )
            if posted is None:
                await self.front.post(channel, message)
                return
            where, ts = posted
            await self.front.post_thread(where, ts, message[0])
            await self.front.update(where, ts, message)
        elif event.kind == "drained_reminder":
            await self.front.post(channel, drained_reminder_message(event, now))
