"""`upstream-bot serve`: the Slack bot, over Socket Mode or HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError

from bot.config import Config
from bot.consul.pending import PendingKV
from bot.consul.store import ConsulStore
from bot.health.scheduler import HealthWatcher
from bot.heap import keep_collections_short
from bot.interruptions import InterruptionMonitor
from bot.runtime import service_for
from bot.slack.app import TOKEN_ERRORS, BotTokenRefused, build_app, make_client, warm_up
from bot.slack.calls import slack_error
from bot.slack.directory import ApproverDirectory
from bot.slack.front import SlackFrontEnd
from bot.slack.http_server import build_web_app
from commands.errors import StoreError

log = logging.getLogger(__name__)


async def serve(config: Config, http: bool, host: str, port: int) -> int:
    token = os.environ.get("SLACK_BOT_TOKEN")
    if not token:
        print("error: SLACK_BOT_TOKEN is not set (the bot token, xoxb-...).", file=sys.stderr)
        return 2
    app_token = os.environ.get("SLACK_APP_TOKEN")
    secret = os.environ.get("SLACK_SIGNING_SECRET")
    if http and not secret:
        print("error: --http needs SLACK_SIGNING_SECRET to verify Slack's requests.", file=sys.stderr)
        return 2
    if not http and not app_token:
        print("error: set SLACK_APP_TOKEN (xapp-...) for Socket Mode, or pass --http --port N.", file=sys.stderr)
        return 2
    # SIGTERM (systemd, a deploy of the bot) ends `serve` like Ctrl-C: the watch's election lock is let go
    # at once rather than held until its TTL. A release running here stops where it is and is reported
    # interrupted (by another replica, or by this one when it starts again), to be resumed by a person.
    main = asyncio.current_task()
    if main is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    # The client first: the access policy resolves user groups through it (read at every press).
    client = make_client(token, os.environ.get("SLACK_API_URL"))
    async with service_for(config, directory=ApproverDirectory(client)) as service:
        # Pending confirmations live in the bot's Consul, so a press may reach any replica.
        pending = PendingKV(service.store) if isinstance(service.store, ConsulStore) else None
        front = SlackFrontEnd(service, client, config.slack.channel, pending)
        app = build_app(front, secret if http else None)
        try:
            await warm_up(app)
        except BotTokenRefused as refused:
            print(f"error: {refused}", file=sys.stderr)
            return 2
        # Long-lived objects (a kept-alive connection per watched node) out of the collector's passes.
        heap = asyncio.get_running_loop().create_task(keep_collections_short(), name="gc freeze")
        try:
            if isinstance(service.watches, HealthWatcher):
                if not config.slack.channel:
                    log.warning("slack.channel is not set: the health watch has nowhere to post its alerts")
                service.watches.start(front.channel_notifier())
            if service.releases is not None and service.releases.journal is not None:
                # Every replica looks; the journal's check-and-set lets one tell each interrupted release.
                InterruptionMonitor(service.releases, list(config.apps)).start(front.channel_notifier())
            if http:
                # lingering_time=0: a body not read (an unsigned request is answered before it is) is not then
                # read to its end by aiohttp, which logged a bad gzip body's error as an unhandled exception
                # and kept a trickling client's connection for another 10 s.
                web_app = build_web_app(app, _consul_unready(service.store), secret)
                runner = web.AppRunner(web_app, access_log=None, lingering_time=0)
                await runner.setup()
                await web.TCPSite(runner, host, port).start()
                print(f"upstream-bot serving Slack at http://{host}:{port}/slack/events", flush=True)
                try:
                    await asyncio.Event().wait()
                finally:
                    await runner.cleanup()
            else:
                try:
                    await _socket_mode(app, str(app_token))
                except AppTokenRefused as refused:
                    print(f"error: {refused}", file=sys.stderr)
                    return 2
        finally:
            heap.cancel()
            # No new watch events; what is queued for Slack gets a few seconds (the rest is logged), and
            # where the alerts went is written to Consul (or a successor would post them again).
            if isinstance(service.watches, HealthWatcher):
                service.watches.stop_rounds()
            await front.alerts.aclose(grace=3)
            if isinstance(service.watches, HealthWatcher):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3):
                        await service.watches.settle()
    return 0


# Seconds between the Socket Mode client's pings, and between its looks at its connection. A connection
# that ends without a close frame (a proxy or NAT cut it, Slack's side died) is only replaced at the next
# look: with Bolt's default (10 s) the bot missed every command for up to 10 s after a drop. aiohttp waits
# half of it (2.5 s) for each pong: far more than Slack takes to answer, and than the bot's event loop
# ever stalls (benchmarks/watch_scale.py: max 29 ms). While Slack cannot be reached, each look asks
# apps.connections.open again; slack_sdk waits out a 429 there (its Retry-After).
SOCKET_PING_INTERVAL = 5.0
SOCKET_CLOSE_TIMEOUT = 3.0  # seconds the Socket Mode connection gets to close at shutdown


# apps.connections.open's answers that no retry will change: the app-level token is wrong, or the app
# has no Socket Mode. Anything else (Slack unreachable, a 5xx) is retried by the client.
APP_TOKEN_ERRORS = (*TOKEN_ERRORS, "not_allowed_token_type", "missing_scope", "socket_mode_not_enabled")


class AppTokenRefused(Exception):
    pass


async def _socket_mode(app: AsyncApp, app_token: str) -> None:
    """Serve over Socket Mode until cancelled (SIGTERM, Ctrl-C), then close the connection. A token Slack
    refuses ends it at once (AppTokenRefused): the client would otherwise retry every few seconds for ever,
    with no listener for a readiness probe to notice."""
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    handler = AsyncSocketModeHandler(app, app_token, ping_interval=SOCKET_PING_INTERVAL)
    print("upstream-bot connecting to Slack in Socket Mode", flush=True)
    try:
        try:
            # The first URL asked here rather than by the client (which then uses it): one call to
            # apps.connections.open, as before, but its refusal is seen.
            handler.client.wss_uri = await handler.client.issue_new_wss_url()
        except SlackApiError as error:
            if slack_error(error) in APP_TOKEN_ERRORS:
                raise AppTokenRefused(
                    f"Slack refused SLACK_APP_TOKEN (apps.connections.open: {slack_error(error)}); it must be "
                    "the app-level token (xapp-...) with connections:write, and the app must have Socket Mode on"
                ) from None
            log.warning("apps.connections.open failed (%s); retrying", slack_error(error))
        except Exception as error:  # Slack unreachable right now: the client keeps trying
            log.warning("apps.connections.open failed (%s); retrying", error)
        await handler.start_async()
    finally:
        # Bolt never closes its client: the process then ended with "Unclosed client session" logged
        # and a traceback from the client's aiohttp session, and Slack saw the connection vanish instead
        # of a close frame. Bounded: a Slack that does not answer the close frame must not hold the exit.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT):
                await handler.close_async()


READY_TIMEOUT = 2.0  # seconds /readyz waits for Consul


def _consul_unready(store: object) -> Callable[[], Awaitable[str | None]]:
    """For /readyz: None while Consul answers (status/leader, within READY_TIMEOUT), else why not."""

    async def unready() -> str | None:
        if not isinstance(store, ConsulStore):
            return None
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                leader = await store.leader()
        except StoreError as error:
            return f"Consul cannot be read: {error.message}"
        except TimeoutError:
            return f"Consul did not answer within {READY_TIMEOUT:g} s"
        except Exception as error:  # e.g. an answer that is not Consul's (HTML from a proxy): not ready
            return f"Consul cannot be read: {type(error).__name__}: {error}"
        return None if leader else "Consul has no leader"

    return unready
