"""Lean HTTP health probes for the watch: GET over a kept-alive connection per node, on asyncio directly.

The watch probes thousands of nodes every few seconds on the event loop that also acknowledges Slack
commands; httpx costs ~2.5 ms of CPU a probe, too much for that. `LeanProber` speaks just enough HTTP/1.1
for a verdict, with an `asyncio.Protocol` per connection: no streams, no task per probe, one timer per
probe. Verdicts and details are HttpProber's: 2xx/3xx healthy (no redirect followed), else
"503 Service Unavailable" (status and reason phrase as sent), "timeout after 3 s" (the whole probe,
connect included), "connection refused", ...

The verdict is the status: a body is read only to keep the connection for the next probe (by
Content-Length, up to MAX_BODY; it is read after the verdict, within the probe's timeout). A chunked or
close-delimited body, a larger one, `Connection: close` or HTTP/1.0 without keep-alive: the connection is
closed once the status is known. A kept-alive connection that the node closed is dropped as soon as its
FIN is seen; one that the node closes or resets just as a request goes out (no response byte) is retried
once on a fresh connection (GET is idempotent), so a node's keep-alive timeout never reads as a failure.

`https://` (and any URL it does not handle: credentials, non-ASCII, spaces) goes to the fallback Prober.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import resource
from urllib.parse import urlsplit

from bot.health.prober import connect_reason
from commands.interfaces import Prober, ProbeResult
from commands.versions import shown_version

MAX_HEAD = 64 * 1024  # status line and headers
MAX_BODY = 1024 * 1024  # a larger Content-Length body is not read: the connection is closed instead
FD_TARGET = 65536  # the soft RLIMIT_NOFILE is raised towards this (never above the hard limit)

_IDLE, _WAITING, _DRAINING, _CLOSED = range(4)
_NO_BODY_STATUSES = frozenset((204, 304))
_UNSET = object()


class _Failure:
    """What a connection says instead of a status: `retryable` when nothing at all came back."""

    __slots__ = ("detail", "retryable")

    def __init__(self, detail: str, retryable: bool = False) -> None:
        self.detail = detail
        self.retryable = retryable


_TIMEOUT = _Failure("timeout")


class _Target:
    __slots__ = ("host", "key", "port", "request")

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.key = (host, port)


def _target(url: str) -> _Target | None:
    """Host, port and the request bytes for an `http://` URL; None for what goes to the fallback."""
    if not url.isascii() or any(c in url for c in " \t\r\n\x00"):
        return None
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() != "http" or not parts.hostname or parts.username is not None:
            return None
        host, port = parts.hostname, parts.port or 80
    except ValueError:  # a bad port
        return None
    authority = f"[{host}]" if ":" in host else host
    if port != 80:
        authority = f"{authority}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: upstream-bot\r\nAccept: */*\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode("ascii")
    return _Target(host, port, request)


def raise_fd_limit(target: int | None = FD_TARGET) -> int:
    """Raise the soft RLIMIT_NOFILE towards `target` (never above the hard limit, never lowered; None:
    leave it); every kept-alive node holds a descriptor. Returns the soft limit in force."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 1024
    if target is not None:
        wanted = target if hard == resource.RLIM_INFINITY else min(target, hard)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
    return FD_TARGET if soft == resource.RLIM_INFINITY else soft


class _Connection(asyncio.Protocol):
    """One connection to a node; parses the response in `data_received` and resolves the probe's future."""

    __slots__ = (
        "body_left",
        "buffer",
        "got_bytes",
        "idle_since",
        "key",
        "prober",
        "reusable",
        "state",
        "timer",
        "transport",
        "waiter",
    )

    def __init__(self, prober: LeanProber, key: tuple[str, int]) -> None:
        self.prober = prober
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.waiter: asyncio.Future[object] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.buffer = bytearray()
        self.got_bytes = False
        self.body_left = 0
        self.reusable = False
        self.idle_since = 0.0

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.prober._live.add(self)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _WAITING:
            self.got_bytes = True
            buffer = self.buffer
            start = max(0, len(buffer) - 3)
            buffer += data
            self._parse(start)
        elif state == _DRAINING:
            self.body_left -= len(data)
            if self.body_left == 0:
                self._done()
            elif self.body_left < 0:  # more than the body: not a clean boundary to reuse
                self._close()
        elif state == _IDLE:  # nothing was asked (e.g. a 408 before closing): not reusable
            self.prober._forget(self)
            self._close()

    def eof_received(self) -> bool:
        if self.state == _WAITING:
            self._resolve(
                _Failure("connection closed before a response", retryable=True)
                if not self.got_bytes
                else _Failure("connection closed in the middle of the response headers")
            )
        self._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == _WAITING:
            reason = "connection closed" if exc is None else _error_text(exc)
            if self.got_bytes:
                self._resolve(_Failure(f"{reason} in the middle of the response headers"))
            else:
                self._resolve(_Failure(f"{reason} before a response", retryable=True))
        self.state = _CLOSED
        self.prober._forget(self)
        self.prober._live.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # the exchange

    def send(self, request: bytes, deadline: float, loop: asyncio.AbstractEventLoop) -> asyncio.Future[object]:
        """Send the request; the future gets (status, reason) or a _Failure."""
        self.state = _WAITING
        self.got_bytes = False
        self.waiter = waiter = loop.create_future()
        self.timer = loop.call_at(deadline, self._deadline_passed)
        self.transport.write(request)  # type: ignore[union-attr]
        return waiter

    def _parse(self, start: int) -> None:
        buffer = self.buffer
        while True:
            end, sep = buffer.find(b"\r\n\r\n", start), 4
            bare = buffer.find(b"\n\n", start)  # bare-LF line endings, as httpx (h11) accepts them
            if bare >= 0 and (end < 0 or bare < end):
                end, sep = bare, 2
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._fail(f"response headers larger than {MAX_HEAD // 1024} KiB")
                return
            if end + sep > MAX_HEAD:
                self._fail(f"response headers larger than {MAX_HEAD // 1024} KiB")
                return
            line_end = buffer.find(b"\n")
            status_line = bytes(buffer[:line_end]).rstrip(b"\r")
            parts = status_line.split(b" ", 2)
            code = parts[1] if len(parts) > 1 else b""
            if not parts[0].startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
                self._fail(f"not an HTTP response: {status_line[:60]!r}")
                return
            status = int(code)
            if 100 <= status < 200 and status != 101:  # interim (100 Continue, 103 Early Hints): skip it
                del buffer[: end + sep]
                start = 0
                continue
            reason = parts[2].decode("ascii", "ignore").strip() if len(parts) > 2 else ""
            block = bytes(buffer[line_end + 1 : end]).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            raw = b"\r\n" + block
            headers = raw.lower()
            body = len(buffer) - end - sep
            self.buffer = bytearray()
            self._head_done(status, reason, parts[0], headers, body, raw)
            return

    def _head_done(self, status: int, reason: str, version: bytes, headers: bytes, body: int, raw: bytes) -> None:
        connection = _header(headers, b"connection")
        if version == b"HTTP/1.1":
            reusable = connection is None or b"close" not in connection
        else:
            reusable = connection is not None and b"keep-alive" in connection
        length = 0
        if status < 200:  # 101 Switching Protocols: HTTP no more
            reusable = False
        elif status in _NO_BODY_STATUSES:
            pass
        elif _header(headers, b"transfer-encoding") is not None:
            reusable = False  # chunked: the verdict needs only the status
        else:
            value = _header(headers, b"content-length")
            if value is None or not value.strip().isdigit():
                reusable = False  # close-delimited (or a value we do not trust)
            else:
                length = int(value)
                if length > MAX_BODY:
                    reusable = False
        self._resolve((status, reason, raw))  # the headers as sent: for a probe that asks for one of them
        if not reusable or body > length:
            self._close()
        elif body == length:
            self._done()
        else:
            self.body_left = length - body
            self.state = _DRAINING

    def _resolve(self, outcome: object) -> None:
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    def _fail(self, detail: str) -> None:
        self._resolve(_Failure(detail))
        self._close()

    def _done(self) -> None:
        """The response is complete and the connection reusable."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.prober._release(self)

    def _deadline_passed(self) -> None:
        self.timer = None
        if self.state == _WAITING:
            self._resolve(_TIMEOUT)
        self._close()

    def _close(self) -> None:
        if self.state == _WAITING:
            self._resolve(_Failure("connection closed before a response"))
        self.state = _CLOSED
        self.waiter = None
        self.prober._forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()  # nothing of ours is left to send; no lingering FIN_WAIT on our side


def _header(headers: bytes, name: bytes, source: bytes | None = None) -> bytes | None:
    """The first value of `name` in a lowercased header block that starts with CRLF (None when absent),
    cut from `source` (the block as sent: bytes.lower() keeps every offset) when given, so a value such
    as a version `2.0-RC1` keeps its case."""
    at = headers.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    stop = headers.find(b"\r\n", start)
    text = headers if source is None else source
    return text[start:] if stop < 0 else text[start:stop]


def _error_text(error: BaseException) -> str:
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, OSError) and error.strerror:
        return f"connection lost ({error.strerror})"
    return f"connection lost ({type(error).__name__}: {error})"


class LeanProber:
    """A `Prober` for the health watch: `http://` over kept-alive connections, the rest to `fallback`.

    Idle connections are kept per (host, port), at most `max_idle_per_key` each and `max_idle_total` in
    all (None: the soft RLIMIT_NOFILE less 2048, or half of it if that is more); the oldest beyond a cap
    is closed, and so is any idle for `max_idle_age` seconds. Unless `raise_nofile` is False, the soft
    RLIMIT_NOFILE is first raised towards FD_TARGET (the hard limit permitting): 10,000 kept-alive nodes
    need as many descriptors. One event loop: the one of its first probe. `aclose()` closes every
    connection, idle or in use (not the fallback's).
    """

    def __init__(
        self,
        fallback: Prober,
        *,
        max_idle_per_key: int = 2,
        max_idle_total: int | None = None,
        max_idle_age: float = 30.0,
        raise_nofile: bool = True,
    ) -> None:
        self.fallback = fallback
        self.max_idle_per_key = max_idle_per_key
        self.max_idle_age = max_idle_age
        soft = raise_fd_limit(FD_TARGET if raise_nofile else None)
        if max_idle_total is None:
            # Leave room for everything else the bot opens (and for the probes in flight).
            max_idle_total = max(soft // 2, soft - 2048)
        self.max_idle_total = max_idle_total
        self._targets: dict[str, _Target | None] = {}
        self._by_key: dict[tuple[str, int], list[_Connection]] = {}
        self._idle: collections.OrderedDict[_Connection, None] = collections.OrderedDict()  # oldest first
        self._live: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.connections_opened = 0  # fresh connections, for the curious (tests, benchmarks)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def probe(self, url: str, timeout: float, header: str | None = None) -> ProbeResult:
        target = self._targets.get(url, _UNSET)
        if target is _UNSET:
            target = _target(url)
            if len(self._targets) >= 65536:
                self._targets.clear()
            self._targets[url] = target
        if target is None:
            return await self.fallback.probe(url, timeout, header)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        started = loop.time()
        try:
            outcome = await self._exchange(target, started + timeout, loop)  # type: ignore[arg-type]
        except TimeoutError:
            outcome = _TIMEOUT
        except OSError as error:
            outcome = _Failure(connect_reason(error))
        except Exception as error:  # no probe raises: say what happened
            outcome = _Failure(f"{type(error).__name__}: {error}")
        elapsed = loop.time() - started
        if outcome.__class__ is tuple:
            status, reason, raw = outcome  # type: ignore[misc]
            version = None
            if header:
                version = shown_version(_header(raw.lower(), header.lower().encode("ascii", "replace"), raw))
            return ProbeResult(200 <= status < 400, f"{status} {reason}".strip(), elapsed, version)
        if outcome is _TIMEOUT:
            return ProbeResult(False, f"timeout after {timeout:g} s", elapsed)
        return ProbeResult(False, outcome.detail, elapsed)  # type: ignore[union-attr]

    async def _exchange(self, target: _Target, deadline: float, loop: asyncio.AbstractEventLoop) -> object:
        connection = self._take(target.key, loop)
        reused = connection is not None
        if connection is None:
            connection = await self._connect(target, deadline, loop)
        outcome = await self._send(connection, target.request, deadline, loop)
        stale = outcome.__class__ is _Failure and outcome.retryable  # type: ignore[union-attr]
        if reused and (stale or (outcome.__class__ is tuple and outcome[0] == 408)):  # type: ignore[index]
            # The node closed, reset or timed out (408) a kept-alive connection as the request went out:
            # once more, afresh.
            connection = await self._connect(target, deadline, loop)
            outcome = await self._send(connection, target.request, deadline, loop)
        return outcome

    async def _connect(self, target: _Target, deadline: float, loop: asyncio.AbstractEventLoop) -> _Connection:
        async with asyncio.timeout_at(deadline):
            _, connection = await loop.create_connection(
                lambda: _Connection(self, target.key), target.host, target.port
            )
        self.connections_opened += 1
        return connection

    @staticmethod
    async def _send(
        connection: _Connection, request: bytes, deadline: float, loop: asyncio.AbstractEventLoop
    ) -> object:
        waiter = connection.send(request, deadline, loop)
        try:
            return await waiter
        except BaseException:  # cancelled: the response would come to nobody
            connection._close()
            raise

    # the idle pool

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """A new event loop (the old one's connections cannot be used from it): start afresh."""
        for connection in list(self._live):
            if connection.transport is not None and not connection.transport.is_closing():
                with contextlib.suppress(Exception):
                    connection._close()
        self._live.clear()
        self._by_key.clear()
        self._idle.clear()
        self._sweeper = None
        self._loop = loop
        self._closed = False

    def _take(self, key: tuple[str, int], loop: asyncio.AbstractEventLoop) -> _Connection | None:
        stack = self._by_key.get(key)
        if not stack:
            return None
        oldest = loop.time() - self.max_idle_age
        while stack:
            connection = stack.pop()
            del self._idle[connection]
            if connection.state == _IDLE and connection.idle_since > oldest and not connection.transport.is_closing():  # type: ignore[union-attr]
                if not stack:
                    del self._by_key[key]
                return connection
            connection._close()
        del self._by_key[key]
        return None

    def _release(self, connection: _Connection) -> None:
        if self._closed or self.max_idle_total <= 0 or self.max_idle_per_key <= 0:
            connection._close()
            return
        connection.state = _IDLE
        connection.idle_since = self._loop.time()  # type: ignore[union-attr]
        stack = self._by_key.get(connection.key)
        if stack is None:
            self._by_key[connection.key] = stack = []
        elif len(stack) >= self.max_idle_per_key:
            oldest = stack.pop(0)
            del self._idle[oldest]
            oldest._close()
        stack.append(connection)
        idle = self._idle
        idle[connection] = None
        while len(idle) > self.max_idle_total:
            oldest, _ = idle.popitem(last=False)
            self._unstack(oldest)
            oldest._close()
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(  # type: ignore[union-attr]
                next(iter(idle)).idle_since + self.max_idle_age, self._sweep
            )

    def _unstack(self, connection: _Connection) -> None:
        stack = self._by_key.get(connection.key)
        if stack is not None:
            with contextlib.suppress(ValueError):
                stack.remove(connection)
            if not stack:
                del self._by_key[connection.key]

    def _forget(self, connection: _Connection) -> None:
        """Out of the idle pool (closed by the node, or not reusable)."""
        if self._idle.pop(connection, _UNSET) is not _UNSET:
            self._unstack(connection)

    def _sweep(self) -> None:
        """Close what has been idle for max_idle_age; one timer at a time, at the next one due."""
        self._sweeper = None
        idle = self._idle
        if not idle:
            return
        loop = self._loop
        oldest = loop.time() - self.max_idle_age  # type: ignore[union-attr]
        while idle:
            connection = next(iter(idle))
            if connection.idle_since > oldest:
                self._sweeper = loop.call_at(connection.idle_since + self.max_idle_age, self._sweep)  # type: ignore[union-attr]
                return
            idle.popitem(last=False)
            self._unstack(connection)
            connection._close()

    async def aclose(self) -> None:
        """Close every connection, idle or in use; later probes open new ones."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle.clear()
        self._by_key.clear()
        for connection in list(self._live):
            connection._close()
        await asyncio.sleep(0)  # let the transports call connection_lost
        self._closed = False
