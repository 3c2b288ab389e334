"""Block Kit building blocks within Slack's limits: 50 blocks a message, 3000 characters a section's
text, 75 a button's text, 2000 its value; a confirm dialog's title 100, text 300, buttons 30.

Every function here takes mrkdwn that is already safe (see `mrkdwn.py`), except `code_sections`, which
escapes the outside text it is given itself. Plain-text fields (buttons, dialogs) are never parsed
for markup by Slack, so they take any text.
"""

from __future__ import annotations

from typing import Any

from bot.slack.mrkdwn import code_block, escape, own

Blocks = list[dict[str, Any]]
Message = tuple[str, Blocks]  # the top-level `text` (notifications, fallback) and the blocks

MAX_BLOCKS = 50
SECTION_CHARS = 2900  # under Slack's 3000
LINE_CHARS = 300  # one line of a code section, before escaping


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:SECTION_CHARS]}}


def context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:SECTION_CHARS]}]}


def actions(block_id: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "actions", "block_id": block_id[:255], "elements": elements[:25]}


def button(
    text: str, action_id: str, value: str, style: str | None = None, confirm: dict[str, Any] | None = None
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": text[:75]},
        "action_id": action_id,
        "value": value[:2000],
    }
    if style:
        element["style"] = style
    if confirm:
        element["confirm"] = confirm
    return element


def dialog(title: str, text: str, confirm: str, deny: str) -> dict[str, Any]:
    """Slack's own "are you sure?" on a button, before the press reaches the bot."""
    return {
        "title": {"type": "plain_text", "text": title[:100]},
        "text": {"type": "plain_text", "text": text[:300]},
        "confirm": {"type": "plain_text", "text": confirm[:30]},
        "deny": {"type": "plain_text", "text": deny[:30]},
        "style": "danger",
    }


def code_sections(lines: list[str]) -> Blocks:
    """Outside text, line by line, in code-block sections, each under the section limit once escaped."""
    blocks: Blocks = []
    chunk: list[str] = []
    size = 0
    for line in lines:
        line = line[:LINE_CHARS]
        # Measured escaped: `&` becomes 5 characters, and Slack counts what it is sent.
        length = len(escape(line)) + 1
        if chunk and size + length > SECTION_CHARS - 8:
            blocks.append(section(code_block("\n".join(chunk))))
            chunk, size = [], 0
        chunk.append(line)
        size += length
    if chunk:
        blocks.append(section(code_block("\n".join(chunk))))
    return blocks


def text_message(text: str, icon: str = "") -> Message:
    """One section of safe mrkdwn; the same text is the notification."""
    return text, [section(f"{icon} {text}".strip())]


def own_message(text: str, icon: str = "") -> Message:
    """Text built by `commands/` (a Problem, a Notice, an Announcement): escaped but for its own mentions."""
    return text_message(own(text), icon)
