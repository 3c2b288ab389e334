"""The health watch as Block Kit: an alert with its buttons, its reminder, its recovery, the open
incidents, a node drained for long. The last error is a node's own answer (outside text): escaped."""

from __future__ import annotations

import json

from bot.slack.blocks import MAX_BLOCKS, Message, actions, button, code_sections, section
from bot.slack.mrkdwn import code, escape, mention
from bot.terminal.render import duration, incident_line, when
from commands.events import AlertsReport
from commands.watch import Incident, WatchEvent


def alert_message(incident: Incident, now: float, who: str, reminder: bool = False) -> Message:
    """`who`: the people to tell, as mentions (safe mrkdwn)."""
    head = ":repeat: *Still failing*" if reminder else ":ambulance: *Sick node*"
    line = escape(incident_line(incident, now))
    value = json.dumps({"app": incident.app, "address": str(incident.address), "incident": incident.id})
    buttons = [button("Silence 1 h", "watch_silence", value), button("Acknowledge", "watch_ack", value)]
    if incident.consul_serving:
        buttons.insert(0, button("Drain it", "watch_drain", value, "danger"))
    return line, [section(f"{head} {who}\n{line}"), actions(f"alert_{incident.id}", buttons)]


def resolved_message(incident: Incident, now: float) -> Message:
    took = duration((incident.resolved_at or now) - incident.failing_since)
    text = (
        f":white_check_mark: *Resolved* after {took}: {code(incident.address)} of {escape(incident.app)} "
        f"({escape(incident.resolution)}). It was {escape(incident.reason)}; "
        f"last error: {escape(incident.last_error)}."
    )
    return text.replace("*", ""), [section(text)]


def alerts_message(report: AlertsReport, now: float) -> Message:
    head = f"*{len(report.incidents)} open incident(s)*; watching: {escape(', '.join(report.watching) or 'none')}"
    if report.paused:
        head += f"; watch off for: {escape(', '.join(report.paused))}"
    lines = [incident_line(i, now) for i in report.incidents]
    return head.replace("*", ""), [section(head), *code_sections(lines)][:MAX_BLOCKS]


def drained_reminder_message(event: WatchEvent, now: float) -> Message:
    by = f" by {mention(event.by)}" if event.by else ""
    since = f"<!date^{int(event.since or now)}^{{date_short_pretty}} {{time}}|{when(event.since or now)}>"
    text = (
        f"{code(event.address)} of {escape(event.app)} is still drained since {since}{by}. "
        f"`/undrain {escape(event.address)}` puts it back after a probe."
    )
    return text, [section(f":hourglass: {text}")]


def silenced_text(user: str, incident: Incident, until: float) -> str:
    return (
        f"Silenced for 1 h by {mention(user)}: no reminder, no new alert for {code(incident.address)} "
        f"until {when(until)}."
    )


def acknowledged_text(incident: Incident) -> str:
    return (
        f"Acknowledged by {mention(incident.acknowledged_by or '')}: no more reminders; recovery is still posted."
    )
