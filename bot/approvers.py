"""Who may press a button for an app: the requester, or an approver (user ID or user-group member).

Slack IDs only, never display names. User groups come from `usergroups.users.list` (Tier 2: cached).
"""

from __future__ import annotations

import logging
import time

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

CACHE_SECONDS = 300.0


def slack_error(error: SlackApiError) -> str:
    """Slack's error code (`not_in_channel`, ...), or the HTTP status when the answer was not JSON."""
    data = error.response.data
    if isinstance(data, dict):
        return str(data.get("error", "unknown error"))
    return f"HTTP {error.response.status_code}"


log = logging.getLogger(__name__)


class ApproverDirectory:
    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}

    async def members(self, group: str) -> frozenset[str]:
        cached = self._groups.get(group)
        if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            response = await self.client.usergroups_users_list(usergroup=group)
            users = frozenset(response.get("users") or [])
        except SlackApiError as error:
            log.warning("cannot list user group %s: %s", group, slack_error(error))
            users = cached[1] if cached else frozenset()  # an old answer beats none; none approves nobody
        self._groups[group] = (time.monotonic(), users)
        return users

    async def is_approver(self, user: str, approvers: tuple[str, ...]) -> bool:
        if user in approvers:
            return True
        for entry in approvers:
            if entry.startswith("S") and user in await self.members(entry):
                return True
        return False
