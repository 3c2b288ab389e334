"""The health watch as Block Kit: an alert with its buttons, its reminder, its recovery, the open
incidents, a node drained for long; many nodes of an app failing at once as one grouped alert; the
watch unable to see an app at all. Reasons and last errors are the nodes' own answers (outside
text): escaped."""

from __future__ import annotations

import json
from collections.abc import Sequence

from bot.slack.blocks import (
    MAX_BLOCKS,
    SECTION_CHARS,
    Blocks,
    Message,
    actions,
    button,
    code_sections,
    context,
    section,
)
from bot.slack.mrkdwn import code, escape, mention
from bot.terminal.render import duration, incident_line, when
from commands.events import AlertsReport
from commands.watch import Incident, WatchEvent

REASON_CHARS = 120  # of a node's reason in a grouped alert, before escaping
ERROR_CHARS = 200  # of its last error


def alert_message(incident: Incident, now: float, who: str, reminder: bool = False) -> Message:
    """`who`: the people to tell, as mentions (safe mrkdwn)."""
    if incident.address is None:
        return blind_message(incident, now, who, reminder)
    head = ":repeat: *Still failing*" if reminder else ":ambulance: *Sick node*"
    line = escape(incident_line(incident, now))
    value = json.dumps({"app": incident.app, "address": str(incident.address), "incident": incident.id})
    buttons = [button("Silence 1 h", "watch_silence", value), button("Acknowledge", "watch_ack", value)]
    if incident.consul_serving:
        buttons.insert(0, button("Drain it", "watch_drain", value, "danger"))
    return line, [section(f"{head} {who}\n{line}"), actions(f"alert_{incident.id}", buttons)]


def blind_message(incident: Incident, now: float, who: str, reminder: bool = False) -> Message:
    """The watch cannot see the app (Consul or nginx unreadable): nothing to drain; Acknowledge stops
    the reminders."""
    why, error = incident.reason, incident.last_error
    if why.lower().startswith("the health watch cannot see") and error:  # the reason only says what
        why, error = error, ""
    still = "Still: t" if reminder else "T"
    text = f"{still}he health watch cannot see {escape(incident.app)}: {escape(why[:ERROR_CHARS])}"
    detail = f"since {when(incident.failing_since)} ({duration(now - incident.failing_since)})"
    if error:
        detail += f"; last error: {escape(error[:ERROR_CHARS])}"
    if incident.acknowledged_by:
        detail += f"; acknowledged by {mention(incident.acknowledged_by)}"
    value = json.dumps({"app": incident.app, "incident": incident.id})
    return text, [
        section(f":see_no_evil: {text} {who}\n{detail}"),
        actions(f"alert_{incident.id}", [button("Acknowledge", "watch_ack", value)]),
    ]


def resolved_message(incident: Incident, now: float) -> Message:
    took = duration((incident.resolved_at or now) - incident.failing_since)
    if incident.address is None:
        text = (
            f":eyes: *The watch sees {escape(incident.app)} again* after {took} ({escape(incident.resolution)}); "
            f"last error: {escape(incident.last_error)}."
        )
        return text.replace("*", ""), [section(text)]
    text = (
        f":white_check_mark: *Resolved* after {took}: {code(incident.address)} of {escape(incident.app)} "
        f"({escape(incident.resolution)}). It was {escape(incident.reason)}; "
        f"last error: {escape(incident.last_error)}."
    )
    return text.replace("*", ""), [section(text)]


# -- many nodes at once ------------------------------------------------------------------------------


def node_line(incident: Incident, now: float) -> str:
    """One node of a grouped alert, as safe mrkdwn."""
    since = duration(now - incident.failing_since)
    check = f"; nginx check: {escape(incident.nginx_check)}" if incident.nginx_check else ""
    return (
        f"• {code(incident.address)} {escape(incident.reason[:REASON_CHARS])} for {since}; "
        f"last error: {escape(incident.last_error[:ERROR_CHARS])}{check}"
    )


def listed(lines: Sequence[str], room: int) -> tuple[Blocks, int]:
    """Safe mrkdwn lines in sections (each under the section limit), in at most `room` blocks: the
    blocks, and how many lines they hold (the first ones; the rest did not fit)."""
    blocks: Blocks = []
    chunk: list[str] = []
    size = shown = 0
    for line in lines:
        line = line[:SECTION_CHARS]
        if chunk and size + len(line) + 1 > SECTION_CHARS:
            blocks.append(section("\n".join(chunk)))
            shown, chunk, size = shown + len(chunk), [], 0
            if len(blocks) >= room:
                return blocks, shown
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        blocks.append(section("\n".join(chunk)))
        shown += len(chunk)
    return blocks, shown


def _nodes(incidents: Sequence[Incident], lines: Sequence[str], head: str, app: str) -> Blocks:
    """A head section, the lines that fit (leaving room for a "more" note and the buttons), the note."""
    blocks, shown = listed(lines, MAX_BLOCKS - 3)
    more = len(incidents) - shown
    note = [context(f"and {more} more: `/upstream alerts {escape(app)}` lists them all.")] if more else []
    return [section(head), *blocks, *note]


def group_alert_message(event: WatchEvent, now: float, who: str) -> Message:
    """Many nodes of one app failing (or still failing) at once: one message, with Silence all and
    Acknowledge all. No Drain: draining many nodes from one press is not safe."""
    incidents, app = event.incidents, event.app
    reminder = event.kind == "group_reminder"
    text = f"{'Still failing: ' if reminder else ''}{len(incidents)} nodes of {escape(app)} failing"
    head = f"{':repeat:' if reminder else ':ambulance:'} *{text}* {who}"
    groups = {i.group for i in incidents}
    group = groups.pop() if len(groups) == 1 else None
    blocks = _nodes(incidents, [node_line(i, now) for i in incidents], head, app)
    if group:
        value = json.dumps({"app": app, "group": group})
        buttons = [button("Silence all 1 h", "watch_silence", value), button("Acknowledge all", "watch_ack", value)]
        blocks.append(actions(f"group_{group}", buttons))
    else:  # a reminder of nodes alerted in several messages: their own alerts have the buttons
        blocks.append(context("Silence or acknowledge them from their alerts."))
    return text, blocks


def group_resolved_message(event: WatchEvent, now: float) -> Message:
    incidents, app = event.incidents, event.app
    text = f"Resolved: {len(incidents)} nodes of {escape(app)}"

    def line(i: Incident) -> str:
        took = duration((i.resolved_at or now) - i.failing_since)
        return f"• {code(i.address)} {escape(i.resolution)} after {took}"

    blocks = _nodes(incidents, [line(i) for i in incidents], f":white_check_mark: *{text}*", app)
    return text, blocks


def group_closed_message(app: str) -> Message:
    """The grouped alert once every node in it is resolved (its buttons go)."""
    text = f"Resolved: every node of this alert of {escape(app)} (see the thread)"
    return text, [section(f":white_check_mark: *{text}*")]


# -- reports and answers -----------------------------------------------------------------------------


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


def _what(incident: Incident) -> str:
    return f"{code(incident.address)}" if incident.address is not None else f"{escape(incident.app)} (the app)"


def silenced_text(user: str, incident: Incident, until: float) -> str:
    return f"Silenced for 1 h by {mention(user)}: no reminder, no new alert for {_what(incident)} until {when(until)}."


def acknowledged_text(incident: Incident) -> str:
    return f"Acknowledged by {mention(incident.acknowledged_by or '')}: no more reminders; recovery is still posted."


def group_silenced_text(user: str, incidents: Sequence[Incident], until: float) -> str:
    nodes = ", ".join(code(i.address) for i in incidents[:20]) + (" ..." if len(incidents) > 20 else "")
    return (
        f"Silenced for 1 h by {mention(user)}: no reminder, no new alert for {len(incidents)} node(s) "
        f"until {when(until)}: {nodes}."
    )


def group_acknowledged_text(user: str, incidents: Sequence[Incident]) -> str:
    return (
        f"Acknowledged by {mention(user)}: {len(incidents)} node(s), no more reminders for them; "
        "recoveries are still posted."
    )
