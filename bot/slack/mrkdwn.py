"""Text from outside (a node's reason phrase, step output, versions, addresses, reasons people typed)
made safe for Slack's mrkdwn: it can neither ping (`<!channel>`, `<@U...>`), nor link (`<https://..|x>`),
nor break out of a code span or block.

Slack's own rule: `&`, `<` and `>` are the control characters of mrkdwn; escaped as `&amp;`, `&lt;`,
`&gt;` they show as themselves. Backticks cannot be escaped inside code, so they are replaced by a
look-alike (U+02CB) there. Every renderer uses these; the bot's own markup (mentions it means to make,
`<!date^...>`) is added around escaped text, never inside it.
"""

from __future__ import annotations

_LOOKALIKE_BACKTICK = "\u02cb"


def escape(text: object) -> str:
    """Plain text for a mrkdwn field: shows as typed, never pings or links."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code(text: object) -> str:
    """An inline code span around outside text."""
    inner = escape(text).replace("`", _LOOKALIKE_BACKTICK).replace("\n", " ")
    return f"`{inner}`" if inner else "``"


def code_block(text: object) -> str:
    """A code block around outside text (step output): no closing fence can come from inside."""
    inner = escape(text).replace("```", _LOOKALIKE_BACKTICK * 3)
    return f"```{inner}```"
