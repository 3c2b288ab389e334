"""What a release version may be, whatever an app's `release.version_pattern` says.

A version reaches shell commands on the nodes (shell-quoted, but quoting does not stop a command from
reading `--delete-all` as an option, or `..` as the parent folder in `rm -rf /srv/releases/{version}`).
So some values are refused before any pattern is consulted: the pattern can narrow, never widen, these.
"""

from __future__ import annotations

import re

MAX_LENGTH = 128
SAFE_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-+~:=@,")
DEFAULT_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


SHOWN_VERSION_LENGTH = 64


def shown_version(raw: str | bytes | None) -> str | None:
    """A node's self-reported version (a response header) as it may be shown: printable characters
    only, at most 64 of them. It comes from the node, not from a person; None when nothing is left."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    kept = "".join(c for c in text.strip() if c.isprintable())
    if not kept:
        return None
    return kept if len(kept) <= SHOWN_VERSION_LENGTH else kept[: SHOWN_VERSION_LENGTH - 1] + "…"


def version_problem(version: str, pattern: str | None = None) -> str | None:
    """Why `version` cannot be used (None: it can). `pattern` is the app's, checked after the rules."""
    shown = version[:80]
    if not version:
        return "a version cannot be empty"
    if version.startswith("-"):
        return f"`{shown}` starts with `-`: a step's command would read it as an option"
    if version in (".", ".."):
        return f"`{shown}` names a folder (`.`/`..`), not a version"
    if any(c in "/\\" or c.isspace() or not c.isprintable() for c in version):
        return f"`{shown}` contains a slash, a space or a control character"
    if any(c not in SAFE_CHARACTERS for c in version):
        # Shell and Slack markup alike: quoting protects `{version}`, but not a step whose template puts
        # it inside quotes of its own ("deploy.sh \"{version}\""), so `$( ) ; ' "` never get that far.
        bad = "".join(sorted({c for c in version if c not in SAFE_CHARACTERS}))[:10]
        return f"`{shown}` contains {bad!r}: a version is letters, digits and . _ - + ~ : = @ , only"
    if len(version) > MAX_LENGTH:
        return f"a version is at most {MAX_LENGTH} characters"
    if pattern is not None and not re.fullmatch(pattern, version):
        return f"`{shown}` does not match the app's version pattern {pattern}"
    return None
