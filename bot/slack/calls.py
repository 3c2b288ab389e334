"""`slack_call`: the one guard every Slack Web API call (and every `response_url` post) goes through."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookResponse

from bot.metrics import SLACK_ERRORS

T = TypeVar("T")

log = logging.getLogger(__name__)


def slack_error(error: SlackApiError) -> str:
    """Slack's error code (`not_in_channel`, ...), or the HTTP status when the answer was not JSON."""
    data = error.response.data
    if isinstance(data, dict):
        return str(data.get("error", "unknown error"))
    return f"HTTP {error.response.status_code}"


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
        SLACK_ERRORS.labels(method, slack_error(error)).inc()
        return None
    except (aiohttp.ClientError, OSError, TimeoutError) as error:  # TimeoutError: the client's own timeout
        log.error("Slack %s (channel %s) failed, Slack unreachable: %s", method, where, repr(error))
        SLACK_ERRORS.labels(method, "unreachable").inc()
        return None
    except Exception:
        log.exception("Slack %s (channel %s) failed unexpectedly", method, where)
        SLACK_ERRORS.labels(method, "bug").inc()
        return None
    # A response_url (webhook) answers with a status instead of raising.
    if isinstance(result, WebhookResponse) and not 200 <= result.status_code < 300:
        log.error("Slack %s (channel %s) refused: HTTP %s %s", method, where, result.status_code, result.body[:200])
        SLACK_ERRORS.labels(method, f"HTTP {result.status_code}").inc()
        return None
    return result
