"""Outside words inside sentences of ours.

A node's HTTP reason phrase, its step output, its executor's error, an exception's text, a value someone
wrote into Consul: the bot quotes these in its own sentences (failure reasons, refusals), which the front
ends render keeping the bot's own mentions. So these words never keep `<` or `>`: look-alikes instead,
and nothing a node or a KV writer says can ping, link or mention anyone.
"""

from __future__ import annotations

MAX_CHARS = 500


def quoted(text: object) -> str:
    return str(text).replace("<", "\u2039").replace(">", "\u203a")[:MAX_CHARS]
