"""Slack user groups for the access policy (`commands.access.Directory`): is someone one of a list of
Slack IDs, or a member of one of its user groups (S...)?

Slack IDs only, never display names. Membership is read from Slack (`usergroups.users.list`) afresh at
every question, so someone removed from a group can no longer press the moment Slack says so. The last
answer per group is kept only for when Slack fails to answer, and then only for `STALE_SECONDS`: a
short Slack outage does not lock the operators out, a long one does not keep a removed person in.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.calls import slack_call

STALE_SECONDS = 120.0


class ApproverDirectory:
    def __init__(
        self, client: AsyncWebClient, stale_seconds: float = STALE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.stale_seconds = stale_seconds
        self.clock = clock  # a test moves it past stale_seconds instead of waiting that long
        self._last: dict[str, tuple[float, frozenset[str]]] = {}  # group -> (when Slack said it, members)

    async def members(self, group: str) -> frozenset[str]:
        response = await slack_call("usergroups.users.list", None, self.client.usergroups_users_list(usergroup=group))
        if response is None:
            # Slack did not answer: a recent answer beats none; none (or an old one) lets nobody in.
            last = self._last.get(group)
            if last is not None and self.clock() - last[0] < self.stale_seconds:
                return last[1]
            return frozenset()
        users = frozenset(response.get("users") or [])
        self._last[group] = (self.clock(), users)
        return users

    async def is_member(self, user: str, ids: tuple[str, ...]) -> bool:
        """commands.access.Directory: `user` is named in `ids`, or is in one of its user groups."""
        if user in ids:
            return True
        for entry in ids:
            if entry.startswith("S") and user in await self.members(entry):
                return True
        return False
