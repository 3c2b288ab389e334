"""A Slack Socket Mode stand-in: the WebSocket server that `apps.connections.open` sends an app to.

Written from Slack's Socket Mode docs and slack_sdk's client (slack_sdk/socket_mode): the Web API
stand-in's `apps.connections.open` hands out `ws://.../link/?ticket=...&app_id=...` from `open_url()`
(a fresh ticket each call; a connection with a ticket never handed out is refused with 401). Then:

- on connect it sends `hello` (`num_connections`, `debug_info`, `connection_info.app_id`), as Slack does;
- `push(type, payload)` sends an envelope (`slash_commands`, `interactive`, ...) on the newest open
  connection, as `{"envelope_id", "type", "payload", "accepts_response_payload", "retry_attempt",
  "retry_reason"}`, and records when it was sent;
- every text frame the app sends back with an `envelope_id` is recorded as an acknowledgement (with its
  optional `payload` and the time it arrived); anything else the app sends is kept in `unexpected()`;
- `disconnect(reason)` sends `{"type": "disconnect", "reason": ...}` ("refresh_requested", "warning") and
  closes the connection itself `close_after` seconds later if the app has not (Slack does the same);
  `drop()` aborts the TCP connection with no close frame (a crashed proxy, a NAT that forgot it).

Serve `app()` with `ServerThread`, then give `serve_at(server.url)` the address it runs at. Every record
is read under a lock, from any thread; `push`, `disconnect` and `drop` run on the server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import WSMsgType, web

STEP = 0.02  # how often the waits below look again


@dataclass(frozen=True)
class Connection:
    number: int  # 1, 2, ... in the order the app opened them
    ticket: str  # from the apps.connections.open answer it used
    opened_at: float
    hello_at: float | None = None  # when its hello went out: from then on the app may be sent envelopes
    disconnect_at: float | None = None  # when a `disconnect` message was sent on it
    closed_at: float | None = None
    # "app" (it sent a close frame), "lost" (its end went away without one), "server" (closed from here
    # after a disconnect message the app did not act on) or "dropped" (aborted from here)
    closed_by: str = ""


@dataclass(frozen=True)
class Envelope:
    envelope_id: str
    type: str
    payload: dict[str, Any]
    connection: int
    sent_at: float


@dataclass(frozen=True)
class Ack:
    envelope_id: str
    payload: dict[str, Any] | None  # what the app answered with (a slash command's response), if anything
    connection: int
    at: float


class SocketModeStandIn:
    def __init__(self, app_id: str = "A0BOT") -> None:
        self.app_id = app_id
        self._base = ""
        self._lock = threading.Lock()
        self._tickets: set[str] = set()
        self._connections: list[Connection] = []
        self._sockets: dict[int, tuple[web.WebSocketResponse, web.Request]] = {}  # the open ones
        self._envelopes: list[Envelope] = []
        self._acks: list[Ack] = []
        self._unexpected: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references

    # -- wiring ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/link/", self._link)
        return app

    def serve_at(self, http_url: str) -> SocketModeStandIn:
        """Where `app()` is served (ServerThread.url): the base of the URLs `open_url` hands out."""
        self._base = "ws://" + http_url.removeprefix("http://").rstrip("/")
        return self

    def open_url(self) -> str:
        """A WebSocket URL with a fresh ticket: what apps.connections.open answers."""
        if not self._base:
            raise RuntimeError("serve_at() was not called: the stand-in does not know its address")
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tickets.add(ticket)
        return f"{self._base}/link/?ticket={ticket}&app_id={self.app_id}"

    # -- reading the record (any thread) ---------------------------------------------------------

    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._connections)

    def open_connections(self) -> list[int]:
        with self._lock:
            return sorted(self._sockets)

    def envelopes(self) -> list[Envelope]:
        with self._lock:
            return list(self._envelopes)

    def acks(self, envelope_id: str | None = None) -> list[Ack]:
        with self._lock:
            return [a for a in self._acks if envelope_id is None or a.envelope_id == envelope_id]

    def unexpected(self) -> list[str]:
        with self._lock:
            return list(self._unexpected)

    def wait_ack(self, envelope_id: str, timeout: float = 10.0) -> Ack:
        """The first acknowledgement of `envelope_id`, polled until `timeout`."""
        found = _poll(lambda: self.acks(envelope_id), timeout)
        if not found:
            raise AssertionError(f"envelope {envelope_id} was not acknowledged within {timeout} s; acks: {self.acks()}")
        return found[0]

    def wait_connection(self, number: int, timeout: float = 10.0) -> Connection:
        """Connection `number` once it is open and greeted (its hello sent), polled until `timeout`."""

        def greeted() -> Connection | None:
            seen = self.connections()
            return seen[number - 1] if len(seen) >= number and seen[number - 1].hello_at else None

        found = _poll(greeted, timeout)
        if found is None:
            raise AssertionError(f"connection {number} not open within {timeout} s; seen: {self.connections()}")
        return found

    # -- acting on the connections (any thread; done on the server's loop) -----------------------

    def push(self, type: str, payload: dict[str, Any], retry_attempt: int = 0, retry_reason: str = "") -> Envelope:
        """Send an envelope on the newest open connection, as Slack sends a command or a press."""
        envelope_id = str(uuid.uuid4())
        message = {
            "envelope_id": envelope_id,
            "type": type,
            "payload": payload,
            "accepts_response_payload": type in ("slash_commands", "interactive"),
            "retry_attempt": retry_attempt,
            "retry_reason": retry_reason,
        }
        return self._run(self._send_envelope(message))

    def disconnect(self, reason: str = "refresh_requested", close_after: float = 2.0) -> int:
        """Ask the app to reconnect (Slack's `disconnect` message) on the newest connection; close that
        connection from here `close_after` seconds later if the app has not closed it. Its number."""
        return self._run(self._disconnect(reason, close_after))

    def drop(self) -> int:
        """Abort the newest connection: no close frame, the TCP connection just ends. Its number."""
        return self._run(self._drop())

    def _run(self, work: Any) -> Any:
        if self._loop is None:
            work.close()
            raise AssertionError("no app has connected yet")
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(10)

    def _newest(self) -> tuple[int, web.WebSocketResponse, web.Request]:
        with self._lock:
            if not self._sockets:
                raise AssertionError(f"no open connection; seen: {self._connections}")
            number = max(self._sockets)
            return number, *self._sockets[number]

    async def _send_envelope(self, message: dict[str, Any]) -> Envelope:
        number, socket, _ = self._newest()
        envelope = Envelope(message["envelope_id"], message["type"], message["payload"], number, time.time())
        with self._lock:  # recorded before it is sent: an ack can then never come before its envelope
            self._envelopes.append(envelope)
        await socket.send_str(json.dumps(message))
        return envelope

    async def _disconnect(self, reason: str, close_after: float) -> int:
        number, socket, _ = self._newest()
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-standin"}}
        self._update(number, disconnect_at=time.time())
        await socket.send_str(json.dumps(message))
        closing = asyncio.get_running_loop().create_task(self._close_later(number, socket, close_after))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        return number

    async def _close_later(self, number: int, socket: web.WebSocketResponse, after: float) -> None:
        await asyncio.sleep(after)
        if not socket.closed:
            self._closed(number, "server")
            await socket.close(code=1001, message=b"refresh")

    async def _drop(self) -> int:
        number, _, request = self._newest()
        self._closed(number, "dropped")
        if request.transport is not None:
            request.transport.abort()
        return number

    # -- the WebSocket -----------------------------------------------------------------------------

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self._lock:
            known = ticket in self._tickets
        if not known:
            return web.Response(status=401, text="invalid ticket")
        self._loop = asyncio.get_running_loop()
        socket = web.WebSocketResponse()  # answers the app's pings (autoping), as Slack does
        await socket.prepare(request)
        number = self._opened(ticket, socket, request)
        await socket.send_str(json.dumps(self._hello()))
        self._update(number, hello_at=time.time())
        ended_by = "lost"
        try:
            ended_by = await self._read(number, socket)
        finally:
            self._closed(number, ended_by)
        return socket

    async def _read(self, number: int, socket: web.WebSocketResponse) -> str:
        """Record what the app sends until the connection ends: "app" when the app ended it with a close
        frame, "lost" when its end just went away (the app's process exited without closing it)."""
        while True:
            message = await socket.receive()
            if message.type == WSMsgType.TEXT:
                self._received(number, message.data)
            elif message.type == WSMsgType.CLOSE:
                return "app"
            elif message.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return "lost"
            else:
                with self._lock:
                    self._unexpected.append(repr(message))

    def _opened(self, ticket: str, socket: web.WebSocketResponse, request: web.Request) -> int:
        with self._lock:
            number = len(self._connections) + 1
            self._connections.append(Connection(number, ticket, time.time()))
            self._sockets[number] = (socket, request)
            return number

    def _hello(self) -> dict[str, Any]:
        with self._lock:
            count = len(self._sockets)
        return {
            "type": "hello",
            "num_connections": count,
            "debug_info": {"host": "applink-standin", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": self.app_id},
        }

    def _received(self, number: int, data: str) -> None:
        with contextlib.suppress(ValueError):
            message = json.loads(data)
            if isinstance(message, dict) and isinstance(message.get("envelope_id"), str):
                with self._lock:
                    self._acks.append(Ack(message["envelope_id"], message.get("payload"), number, time.time()))
                return
        with self._lock:
            self._unexpected.append(data)

    def _closed(self, number: int, by: str) -> None:
        """The first to see the end says who ended it: the app, this server, or a drop."""
        with self._lock:
            ended = self._sockets.pop(number, None) is not None
        if ended:
            self._update(number, closed_at=time.time(), closed_by=by)

    def _update(self, number: int, **changes: Any) -> None:
        with self._lock:
            self._connections[number - 1] = replace(self._connections[number - 1], **changes)


def _poll(condition: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(STEP)
