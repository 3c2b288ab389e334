"""HTTP transport for Slack: `POST /slack/events` (commands, interactivity), `GET /healthz` (liveness:
the process answers) and `GET /readyz` (readiness: Consul can be read; 503 with the reason otherwise) and `GET /metrics`
(Prometheus text format, bot/metrics.py).

/healthz, /readyz and /metrics carry no secret, but they are for the cluster, not for Slack: expose only
`/slack/events` to the internet (docs/configuration.md, "Running it as a service")."""

from __future__ import annotations

import asyncio
import logging
import re
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
                try:
                    why = await self.ask()
                except Exception as error:  # a check that breaks is an answer too (and shared like one)
                    log.warning("readiness check failed", exc_info=True)
                    why = f"the readiness check failed: {type(error).__name__}: {error}"
                self._answer = (time.monotonic(), why)
            return self._answer[1]


SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
MAX_SKEW = 300  # seconds a request's timestamp may be off (Slack's own rule, and Bolt's)
BODY_WITHIN = 10.0  # seconds a request's body may take to arrive (a client trickling it holds a handler)


async def _unsigned(request: web.Request, verifier: SignatureVerifier) -> web.Response | None:
    """The answer to a request Slack did not sign (None: signed). The headers are checked first, so a
    request without a plausible signature is refused before its body is read; nothing of a body is read
    for its meaning until its signature holds, so an outsider cannot learn how bodies are parsed."""
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    signature = request.headers.get("X-Slack-Signature", "")
    # At most 12 digits: Unix seconds for 30,000 years, and int() of 5,000 digits would raise.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return _invalid()
    if abs(time.time() - int(timestamp)) > MAX_SKEW:
        return _invalid()
    if not SIGNATURE.fullmatch(signature):
        return _invalid()
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        # Slack never compresses what it sends, and the signature is of the bytes as sent: nothing to
        # decompress (aiohttp would, before the signature could be checked).
        return web.json_response({"error": "Content-Encoding is not taken"}, status=415)
    try:
        async with asyncio.timeout(BODY_WITHIN):
            body = await request.read()
    except TimeoutError:
        return web.json_response({"error": "request body too slow"}, status=408)
    except web.HTTPException:
        raise  # aiohttp's own answer (413 for a body over client_max_size)
    except Exception as error:  # a body that cannot be read (bad chunked framing): say so, no traceback
        log.warning("Slack request body could not be read (%s: %s)", type(error).__name__, error)
        return web.json_response({"error": "unreadable body"}, status=400)
    try:
        valid = verifier.is_valid(body, timestamp, signature)
    except Exception:  # whatever slack_sdk trips over is not a valid signature
        valid = False
    return None if valid else _invalid()


def _invalid() -> web.Response:
    return web.json_response({"error": "invalid request"}, status=401)


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
            refused = await _unsigned(request, verifier)
            if refused is not None:
                return refused
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
