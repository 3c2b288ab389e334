"""`/upstream history` as Block Kit: one line per entry, newest first, packed into sections under
Slack's limits; when the entries do not fit in one message, the rest is counted, not cut mid-line.

Every field of an entry is outside text (it was stored in Consul, which anyone with its token can
write): escaped, people and channels shown as mentions only when they are Slack IDs."""

from __future__ import annotations

from bot.slack.blocks import MAX_BLOCKS, SECTION_CHARS, Blocks, Message, context, section
from bot.slack.mrkdwn import channel, code, escape, mention, own
from commands.events import HistoryReport
from commands.history import HistoryEntry

FIELD_CHARS = 200  # a reason or an outcome, before escaping (so a line stays under a section even escaped)


def _cut(text: str) -> str:
    return text if len(text) <= FIELD_CHARS else text[: FIELD_CHARS - 3] + "..."


def _state(fields: dict[str, object] | None) -> str:
    return "-" if fields is None else f"down={fields.get('down', '?')}"


def entry_line(entry: HistoryEntry) -> str:
    parts = [code(entry.at), mention(entry.who), f"in {channel(entry.where)}", f"*{escape(entry.what)}*"]
    if entry.target:
        parts.append(code(entry.target))
    if entry.before is not None or entry.after is not None:
        parts.append(escape(f"{_state(entry.before)} -> {_state(entry.after)}"))
    if entry.force:
        parts.append("`--force`")
    if entry.reason:
        parts.append(f"reason: _{escape(_cut(entry.reason))}_")
    if entry.outcome:
        # The outcome was written by the bot (it may name people with their mentions), but it also quotes
        # probe details and Consul errors: only the bot's own mention shapes survive.
        parts.append(f"→ {own(_cut(entry.outcome))}")
    return "• " + " ".join(parts)


def history_message(report: HistoryReport) -> Message:
    target = f" {code(report.target)}" if report.target else ""
    head = f"*History of {escape(report.app)}*{target}, newest first ({len(report.entries)})"
    if not report.entries:
        text = f"{head}: nothing recorded."
        return text, [section(text)]
    blocks: Blocks = [section(head)]
    lines: list[str] = []
    size = 0
    shown = 0
    room = MAX_BLOCKS - 2  # the head, and the count of what did not fit
    for entry in report.entries:
        line = entry_line(entry)
        if lines and size + len(line) + 1 > SECTION_CHARS:
            if len(blocks) >= room:
                break
            blocks.append(section("\n".join(lines)))
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
        shown += 1
    if lines:
        blocks.append(section("\n".join(lines)))
    left = len(report.entries) - shown
    if left:
        blocks.append(
            context(
                f"... and {left} older entries not shown here; `--limit N` or an `ip:port` narrows the history."
            )
        )
    return f"History of {escape(report.app)}: {len(report.entries)} entries", blocks[:MAX_BLOCKS]
