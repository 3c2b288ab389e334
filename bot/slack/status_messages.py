"""`/upstream status` as Block Kit: a summary, what needs attention, pages of 50 servers, who drained
what (from the history), and notes; within 50 blocks however big the upstream."""

from __future__ import annotations

import json
import math
from dataclasses import replace

from bot.slack.blocks import MAX_BLOCKS, Blocks, Message, actions, button, code_sections, context, section
from bot.slack.mrkdwn import code, escape, own
from bot.terminal.render import server_line
from commands.events import ServerStatus, StatusReport

PAGE_SIZE = 50  # servers a page
ATTENTION_MAX = 20  # servers needing attention listed on page 1
NOTES_MAX = 10  # notes (and drained notes) listed; the rest counted


def pages(report: StatusReport) -> int:
    return max(1, math.ceil(len(report.servers) / PAGE_SIZE))


def _line(server: ServerStatus) -> str:
    # The drained note names a person (a mention): it goes in the context below, where it renders, not
    # in the code block, where it would show as raw markup.
    return server_line(replace(server, drained_note=None))


def _listed(items: list[str], what: str) -> str:
    text = "\n".join(f"• {item}" for item in items[:NOTES_MAX])
    if len(items) > NOTES_MAX:
        text += f"\n• ... and {len(items) - NOTES_MAX} more {what}"
    return text


def status_message(report: StatusReport) -> Message:
    total_pages = pages(report)
    page = min(report.page, total_pages)
    summary = escape(report.summary)
    blocks: Blocks = [section(f"*{summary}*  (upstream {code(report.upstream)})")]
    if page == 1:
        attention = [s for s in report.servers if s.needs_attention]
        if attention:
            lines = [_line(s) for s in attention[:ATTENTION_MAX]]
            if len(attention) > ATTENTION_MAX:
                lines.append(f"... and {len(attention) - ATTENTION_MAX} more (see the pages below)")
            blocks.append(section(":warning: *Needs attention*"))
            blocks += code_sections(lines)
        drained = [f"{code(s.address)} {own(s.drained_note)}" for s in report.servers if s.drained and s.drained_note]
        if drained:
            blocks.append(context(_listed(drained, "drained servers")))
    shown = report.servers[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    past = (
        f"There is no page {report.page}: {len(report.servers)} servers make {total_pages} page(s); "
        f"this is the last. "
        if report.page > total_pages
        else ""
    )
    blocks.append(
        context(
            f"{past}Servers {(page - 1) * PAGE_SIZE + 1}-{(page - 1) * PAGE_SIZE + len(shown)} "
            f"of {len(report.servers)} (page {page} of {total_pages})"
        )
    )
    blocks += code_sections([_line(s) for s in shown])
    if report.notes:
        # Notes quote nginx's errors and Consul's keys: outside text, but built by commands/.
        blocks.append(context(_listed([own(n) for n in report.notes], "notes")))
    buttons = []
    if page > 1:
        buttons.append(button("Previous page", "status_page", json.dumps({"app": report.app, "page": page - 1})))
    if page < total_pages:
        buttons.append(button("Next page", "status_page", json.dumps({"app": report.app, "page": page + 1})))
    if buttons:
        # Kept last and inside the limit: the pages are how the rest is reached.
        blocks = [*blocks[: MAX_BLOCKS - 1], actions("status_pages", buttons)]
    return summary, blocks[:MAX_BLOCKS]
