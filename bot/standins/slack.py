"""A Slack Web API stand-in that records every call (tests point `SLACK_API_URL` at it).

Answers the methods the bot uses like Slack does (`auth.test`, `chat.postMessage`, `chat.update`,
`chat.postEphemeral`, `usergroups.users.list`, `views.open`, ...), and records each request's
method, decoded body and token. `POST /response/<id>` stands in for a `response_url`.
`rate_limit(method, times, retry_after)` answers the next `times` calls of `method` (other methods
untouched) with 429 and that `Retry-After`, recorded with fault "status 429". User groups
(`usergroups.users.list`) are `usergroups`, changed with `set_usergroup` while the bot runs.
`apps.connections.open` (Socket Mode) takes only an app-level token (`xapp-...`) and answers the URL
`socket_mode()` gives (a `SocketModeStandIn`'s `open_url`, from bot/standins/socket_mode.py).

"Slack is down", for outage tests (every `/api/*` and `/response/*` request; never `/_standin/*`),
settable in process with `set_faults(...)` or over HTTP with `PUT /_standin/faults` {"status": 503}
(keys left out keep their value; `GET /_standin/faults` reads them), like the Consul stand-in:
- `status`: answer every call with that HTTP status and a non-JSON body (a load balancer's 503);
- `reset`: drop the connection without an answer (the client sees a disconnect / reset);
- `delay`: hang; answer (normally) only after that many seconds, or as soon as `delay` is cleared.
Every faulted request is still recorded (a hanging one when it arrives), its `fault` saying what it
met, so a test can wait for "the bot tried and Slack failed it" before asserting what happened next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web


@dataclass(frozen=True)
class Call:
    method: str  # "chat.postMessage", or "response_url" for a response_url post
    args: dict[str, Any]
    token: str | None
    at: float
    answer: dict[str, Any] = field(default_factory=dict)  # what the stand-in answered (its "ts", say)
    # "" when answered normally; else the injected fault: "status 503", "reset", or "hung" (recorded
    # when it came in; if the client still waits when the hang ends, it is answered, and recorded, again)
    fault: str = ""

    @property
    def text(self) -> str:
        """Everything a person would read in the call: text and the blocks' texts, flattened."""
        parts = [str(self.args.get("text") or "")]
        blocks = self.args.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except ValueError:
                blocks = None
        parts.append(_texts(blocks))
        return "\n".join(p for p in parts if p)


def _texts(node: Any) -> str:
    if isinstance(node, dict):
        return "\n".join(
            str(v) if k == "text" and isinstance(v, str) else _texts(v) for k, v in node.items() if k != "value"
        )
    if isinstance(node, list):
        return "\n".join(_texts(v) for v in node)
    return ""


@dataclass(frozen=True)
class Faults:
    status: int = 0  # answer every call with this HTTP status (0: off)
    reset: bool = False  # drop every connection without an answer
    delay: float = 0.0  # hang this many seconds before answering (0: off)

    @property
    def down(self) -> bool:
        return bool(self.status or self.reset or self.delay)


@dataclass
class SlackStandIn:
    usergroups: dict[str, list[str]] = field(default_factory=dict)
    tokens: tuple[str, ...] | None = None  # the bot tokens it accepts (None: any)
    # apps.connections.open's WebSocket URL, a fresh one each call (None: Socket Mode is not offered)
    socket_mode: Callable[[], str] | None = None

    def __post_init__(self) -> None:
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._ts = 1_700_000_000.000100
        self._rate_limits: dict[str, tuple[int, int]] = {}  # method -> (times left, Retry-After)
        self._faults = Faults()
        self._hangs: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []  # requests hanging now

    # -- reading the record (any thread) ---------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def set_usergroup(self, group: str, users: list[str]) -> None:
        """Change a user group's members (someone joins or leaves it), from any thread."""
        with self._lock:
            self.usergroups[group] = list(users)

    def rate_limit(self, method: str, times: int, retry_after: int = 1) -> None:
        """The next `times` calls of `method` answer 429 `ratelimited` with `Retry-After: retry_after`."""
        with self._lock:
            self._rate_limits[method] = (times, retry_after)

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set_faults(self, **changes: Any) -> Faults:
        """Change some faults (status=503, reset=True, delay=30.0); the others keep their value.
        Safe from any thread: requests read the faults under the same lock."""
        with self._lock:
            self._faults = replace(self._faults, **changes)
            if not self._faults.delay:  # the hang is lifted: wake the requests hanging now
                for loop, lifted in self._hangs:
                    loop.call_soon_threadsafe(lifted.set)
            return self._faults

    def clear_faults(self) -> None:
        """Slack is back: new requests are answered normally, and hanging ones are answered now."""
        self.set_faults(status=0, reset=False, delay=0.0)

    def wait_for(self, predicate, timeout: float = 10.0, method: str | None = None) -> Call:  # type: ignore[no-untyped-def]
        """Poll the record until a call matches, or fail with what was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for call in self.calls(method):
                if predicate(call):
                    return call
            time.sleep(0.02)
        seen = "\n".join(f"  {c.method}{f' ({c.fault})' if c.fault else ''}: {c.text[:200]!r}" for c in self.calls())
        raise AssertionError(f"no matching Slack call within {timeout} s; calls seen:\n{seen}")

    # -- HTTP ------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)  # slack_sdk sends some methods (usergroups.*) as GET
        app.router.add_post("/response/{id}", self._response_url)
        app.router.add_put("/_standin/faults", self._set_faults)
        app.router.add_get("/_standin/faults", self._get_faults)
        return app

    async def _set_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        known = {k: body[k] for k in ("status", "reset", "delay") if k in body}
        faults = self.set_faults(
            **{k: (int(v) if k == "status" else bool(v) if k == "reset" else float(v)) for k, v in known.items()}
        )
        return web.json_response(asdict(faults))

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.faults))

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    async def _fault(self, request: web.Request, call: Call) -> web.StreamResponse | None:
        """Apply the injected faults to one request, recording it when faulted: an answer to send
        instead of the real one, or None to answer normally (also after a hang, to a client still
        waiting). Hangs first, then fails, as a sick Slack would."""
        faults = self.faults
        if faults.delay:
            self._record(replace(call, fault="hung"))
            # Bounded: until the delay is over or the hang is lifted (clear_faults / PUT delay 0), so a
            # test that restores Slack also ends the requests that were hanging (and the server's shutdown
            # does not wait on them).
            lifted = asyncio.Event()
            hang = (asyncio.get_running_loop(), lifted)
            with self._lock:  # registered and re-checked under the lock set_faults changes them under
                self._hangs.append(hang)
                delay = self._faults.delay
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lifted.wait(), delay)
            finally:
                with self._lock:
                    self._hangs.remove(hang)
            if request.transport is None or request.transport.is_closing():
                # The client gave up (its timeout) and closed the connection: nobody to answer, and
                # nothing done (real Slack might have done it; a test would then see a call it cannot
                # tell from a refused one).
                return web.Response(status=504)
            faults = self.faults
            if not faults.status and not faults.reset:
                return None  # answered normally now, to a client still waiting: recorded as such
        if faults.reset:
            self._record(replace(call, fault="reset"))
            # abort(), not close(): no answer and no orderly shutdown, like a crashed proxy.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=502)  # never reaches the client
        if faults.status:
            self._record(replace(call, fault=f"status {faults.status}"))
            return web.Response(status=faults.status, text="upstream connect error or disconnect/reset")
        return None

    def _next_ts(self) -> str:
        with self._lock:
            self._ts += 0.0001
            return f"{self._ts:.6f}"

    async def _decode(self, request: web.Request) -> dict[str, Any]:
        if request.method == "GET":
            return dict(request.query)
        raw = await request.text()
        if request.content_type == "application/json":
            return json.loads(raw or "{}")
        args: dict[str, Any] = dict(parse_qsl(raw, keep_blank_values=True))
        for key in ("blocks", "attachments"):
            if isinstance(args.get(key), str):
                try:
                    args[key] = json.loads(args[key])
                except ValueError:
                    pass
        return args

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        args = await self._decode(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or args.get("token")
        failed = await self._fault(request, Call(method, args, token, time.time()))
        if failed is not None:
            return failed
        with self._lock:
            left, retry_after = self._rate_limits.get(method, (0, 0))
            if left:
                self._rate_limits[method] = (left - 1, retry_after)
        if left:
            answer: dict[str, Any] = {"ok": False, "error": "ratelimited"}
            self._record(Call(method, args, token, time.time(), answer, fault="status 429"))
            return web.json_response(answer, status=429, headers={"Retry-After": str(retry_after)})
        if not token:
            answer = {"ok": False, "error": "not_authed"}
        elif method == "apps.connections.open":
            answer = self._connections_open(token)
        elif self.tokens is not None and token not in self.tokens:
            answer = {"ok": False, "error": "invalid_auth"}
        else:
            answer = self._answer(method, args)
        self._record(Call(method, args, token, time.time(), answer))
        return web.json_response(answer)

    def _connections_open(self, token: str) -> dict[str, Any]:
        """Socket Mode's WebSocket URL. Slack wants the app-level token here (and no other token: `tokens`
        are the bot tokens, so they are not asked)."""
        if not token.startswith("xapp-"):
            return {"ok": False, "error": "not_allowed_token_type"}
        if self.socket_mode is None:  # the stand-in's own error: the test set no Socket Mode server up
            return {"ok": False, "error": "socket_mode_not_enabled"}
        return {"ok": True, "url": self.socket_mode()}

    def _answer(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://standin.slack.com/",
                "team": "Stand-in",
                "user": "upstream-bot",
                "team_id": "T0STANDIN",
                "user_id": "U0BOT",
                "bot_id": "B0BOT",
                "is_enterprise_install": False,
            }
        if method == "chat.postMessage":
            ts = self._next_ts()
            return {
                "ok": True,
                "channel": args.get("channel"),
                "ts": ts,
                "message": {"text": args.get("text"), "ts": ts, "blocks": args.get("blocks")},
            }
        if method == "chat.update":
            return {"ok": True, "channel": args.get("channel"), "ts": args.get("ts"), "text": args.get("text")}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": self._next_ts()}
        if method == "usergroups.users.list":
            group = args.get("usergroup", "")
            with self._lock:
                users = self.usergroups.get(group)
            if users is None:
                return {"ok": False, "error": "no_such_subteam"}
            return {"ok": True, "users": list(users)}
        if method in ("views.open", "views.update"):
            return {"ok": True, "view": {"id": "V0STANDIN", **(args.get("view") or {})}}
        return {"ok": True}

    async def _response_url(self, request: web.Request) -> web.StreamResponse:
        args = {**await self._decode(request), "_id": request.match_info["id"]}
        failed = await self._fault(request, Call("response_url", args, None, time.time()))
        if failed is not None:
            return failed
        self._record(Call("response_url", args, None, time.time()))
        return web.Response(text="ok")
