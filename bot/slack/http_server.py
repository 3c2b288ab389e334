"""HTTP transport for Slack: `POST /slack/events` (commands, interactivity), `GET /healthz` (liveness:
the process answers) and `GET /readyz` (readiness: Consul can be read; 503 with the reason otherwise) and `GET /metrics`
(Prometheus text format, bot/metrics.py).

/healthz, /readyz and /metrics carry no secret, but they are for the cluster, not for Slack: expose only
`/slack/events` to the internet (docs/configuration.md, "Running it as a service")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.signature import SignatureVerifier

from bot.metrics import ACK_SECONDS, CONTENT_TYPE, exposition
from bot.slack.front import MALFORMED

log = logging.getLogger(__name__)
READY_FOR = 1.0  # seconds one answer of `unready` serves /readyz (probes every second cost one Consul call)

Unready = Callable[[], Awaitable[str | None]]


class SharedAnswer:
    """`unready` asked at most once at a time and at most once a READY_FOR: a burst of /readyz (many
    kubelets, a scraper gone wild) never becomes a burst of Consul calls or of threads waiting on it."""

    def __init__(self, ask: Unready, fresh_for: float = READY_FOR) -> None:
        self.ask = ask
        self.fresh_for = fresh_for
        self._answer: tuple[float, str | None] | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> str | None:
        async with self._lock:  # the callers waiting here take the answer the first one got
            now = time.monotonic()
            if self._answer is None or now - self._answer[0] >= self.fresh_for:
                self._answer = (time.monotonic(), await self.ask())
            return self._answer[1]


def build_web_app(
    app: AsyncApp, unready: Unready | None = None, signing_secret: str | None = None
) -> web.Application:
    """`unready`: why the bot cannot work now (None: ready). `signing_secret`: requests are checked
    against it before their body is read (Bolt checks again: it parses first)."""
    verifier = SignatureVerifier(signing_secret) if signing_secret else None
    ready = SharedAnswer(unready) if unready is not None else None

    async def events(request: web.Request) -> web.Response:
        started = time.perf_counter()
        if verifier is not None:
            body = await request.read()
            timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
            signature = request.headers.get("X-Slack-Signature", "")
            try:
                valid = verifier.is_valid(body, timestamp, signature)
            except ValueError:  # a timestamp that is not a number (slack_sdk's int() of it)
                valid = False
            if not valid:
                # Not from Slack (or too old): nothing of it is read, not even to say it is malformed.
                return web.json_response({"error": "invalid request"}, status=401)
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
        why = await ready() if ready is not None else None
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
