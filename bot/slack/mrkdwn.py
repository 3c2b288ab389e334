"""Text made safe for Slack's mrkdwn: it can neither ping (`<!channel>`, `<@U...>`), nor link
(`<https://..|x>`), nor break out of a code span or block.

Slack's own rule: `&`, `<` and `>` are the control characters of mrkdwn; escaped as `&amp;`, `&lt;`,
`&gt;` they show as themselves. Backticks cannot be escaped inside code, so they are replaced by a
look-alike (U+02CB) there.

Two kinds of text reach a renderer:
- text from outside (a node's reason phrase, step output, versions, addresses, reasons people typed,
  history entries): `escape`, `code`, `code_block`; nothing in it is ever markup;
- text built by `commands/` (a Problem, a Notice, an Announcement): it carries the bot's own mentions
  (`<@U...>`, `<!subteam^S...>`, `<#C...>`) beside values from outside: `own`, which escapes
  everything and then restores only those exact mention shapes. A `<!channel>`, `<!here>`,
  `<!everyone>`, a link or a labelled mention (`<@U1|boss>`) never survives it.
The bot's own markup (`<!date^...>`, the mentions it builds with `mention`) is added around escaped
text, never inside it.
"""

from __future__ import annotations

import re

_LOOKALIKE_BACKTICK = "\u02cb"

# The mention shapes the bot itself writes (commands.access.mention, the policy's channel list), once
# escaped. Nothing else is ever given back its meaning.
_OWN_MENTION = re.compile(r"&lt;(@[UW][A-Z0-9]{2,}|!subteam\^S[A-Z0-9]{2,}|#[CG][A-Z0-9]{2,})&gt;")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_GROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")
_CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{2,}$")


def escape(text: object) -> str:
    """Plain text for a mrkdwn field: shows as typed, never pings or links."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def own(text: object) -> str:
    """Text built by `commands/`: escaped, then its own user, user-group and channel mentions restored
    (exactly `<@U...>`, `<@W...>`, `<!subteam^S...>`, `<#C...>`, `<#G...>`, nothing more)."""
    return _OWN_MENTION.sub(lambda m: f"<{m.group(1)}>", escape(text))


def code(text: object) -> str:
    """An inline code span around outside text."""
    inner = escape(text).replace("`", _LOOKALIKE_BACKTICK).replace("\n", " ")
    return f"`{inner}`" if inner else "``"


def code_block(text: object) -> str:
    """A code block around outside text (step output): no fence can come from inside. Every backtick
    goes, not only triples: one at the end of the text would otherwise merge with the closing fence."""
    inner = escape(text).replace("`", _LOOKALIKE_BACKTICK)
    return f"```{inner}```"


def mention(slack_id: str) -> str:
    """A user (U/W...) or user group (S...) as a mention; anything else (`local:alice`, a value read
    from Consul that is not an ID) as escaped text."""
    if _USER_ID.match(slack_id):
        return f"<@{slack_id}>"
    if _GROUP_ID.match(slack_id):
        return f"<!subteam^{slack_id}>"
    return escape(slack_id)


def channel(channel_id: str) -> str:
    """A channel link for a channel ID (`terminal`, `ci` and anything else as escaped text)."""
    return f"<#{channel_id}>" if _CHANNEL_ID.match(channel_id) else escape(channel_id)
