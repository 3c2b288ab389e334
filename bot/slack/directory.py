"""Who may press a button for an app: the requester, or an approver (user ID or user-group member).

Slack IDs only, never display names. User groups come from `usergroups.users.list` (Tier 2: cached).

Also home to `slack_call`, the one guard every Slack Web API call of the bot goes through (it lives
here because this is the module the others already import for Slack's errors).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook import WebhookResponse

CACHE_SECONDS = 300.0

T = TypeVar("T")


def slack_error(error: SlackApiError) -> str:
    """Slack's error code (`not_in_channel`, ...), or the HTTP status when the answer was not JSON."""
    data = error.response.data
    if isinstance(data, dict):
        return str(data.get("error", "unknown error"))
    return f"HTTP {error.response.status_code}"


log = logging.getLogger(__name__)


async def slack_call(method: str, channel: str | None, call: Awaitable[T]) -> T | None:
    """Await one Slack call (Web API method, or a `response_url` post); its answer, or None if it failed.

    Never raises (except cancellation): Slack being down, slow or refusing must not stop or corrupt what
    called it, a release above all. Slack refusing (SlackApiError, a non-2xx response_url answer) and
    Slack unreachable (aiohttp errors, OSError, the client's timeout) are logged with the method and the
    channel; anything else is a bug here, logged with its traceback, and still not raised.
    """
    where = channel or "-"
    try:
        result = await call
    except SlackApiError as error:
        log.error("Slack %s (channel %s) refused: %s", method, where, slack_error(error))
        return None
    except (aiohttp.ClientError, OSError, TimeoutError) as error:  # TimeoutError: the client's own timeout
        log.error("Slack %s (channel %s) failed, Slack unreachable: %s", method, where, repr(error))
        return None
    except Exception:
        log.exception("Slack %s (channel %s) failed unexpectedly", method, where)
        return None
    # A response_url (webhook) answers with a status instead of raising.
    if isinstance(result, WebhookResponse) and not 200 <= result.status_code < 300:
        log.error("Slack %s (channel %s) refused: HTTP %s %s", method, where, result.status_code, result.body[:200])
        return None
    return result


class ApproverDirectory:
    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}

    async def members(self, group: str) -> frozenset[str]:
        cached = self._groups.get(group)
        if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        response = await slack_call("usergroups.users.list", None, self.client.usergroups_users_list(usergroup=group))
        if response is None:
            # An old answer beats none; none approves nobody. Not cached: the next press asks Slack again
            # (after an outage, approvers must not stay refused for CACHE_SECONDS).
            return cached[1] if cached else frozenset()
        users = frozenset(response.get("users") or [])
        self._groups[group] = (time.monotonic(), users)
        return users

    async def is_member(self, user: str, ids: tuple[str, ...]) -> bool:
        """commands.access.Directory: so the access policy can resolve user groups through this cache."""
        return await self.is_approver(user, ids)

    async def is_approver(self, user: str, approvers: tuple[str, ...]) -> bool:
        if user in approvers:
            return True
        for entry in approvers:
            if entry.startswith("S") and user in await self.members(entry):
                return True
        return False
