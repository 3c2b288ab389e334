"""HTTP transport for Slack: `POST /slack/events` (commands, interactivity), `GET /healthz` (liveness:
the process answers) and `GET /readyz` (readiness: Consul can be read; 503 with the reason otherwise) and `GET /metrics`
(Prometheus text format, bot/metrics.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp

from bot.metrics import ACK_SECONDS, CONTENT_TYPE, exposition
from bot.slack.front import MALFORMED

log = logging.getLogger(__name__)


def build_web_app(app: AsyncApp, unready: Callable[[], Awaitable[str | None]] | None = None) -> web.Application:
    """`unready`: why the bot cannot work now (None: ready)."""

    async def events(request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            bolt_response = await app.async_dispatch(await to_bolt_request(request))
        except MALFORMED as error:  # a body Bolt cannot even read (`payload=5`): nothing was done
            log.warning("malformed Slack request refused (%s: %s)", type(error).__name__, error)
            return web.json_response({"ok": False, "error": "malformed request"}, status=400)
        response = await to_aiohttp_response(bolt_response)
        ACK_SECONDS.observe(time.perf_counter() - started)
        if response.status == 200:
            # Taken: handlers are idempotent, but a retry would only repeat work.
            response.headers["X-Slack-No-Retries"] = "1"
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        why = await unready() if unready is not None else None
        if why:
            return web.json_response({"ok": False, "reason": why}, status=503)
        return web.json_response({"ok": True})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE})

    web_app = web.Application()
    web_app.router.add_post("/slack/events", events)
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/readyz", readyz)
    web_app.router.add_get("/metrics", metrics)
    return web_app
