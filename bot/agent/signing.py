"""Request signatures between the bot and its agents.

Like Slack's: a timestamp header and a `v2=<hex>` HMAC-SHA256, plus a random nonce so that two identical
requests in the same second still differ. Version 2 also signs the *target*: the app, the app node
(`host:port`) the step is for, the step and the version, sent as `X-Upstream-Bot-Target`. Version 1 did
not, so a request captured on its way to one node's agent ran when replayed to another node's agent.

The agent refuses a timestamp more than 5 minutes off, a target node it does not serve, and a nonce it
has already seen. Seen nonces are kept in a state file (`NonceStore`), so a restart does not forget them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TIMESTAMP_HEADER = "X-Upstream-Bot-Timestamp"
SIGNATURE_HEADER = "X-Upstream-Bot-Signature"
NONCE_HEADER = "X-Upstream-Bot-Nonce"
TARGET_HEADER = "X-Upstream-Bot-Target"
VERSION = "v2"
WINDOW = 300.0
# Nonces are remembered for twice the window: a nonce forgotten earlier could be accepted again if the
# agent's clock stepped back by up to a window.
KEEP = 2 * WINDOW
# More nonces than this inside KEEP means something other than a bot is signing requests; the agent
# then refuses new requests rather than forgetting nonces early (forgetting would allow a replay).
MAX_NONCES = 10_000
_NONCE = re.compile(r"^[0-9A-Za-z_-]{16,128}$")


@dataclass(frozen=True)
class SignedTarget:
    """What a request is for; signed, so it cannot be pointed at another node, app, step or version."""

    app: str
    host: str
    port: int
    step: str = ""  # "" for a request about no single step (the preflight's list of steps)
    version: str | None = None

    @property
    def node(self) -> str:
        return f"{self.host}:{self.port}"

    def header(self) -> str:
        # Canonical JSON: one spelling per target, ASCII only (a header value), never a newline (the
        # signed message separates its fields with newlines).
        fields = {"app": self.app, "host": self.host, "port": self.port, "step": self.step, "version": self.version}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> SignedTarget:
        """The target from its header; ValueError when it is not one."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{TARGET_HEADER} is not JSON: {error}") from None
        if not isinstance(data, dict) or set(data) != {"app", "host", "port", "step", "version"}:
            raise ValueError(f"{TARGET_HEADER}: expected app, host, port, step and version")
        port, version = data["port"], data["version"]
        if (
            not isinstance(port, int)
            or isinstance(port, bool)
            or not all(isinstance(data[k], str) for k in ("app", "host", "step"))
        ):
            raise ValueError(f"{TARGET_HEADER}: app, host and step are strings, port a number")
        if version is not None and not isinstance(version, str):
            raise ValueError(f"{TARGET_HEADER}: version is a string or null")
        return cls(data["app"], data["host"], port, data["step"], version)


def signature(secret: bytes, method: str, path: str, timestamp: str, nonce: str, target: str, body: bytes) -> str:
    # No field can hold a newline (a header or a request path cannot), so the message is unambiguous.
    message = f"{VERSION}\n{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{target}\n".encode() + body
    return f"{VERSION}=" + hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(
    secret: bytes, method: str, path: str, body: bytes, target: SignedTarget, now: float | None = None
) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    header = target.header()
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        TARGET_HEADER: header,
        SIGNATURE_HEADER: signature(secret, method, path, timestamp, nonce, header, body),
    }


class Refused(Exception):
    """A request the agent will not serve: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StateError(Exception):
    """The nonce state file cannot be used (the agent does not start, or refuses the request)."""


class NonceStore:
    """Seen nonces with their request timestamps, in memory and in a JSON file.

    The file is rewritten (temporary file, fsync, rename) before a request is let through, so a nonce
    that ran a step is on disk before the step starts: a restart, even a crash, cannot forget it.
    """

    def __init__(self, path: Path | None, keep: float = KEEP, limit: int = MAX_NONCES) -> None:
        self.path = path  # None: memory only (not used by the agent; for callers that need no restart safety)
        self.keep = keep
        self.limit = limit
        self.seen: dict[str, int] = {}

    def load(self) -> str | None:
        """Read the file: None when it was read, else why the agent does not know its past nonces.

        A missing or unreadable file means the agent does not know what it accepted before; the caller
        then refuses whatever was signed before it started (see ReplayGuard). StateError when the
        file cannot be used at all (the agent then does not start)."""
        if self.path is None:
            return "no state file configured"
        self._check_directory()
        try:
            # O_NOFOLLOW: a symlink planted at the state path must not make the agent read another file.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return f"{self.path} does not exist yet"
        except OSError as error:
            why = "a symlink, which is not accepted" if error.errno == errno.ELOOP else error.strerror
            raise StateError(f"{self.path}: {why}") from None
        with os.fdopen(fd, "rb") as file:
            raw = file.read(16 * 1024 * 1024)
        try:
            self.seen = {str(n): int(t) for n, t in json.loads(raw)["nonces"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            self.seen = {}
            return f"{self.path} is not a nonce state file ({error}); it will be rewritten"
        self._prune(time.time())
        return None

    def _check_directory(self) -> None:
        """Create the state directory if missing (mode 0700); refuse one others could tamper with."""
        assert self.path is not None
        folder = self.path.parent
        if not folder.exists():
            try:
                # 0o700: nobody else may add, replace or remove the agent's state.
                folder.mkdir(mode=0o700)
            except OSError as error:
                raise StateError(f"cannot create {folder}: {error.strerror}") from None
        try:
            info = folder.stat()
        except OSError as error:
            raise StateError(f"{folder}: {error.strerror}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise StateError(f"{folder} is not a directory")
        # A directory any user may write to (e.g. /tmp) lets any user delete the state file, which
        # would make the agent forget the nonces it has seen.
        if info.st_mode & stat.S_IWOTH:
            raise StateError(
                f"{folder} is writable by every user; put state_file in a directory only the agent can "
                "write (e.g. /var/lib/upstream-bot)"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StateError(f"{folder} is not writable by the agent's user")

    def _prune(self, now: float) -> None:
        for nonce in [n for n, at in self.seen.items() if now - at > self.keep]:
            del self.seen[nonce]

    def add(self, nonce: str, timestamp: int) -> None:
        """Record `nonce`, on disk too; Refused when it was seen already or cannot be recorded.

        Synchronous on purpose (a small file, a few milliseconds per signed request): with no await
        between the check and the write, two copies of one request cannot both pass."""
        if nonce in self.seen:
            raise Refused(401, "replayed request: this nonce was used already")
        self._prune(time.time())
        if len(self.seen) >= self.limit:
            raise Refused(503, f"more than {self.limit} signed requests in {self.keep:g} s; refusing more")
        self.seen[nonce] = timestamp
        try:
            self.save()
        except (OSError, StateError) as error:
            # Not on disk: a restart would forget it and let a replay run, so this request does not run.
            del self.seen[nonce]
            raise Refused(503, f"cannot record the request's nonce in {self.path}: {error}") from None

    def save(self) -> None:
        if self.path is None:
            return
        data = json.dumps({"nonces": self.seen}, separators=(",", ":")).encode()
        # mkstemp creates the file with O_EXCL and mode 0600; the rename replaces the state atomically,
        # so a crash leaves either the old or the new state, never half of one.
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        # The rename itself is durable only once the directory is synced.
        folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


class ReplayGuard:
    """Verifies signatures, and refuses stale requests and replays, across restarts too."""

    def __init__(
        self,
        secret: bytes,
        store: NonceStore,
        window: float = WINDOW,
        not_before: float | None = None,
    ) -> None:
        self.secret = secret
        self.store = store
        self.window = window
        # Set when the agent started without its nonce state (first start, or the file was lost):
        # anything signed before then may have been accepted by the previous run, so it is refused.
        self.not_before = not_before

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> SignedTarget:
        """The signed target of an authentic, fresh request; Refused otherwise. Does not record the nonce."""
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        given = headers.get(SIGNATURE_HEADER, "")
        target_text = headers.get(TARGET_HEADER, "")
        nonce = headers.get(NONCE_HEADER, "")
        if not timestamp or not given:
            raise Refused(401, f"unsigned request: {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
        if not given.startswith(f"{VERSION}="):
            raise Refused(
                401,
                f"signature scheme {given.split('=', 1)[0]!r} is not accepted (this agent takes {VERSION}, which "
                "signs the target node); upgrade the bot",
            )
        if not target_text or not _NONCE.match(nonce):
            raise Refused(401, f"unsigned request: {TARGET_HEADER} and a {NONCE_HEADER} are required")
        if not timestamp.isdigit():
            raise Refused(401, f"{TIMESTAMP_HEADER} is not a Unix time")
        now = time.time()
        skew = abs(now - int(timestamp))
        if skew > self.window:
            raise Refused(401, f"stale request: timestamp is {skew:.0f} s off (the window is {self.window:.0f} s)")
        if not hmac.compare_digest(given, signature(self.secret, method, path, timestamp, nonce, target_text, body)):
            raise Refused(401, "bad signature (is the shared secret the same on the bot and the agent?)")
        if self.not_before is not None and int(timestamp) < self.not_before:
            # Integer seconds: a request signed in the agent's first second is refused too, which errs
            # on the side of refusing.
            raise Refused(
                401,
                "request signed before this agent started, and the agent has no record of the nonces it "
                "accepted before (no state file); send it again",
            )
        try:
            return SignedTarget.parse(target_text)
        except ValueError as error:
            raise Refused(400, str(error)) from None

    def record(self, headers: Mapping[str, str]) -> None:
        """Remember the verified request's nonce (on disk before returning); Refused for a replay."""
        self.store.add(headers[NONCE_HEADER], int(headers[TIMESTAMP_HEADER]))
