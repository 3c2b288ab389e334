"""Request signatures between the bot and its agents: HMAC-SHA256 over method, path, timestamp, body.

Like Slack's: a timestamp header and `v1=<hex>`, plus a random nonce so that two identical requests
in the same second still differ. The agent refuses a timestamp more than 5 minutes off and a
signature it has already seen (a replay inside the window).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

TIMESTAMP_HEADER = "X-Upstream-Bot-Timestamp"
SIGNATURE_HEADER = "X-Upstream-Bot-Signature"
NONCE_HEADER = "X-Upstream-Bot-Nonce"
WINDOW = 300.0


def signature(secret: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    message = f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n".encode() + body
    return "v1=" + hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, path: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: signature(secret, method, path, timestamp, nonce, body),
    }


class ReplayGuard:
    """Verifies signatures and remembers those seen within the window."""

    def __init__(self, secret: bytes, window: float = WINDOW) -> None:
        self.secret = secret
        self.window = window
        self._seen: dict[str, float] = {}

    def check(self, method: str, path: str, headers: dict[str, str], body: bytes) -> str | None:
        """None when the request is authentic and fresh; otherwise why it is refused."""
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        given = headers.get(SIGNATURE_HEADER, "")
        if not timestamp or not given:
            return f"unsigned request: {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required"
        try:
            skew = abs(time.time() - int(timestamp))
        except ValueError:
            return f"{TIMESTAMP_HEADER} is not a Unix time"
        if skew > self.window:
            return f"stale request: timestamp is {skew:.0f} s off (the window is {self.window:.0f} s)"
        nonce = headers.get(NONCE_HEADER, "")
        if not hmac.compare_digest(given, signature(self.secret, method, path, timestamp, nonce, body)):
            return "bad signature (is the shared secret the same on the bot and the agent?)"
        now = time.time()
        for old in [s for s, at in self._seen.items() if now - at > 2 * self.window]:
            del self._seen[old]
        if given in self._seen:
            return "replayed request: this signature was used already"
        self._seen[given] = now
        return None
