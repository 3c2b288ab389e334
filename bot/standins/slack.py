"""A Slack Web API stand-in that records every call (tests point `SLACK_API_URL` at it).

Answers the methods the bot uses like Slack does (`auth.test`, `chat.postMessage`, `chat.update`,
`chat.postEphemeral`, `usergroups.users.list`, `views.open`, ...), and records each request's
method, decoded body and token. `POST /response/<id>` stands in for a `response_url`.
`rate_limit(method, times)` answers 429 with `Retry-After` that many times.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
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


@dataclass
class SlackStandIn:
    usergroups: dict[str, list[str]] = field(default_factory=dict)
    tokens: tuple[str, ...] | None = None  # the bot tokens it accepts (None: any)

    def __post_init__(self) -> None:
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._ts = 1_700_000_000.000100
        self._rate_limits: dict[str, int] = {}

    # -- reading the record (any thread) ---------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def rate_limit(self, method: str, times: int) -> None:
        with self._lock:
            self._rate_limits[method] = times

    def wait_for(self, predicate, timeout: float = 10.0, method: str | None = None) -> Call:  # type: ignore[no-untyped-def]
        """Poll the record until a call matches, or fail with what was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for call in self.calls(method):
                if predicate(call):
                    return call
            time.sleep(0.02)
        seen = "\n".join(f"  {c.method}: {c.text[:200]!r}" for c in self.calls())
        raise AssertionError(f"no matching Slack call within {timeout} s; calls seen:\n{seen}")

    # -- HTTP ------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)  # slack_sdk sends some methods (usergroups.*) as GET
        app.router.add_post("/response/{id}", self._response_url)
        return app

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

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await self._decode(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or args.get("token")
        with self._lock:
            limited = self._rate_limits.get(method, 0)
            if limited:
                self._rate_limits[method] = limited - 1
        if limited:
            answer: dict[str, Any] = {"ok": False, "error": "ratelimited"}
        elif not token:
            answer = {"ok": False, "error": "not_authed"}
        elif self.tokens is not None and token not in self.tokens:
            answer = {"ok": False, "error": "invalid_auth"}
        else:
            answer = self._answer(method, args)
        with self._lock:
            self._calls.append(Call(method, args, token, time.time(), answer))
        if limited:
            return web.json_response(answer, status=429, headers={"Retry-After": "1"})
        return web.json_response(answer)

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
            if group not in self.usergroups:
                return {"ok": False, "error": "no_such_subteam"}
            return {"ok": True, "users": self.usergroups[group]}
        if method in ("views.open", "views.update"):
            return {"ok": True, "view": {"id": "V0STANDIN", **(args.get("view") or {})}}
        return {"ok": True}

    async def _response_url(self, request: web.Request) -> web.Response:
        args = await self._decode(request)
        with self._lock:
            self._calls.append(Call("response_url", {**args, "_id": request.match_info["id"]}, None, time.time()))
        return web.Response(text="ok")
