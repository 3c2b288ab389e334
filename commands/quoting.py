"""Outside words inside sentences of ours.

A node's HTTP reason phrase, its step output, its executor's error, an exception's text, a value someone
wrote into Consul: the bot quotes these in its own sentences (failure reasons, refusals), which the front
ends render keeping the bot's own mentions. So these words never keep `<` or `>`: look-alikes instead,
and nothing a node or a KV writer says can ping, link or mention anyone.
"""

from __future__ import annotations

import re

MAX_CHARS = 500


def quoted(text: object) -> str:
    return str(text).replace("<", "\u2039").replace(">", "\u203a")[:MAX_CHARS]


def without_credentials(url: str) -> str:
    """`url` as a message may quote it: a user and password in it (all up to the last '@' after the
    scheme, which an unescaped password's '/', '?' or '#' cannot end early) shown as `***`."""
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url)
    start = scheme.end() if scheme else 0
    at = url.rfind("@")
    return url if at < start else f"{url[:start]}***{url[at:]}"


_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/@]+@")


def hide_credentials(text: str) -> str:
    """Free text (an exception's message) with any `scheme://user:pass@` in it shown as `scheme://***@`."""
    return _CREDENTIALS.sub(r"\1***@", text)
