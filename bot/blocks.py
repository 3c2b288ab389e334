"""Events as Block Kit messages, within Slack's limits (50 blocks, 3000 chars a section, 75 a button)."""

from __future__ import annotations

import json
import math
from typing import Any

from bot.text_render import server_line, when
from commands.events import ChangeApplied, ConfirmationNeeded, ServerStatus, StatusReport

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
        slack_confirm = {
            "title": {"type": "plain_text", "text": "Really?"},
            "text": {"type": "plain_text", "text": f"{plan.title}: every request to it will fail."[:300]},
            "confirm": {"type": "plain_text", "text": "Take it out"},
            "deny": {"type": "plain_text", "text": "Keep it"},
            "style": "danger",
        }
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
