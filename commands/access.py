"""Who may do what: one policy, asked by every handler (commands, buttons, alerts) at the moment it acts.

- Reading (status, alerts, history, release status, dry runs) is open to everyone in an allowed channel.
- Changing an app (drain, undrain, add, remove, release and its decisions and abort, watch on/off, the
  alert buttons) is for its operators: `apps.<app>.operators`, else `access.operators`. An app with no
  operators anywhere refuses changes from Slack, naming the key.
- Approvers approve releases of apps with `approval: required`; never the requester.
- The terminal front ends act as the local OS user (`local:<user>`), who is trusted.

Slack user IDs and user-group IDs only (never display names). Group membership comes through
`Directory`, asked afresh at each press, so someone removed from a group can no longer press.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from commands.settings import AppSettings

LOCAL = "local:"


class Directory(Protocol):
    async def is_member(self, user: str, ids: tuple[str, ...]) -> bool:
        """True when `user` is one of `ids` or a member of one of its user groups (S...)."""
        ...


class ListedOnly:
    """A directory without user groups: a user is in a list only when named in it."""

    async def is_member(self, user: str, ids: tuple[str, ...]) -> bool:
        return user in ids


def is_local(who: str) -> bool:
    return who.startswith(LOCAL)


SLACK_ID_PATTERN = r"^[UWS][A-Z0-9]{2,}$"  # a user (U, W) or a user group (S); the config takes the same
_SLACK_ID = re.compile(SLACK_ID_PATTERN)


def mention(who: str) -> str:
    """`<@U...>` (or `<!subteam^S...>` for a user group) for a Slack ID; anything else as plain text."""
    if _SLACK_ID.match(who):
        return f"<!subteam^{who}>" if who.startswith("S") else f"<@{who}>"
    return who.replace("<", "(").replace(">", ")")


@dataclass(frozen=True)
class AccessPolicy:
    apps: dict[str, AppSettings]
    operators: tuple[str, ...] = ()  # access.operators: who may change any app without its own list
    channels: tuple[str, ...] | None = None  # slack.channels: None takes commands anywhere
    directory: Directory = field(default_factory=ListedOnly)

    def channel_refusal(self, channel: str) -> str | None:
        """Why a command from `channel` is not taken (None: it is)."""
        if self.channels is None or channel in self.channels:
            return None
        where = ", ".join(f"<#{c}>" for c in self.channels)
        return f"upstream-bot takes commands in {where}; nothing was done."

    def operators_of(self, app: str) -> tuple[str, ...]:
        settings = self.apps.get(app)
        own = settings.operators if settings is not None else None
        return own if own is not None else self.operators

    async def change_refusal(self, who: str, apps: Iterable[str], what: str = "change") -> str | None:
        """Why `who` may not change every one of `apps` (None: they may)."""
        if is_local(who):
            return None
        for app in dict.fromkeys(apps):
            operators = self.operators_of(app)
            if not operators:
                return (
                    f"Refused: {app} has no operators, so nobody may {what} it from Slack. Set "
                    f"`apps.{app}.operators` or `access.operators` in the config. Nothing was changed."
                )
            if not await self.directory.is_member(who, operators):
                return (
                    f"Refused: only operators of {app} ({', '.join(mention(o) for o in operators)}) may "
                    f"{what} it. Nothing was changed."
                )
        return None

    async def approval_refusal(self, who: str, app: str, requester: str) -> str | None:
        """Why `who` may not approve `requester`'s release of `app` (None: they may)."""
        if who == requester:
            return "You asked for this release: a second person has to approve it."
        approvers = self.apps[app].approvers if app in self.apps else ()
        if not await self.directory.is_member(who, approvers):
            return f"Only an approver of {app} ({', '.join(mention(a) for a in approvers)}) may approve it."
        return None

    async def rejection_refusal(self, who: str, app: str, requester: str) -> str | None:
        """The requester may withdraw; an approver or an operator may reject."""
        if who == requester or is_local(who):
            return None
        approvers = self.apps[app].approvers if app in self.apps else ()
        if await self.directory.is_member(who, approvers + self.operators_of(app)):
            return None
        return f"Only {mention(requester)}, an approver or an operator of {app} may reject this."
