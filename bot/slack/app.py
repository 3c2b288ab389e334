"""Bolt wiring: the Web API client, the AsyncApp and which handler answers which command, button and
modal. Transport (HTTP endpoint or Socket Mode) lives in serve.py and http_server.py.

Every listener acknowledges first and does its work in the background (SlackFrontEnd.spawn): Slack
gives up after 3 s. The handlers only turn payloads into calls of the command service, which asks
the access policy itself; the one rule a handler applies is the channel check of slash commands.
"""

from __future__ import annotations

import logging
import os

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.alert_buttons import AlertButtons
from bot.slack.approvals import REJECT_VIEW, Approvals
from bot.slack.calls import slack_error
from bot.slack.front import SlackFrontEnd
from bot.slack.presses import Presses
from bot.slack.slash import SlashCommands
from bot.slack.steering import Steering
from commands.grammar import COMMANDS

log = logging.getLogger(__name__)
# Seconds a Slack call may take (slack-sdk's default is 30). Slack answers in well under a second; a
# Slack that hangs must not hold whatever waits on it for long. SLACK_API_TIMEOUT overrides it.
SLACK_TIMEOUT = 10
TOKEN_ERRORS = ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired")


class BotTokenRefused(Exception):
    pass


def slack_timeout() -> int:
    """SLACK_API_TIMEOUT (whole seconds, at least 1), or SLACK_TIMEOUT when unset or not a number."""
    raw = os.environ.get("SLACK_API_TIMEOUT", "")
    try:
        return max(1, int(raw)) if raw else SLACK_TIMEOUT
    except ValueError:
        log.warning("SLACK_API_TIMEOUT=%r is not a whole number of seconds; using %d", raw, SLACK_TIMEOUT)
        return SLACK_TIMEOUT


def make_client(token: str, api_url: str | None, timeout: int | None = None) -> AsyncWebClient:
    client = AsyncWebClient(
        token=token, base_url=api_url or "https://slack.com/api/", timeout=timeout or slack_timeout()
    )
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
    return client


def register(app: AsyncApp, front: SlackFrontEnd) -> None:
    slash, presses, approvals = SlashCommands(front), Presses(front), Approvals(front)
    steering, alerts = Steering(front), AlertButtons(front)
    for name in COMMANDS:
        app.command(name)(slash.on_command)
    app.action("status_page")(slash.on_status_page)
    # One Confirm and one Cancel for every question; what is confirmed is the pending subject's business.
    app.action("confirm")(presses.on_confirm)
    app.action("cancel")(presses.on_cancel)
    app.action("release_start")(presses.on_confirm)
    app.action("release_cancel")(presses.on_cancel)
    app.action("release_approve")(approvals.on_approve)
    app.action("release_reject")(approvals.on_reject)
    app.view(REJECT_VIEW)(approvals.on_reject_submitted)
    app.action("release_decision")(steering.on_decision)
    app.action("release_abort")(steering.on_abort)
    app.action("release_resume")(steering.on_resume)
    app.action("watch_drain")(alerts.on_drain)
    app.action("watch_silence")(alerts.on_silence)
    app.action("watch_ack")(alerts.on_acknowledge)


class _ClientGiven(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment even when given a client (ours carries that token
    with our timeout, API URL and rate-limit retries), then warns the token is unused: it is in use."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


_CLIENT_GIVEN = _ClientGiven()


def build_app(front: SlackFrontEnd, signing_secret: str | None) -> AsyncApp:
    logging.getLogger("slack_bolt.AsyncApp").addFilter(_CLIENT_GIVEN)
    app = AsyncApp(
        client=front.client,
        signing_secret=signing_secret,
        request_verification_enabled=signing_secret is not None,
        # Listeners only ack and spawn their work (SlackFrontEnd.spawn), so Bolt can answer as soon as
        # they return, instead of polling every 10 ms for the ack of a listener still running.
        process_before_response=True,
    )
    register(app, front)
    return app


async def warm_up(app: AsyncApp) -> None:
    """Call auth.test now, so no command waits for it before its acknowledgement."""
    from slack_bolt.middleware.authorization.async_single_team_authorization import (
        AsyncSingleTeamAuthorization,
    )

    try:
        result = await app.client.auth_test()
    except SlackApiError as error:
        if slack_error(error) in TOKEN_ERRORS:
            raise BotTokenRefused(f"Slack refused SLACK_BOT_TOKEN (auth.test: {slack_error(error)})") from None
        log.warning("auth.test failed (%s); Bolt will try again on the first request", slack_error(error))
        return
    except Exception as error:  # Slack (or SLACK_API_URL) unreachable right now: not fatal for serving
        log.warning("auth.test failed (%s); Bolt will try again on the first request", error)
        return
    for middleware in app._async_middleware_list:  # Bolt keeps its result here; no public setter
        if isinstance(middleware, AsyncSingleTeamAuthorization):
            middleware.auth_test_result = result
