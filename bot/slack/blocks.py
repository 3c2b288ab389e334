"""Events as Block Kit messages, within Slack's limits (50 blocks, 3000 chars a section, 75 a button)."""

from __future__ import annotations

import json
import math
from typing import Any

from bot.terminal.render import duration, incident_line, node_line, server_line, when
from commands.events import (
    DANGEROUS_OPTIONS,
    AbortRequested,
    AlertsReport,
    ChangeApplied,
    ConfirmationNeeded,
    DecisionNeeded,
    ReleaseStatusReport,
    ServerStatus,
    StatusReport,
)
from commands.release_plan import ReleasePlan
from commands.release_state import Phase, ReleaseState, Status
from commands.watch import Incident

Blocks = list[dict[str, Any]]

PAGE_SIZE = 50  # servers a page
ATTENTION_MAX = 20  # servers needing attention listed on page 1
SECTION_CHARS = 2900  # under Slack's 3000


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:SECTION_CHARS]}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:2900]}]}


def _button(
    text: str, action_id: str, value: str, style: str | None = None, confirm: dict[str, Any] | None = None
) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": text[:75]},
        "action_id": action_id,
        "value": value[:2000],
    }
    if style:
        button["style"] = style
    if confirm:
        button["confirm"] = confirm
    return button


def _dialog(title: str, text: str, confirm: str, deny: str) -> dict[str, Any]:
    """Slack's own "are you sure?" on a button, before the press reaches the bot."""
    return {
        "title": {"type": "plain_text", "text": title[:100]},
        "text": {"type": "plain_text", "text": text[:300]},
        "confirm": {"type": "plain_text", "text": confirm[:30]},
        "deny": {"type": "plain_text", "text": deny[:30]},
        "style": "danger",
    }


def _code_sections(lines: list[str]) -> Blocks:
    """Lines in ``` sections, each under the section limit."""
    blocks: Blocks = []
    chunk: list[str] = []
    size = 0
    for line in lines:
        line = line[:300]
        if chunk and size + len(line) + 1 > SECTION_CHARS - 8:
            blocks.append(_section("```" + "\n".join(chunk) + "```"))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        blocks.append(_section("```" + "\n".join(chunk) + "```"))
    return blocks


def pages(report: StatusReport) -> int:
    return max(1, math.ceil(len(report.servers) / PAGE_SIZE))


def status_message(report: StatusReport) -> tuple[str, Blocks]:
    total_pages = pages(report)
    page = min(report.page, total_pages)
    blocks: Blocks = [_section(f"*{report.summary}*  (upstream `{report.upstream}`)")]
    if page == 1:
        attention: list[ServerStatus] = [s for s in report.servers if s.needs_attention]
        if attention:
            lines = [server_line(s) for s in attention[:ATTENTION_MAX]]
            if len(attention) > ATTENTION_MAX:
                lines.append(f"... and {len(attention) - ATTENTION_MAX} more (see the pages below)")
            blocks.append(_section(":warning: *Needs attention*"))
            blocks += _code_sections(lines)
    shown = report.servers[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    blocks.append(
        _context(
            f"Servers {(page - 1) * PAGE_SIZE + 1}-{(page - 1) * PAGE_SIZE + len(shown)} "
            f"of {len(report.servers)} (page {page} of {total_pages})"
        )
    )
    blocks += _code_sections([server_line(s) for s in shown])
    notes = list(report.notes)
    if notes:
        text = "\n".join(f"• {n}" for n in notes[:10])
        if len(notes) > 10:
            text += f"\n• ... and {len(notes) - 10} more notes"
        blocks.append(_context(text))
    if total_pages > 1:
        buttons = []
        if page > 1:
            buttons.append(_button("Previous page", "status_page", json.dumps({"app": report.app, "page": page - 1})))
        if page < total_pages:
            buttons.append(_button("Next page", "status_page", json.dumps({"app": report.app, "page": page + 1})))
        blocks.append({"type": "actions", "block_id": "status_pages", "elements": buttons})
    return report.summary, blocks[:50]


def confirmation_message(event: ConfirmationNeeded, key: str) -> tuple[str, Blocks]:
    plan = event.plan
    if event.stage >= 2:
        text = f":rotating_light: *Second confirmation:* {plan.title}"
        confirm_label, style = "Yes, take it ALL out of traffic", "danger"
    else:
        text = f"*{plan.title}?*"
        confirm_label, style = {
            "drain": ("Drain", "danger"),
            "remove": ("Remove", "danger"),
            "add": ("Add", "primary"),
            "undrain": ("Undrain", "primary"),
        }[plan.action]
    details = "\n".join([*(f"• {i}" for i in plan.impact), *(f":warning: {w}" for w in plan.warnings)])
    blocks: Blocks = [_section(f"{text}\n{details}")]
    blocks.append(_context(f"Asked by <@{plan.requester}>. Only they or an approver of the app can confirm."))
    slack_confirm = None
    if event.stage >= 2:
        slack_confirm = _dialog("Really?", f"{plan.title}: every request to it will fail.", "Take it out", "Keep it")
    blocks.append(
        {
            "type": "actions",
            "block_id": f"confirm_{plan.id}_{event.stage}",
            "elements": [
                _button(confirm_label, "confirm", key, style, slack_confirm),
                _button("Cancel", "cancel", key),
            ],
        }
    )
    return f"{plan.title}? {'; '.join(plan.impact)}", blocks


def applied_message(event: ChangeApplied) -> tuple[str, Blocks]:
    icon = ":white_check_mark:" if event.ok else ":x:"
    lines = [
        f"{icon} *{event.plan.title}* by <@{event.actor}>"
        + (f" (asked by <@{event.plan.requester}>)" if event.plan.requester != event.actor else "")
    ]
    for result in event.results:
        lines.append(f"{'•' if result.ok else ':x:'} {result.change.app}: {result.detail}")
    stamp = f"<!date^{int(event.at)}^{{date_short_pretty}} {{time_secs}}|{when(event.at)}>"
    text = f"{event.plan.title} by {event.actor}: " + "; ".join(r.detail for r in event.results)
    return text, [_section("\n".join(lines)), _context(stamp)]


def text_message(text: str, icon: str = "") -> tuple[str, Blocks]:
    body = f"{icon} {text}".strip()
    return text, [_section(body)]


# -- releases ------------------------------------------------------------------------------------------


def mention(slack_id: str) -> str:
    """A user (U/W...) or a user group (S...), as Slack renders a mention."""
    return f"<!subteam^{slack_id}>" if slack_id.startswith("S") else f"<@{slack_id}>"


def release_plan_message(plan: ReleasePlan, key: str, stage: int = 1, dry_run: bool = False) -> tuple[str, Blocks]:
    if dry_run:
        head = f"*Dry run, nothing changed:* {plan.title}"
    elif stage >= 2:
        head = f":rotating_light: *Second confirmation (--force):* {plan.title}"
    else:
        head = f"*{plan.title}?*"
    blocks: Blocks = [_section(head), *_code_sections(plan.lines())]
    if not dry_run:
        confirm = None
        if stage >= 2:
            confirm = _dialog(
                "Release with no spare server?",
                "Requests fail while the only node is drained.",
                "Release anyway",
                "Keep it",
            )
        label = "Ask for approval" if plan.approval_required else "Start"
        blocks.append(
            {
                "type": "actions",
                "block_id": f"release_{plan.id}_{stage}",
                "elements": [
                    _button(label, "release_start", key, "danger" if stage >= 2 else "primary", confirm),
                    _button("Cancel", "release_cancel", key),
                ],
            }
        )
    return f"{plan.title}: {len(plan.nodes)} node(s)", blocks


def approval_message(plan: ReleasePlan, key: str) -> tuple[str, Blocks]:
    who = " ".join(mention(a) for a in plan.approvers)
    text = (
        f":raised_hand: {who}: <@{plan.requester}> asks to run *{plan.title}*. An approver other than them may approve."
    )
    blocks: Blocks = [
        _section(text),
        *_code_sections(plan.lines()),
        {
            "type": "actions",
            "block_id": f"approval_{plan.id}",
            "elements": [
                _button("Approve", "release_approve", key, "primary"),
                _button("Reject", "release_reject", key, "danger"),
            ],
        },
    ]
    return f"{plan.title}: approval requested", blocks


def progress_message(state: ReleaseState, now: float, last_output: dict[str, str]) -> tuple[str, Blocks]:
    icon = {
        Status.SUCCEEDED: ":white_check_mark:",
        Status.FAILED: ":x:",
        Status.ABORTED: ":octagonal_sign:",
        Status.PAUSED: ":double_vertical_bar:",
    }.get(state.status, ":hourglass_flowing_sand:")
    plan = state.plan
    who = f"requested by <@{plan.requester}>" + (f", approved by <@{state.approver}>" if state.approver else "")
    head = (
        f"{icon} *{plan.title}*: {state.status.value}, {state.released} of {len(state.nodes)} released, "
        f"{state.elapsed(now):.0f} s; {who}"
    )
    lines = []
    for node in state.nodes.values():
        line = node_line(node)
        if node.phase is Phase.STEP and str(node.address) in last_output:
            line += f"  | {last_output[str(node.address)][:80]}"
        lines.append(line)
    blocks: Blocks = [_section(head), *_code_sections(lines)]
    if state.message:
        blocks.append(_context(state.message))
    return f"{plan.title}: {state.status.value}", blocks[:50]


# The decision buttons. The options come from the event (commands.events.DECISION_OPTIONS), never from
# the kind, so a new option shows up without a change here (as its own name until it gets a label).
DECISION_LABELS: dict[str, str] = {
    "continue": "Continue",
    "abort": "Abort",
    "retry": "Retry node",
    "restore": "Start, probe and restore",
    "restore_unhealthy": "Restore UNHEALTHY node",
    "leave": "Leave drained",
}
DECISION_STYLES: dict[str, str] = {"continue": "primary", "retry": "primary", "abort": "danger"}


def decision_label(option: str) -> str:
    return DECISION_LABELS.get(option, option.replace("_", " ").capitalize())


def decision_message(event: DecisionNeeded, who: str) -> tuple[str, Blocks]:
    plan = event.state.plan
    node = event.node

    def value(choice: str) -> str:
        return json.dumps({"app": plan.app, "decision_id": event.decision_id, "decision": choice})

    if event.kind == "canary":
        text = f":bird: {who}: the canary {node} of *{plan.title}* is released and healthy. Continue?"
    elif event.kind == "restore_failed":
        text = (
            f":rotating_light: {who}: *{plan.title}*: {node} was started and probed, and is NOT healthy: "
            f"{event.reason}\n{node} stays drained; the other servers keep serving; nothing further is touched."
        )
    else:
        text = (
            f":rotating_light: {who}: *{plan.title}* stopped at {node}: {event.reason}\n"
            f"{node} stays drained; the other servers keep serving; nothing further is touched."
        )
    buttons = []
    for option in event.options:
        style, confirm = DECISION_STYLES.get(option), None
        if option in DANGEROUS_OPTIONS:
            # Slack's own dialog: the explicit second confirmation before the press reaches the bot.
            style = "danger"
            confirm = _dialog(
                "Put an unhealthy node back into traffic?",
                f"{node} failed its health probe. Restored, it gets requests again, and they may fail.",
                "Restore it",
                "Keep it drained",
            )
        buttons.append(_button(decision_label(option), "release_decision", value(option), style, confirm))
    return text.replace("*", ""), [
        _section(text),
        {"type": "actions", "block_id": f"decision_{event.decision_id}", "elements": buttons[:25]},
    ]


def abort_message(event: AbortRequested) -> tuple[str, Blocks]:
    confirm = _dialog(
        "Abort the release?",
        "It stops before the next step; a stopped node is started and probed first.",
        "Abort",
        "Go on",
    )
    value = json.dumps({"app": event.app, "release_id": event.release_id})
    return f"Abort the release of {event.app}?", [
        _section(f"Abort the running release of *{event.app}*?"),
        {
            "type": "actions",
            "block_id": f"abort_{event.release_id}",
            "elements": [_button("Abort release", "release_abort", value, "danger", confirm)],
        },
    ]


def release_status_message(event: ReleaseStatusReport, now: float) -> tuple[str, Blocks]:
    if event.state is not None:
        return progress_message(event.state, now, {})
    if event.lock is not None:
        lock = event.lock
        return text_message(
            f"A release of {event.app} is running on {lock.holder}: started by <@{lock.requester}> "
            f"at {when(lock.since)} (release {lock.release_id})."
        )
    return text_message(f"No release of {event.app} is running.")


# -- health watch -------------------------------------------------------------------------------------


def alert_message(incident: Incident, now: float, who: str, reminder: bool = False) -> tuple[str, Blocks]:
    head = ":repeat: *Still failing*" if reminder else ":ambulance: *Sick node*"
    text = f"{head} {who}\n{incident_line(incident, now)}"
    value = json.dumps({"app": incident.app, "address": str(incident.address), "incident": incident.id})
    buttons = [_button("Silence 1 h", "watch_silence", value), _button("Acknowledge", "watch_ack", value)]
    if incident.consul_serving:
        buttons.insert(0, _button("Drain it", "watch_drain", value, "danger"))
    return incident_line(incident, now), [
        _section(text),
        {"type": "actions", "block_id": f"alert_{incident.id}", "elements": buttons},
    ]


def resolved_message(incident: Incident, now: float) -> tuple[str, Blocks]:
    took = duration((incident.resolved_at or now) - incident.failing_since)
    text = (
        f":white_check_mark: *Resolved* after {took}: {incident.address} of {incident.app} "
        f"({incident.resolution}). It was {incident.reason}; last error: {incident.last_error}."
    )
    return text.replace("*", ""), [_section(text)]


def alerts_message(report: AlertsReport, now: float) -> tuple[str, Blocks]:
    head = f"*{len(report.incidents)} open incident(s)*; watching: {', '.join(report.watching) or 'none'}"
    if report.paused:
        head += f"; watch off for: {', '.join(report.paused)}"
    lines = [incident_line(i, now) for i in report.incidents]
    return head.replace("*", ""), [_section(head), *_code_sections(lines)][:50]
