"""LeanProber against real servers on 127.0.0.1: raw asyncio servers that misbehave on purpose, an aiohttp
server with a short keep-alive, the sample service as a process; verdicts compared with HttpProber's."""

from __future__ import annotations

import asyncio
import resource
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web

from bot.health.lean_prober import FD_TARGET, MAX_HEAD, LeanProber
from bot.health.prober import HttpProber
from bot.processes import free_port
from commands.interfaces import ProbeResult

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\npong\n"


async def eventually(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.01)


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """The next request's head, or None when the client closed the connection."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A real asyncio server on 127.0.0.1; `handler` runs per connection. Counts what it sees."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0  # accepted
        self.closed = 0  # connections whose client side closed (or that the handler ended)
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/ping") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed += 1
            writer.close()

    async def next_request(self, reader: asyncio.StreamReader) -> bytes | None:
        request = await read_request(reader)
        if request is not None:
            self.requests.append(request)
        return request

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()


async def answer_all(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A well-behaved keep-alive server: 200 for every request until the client closes."""
    while await server.next_request(reader) is not None:
        writer.write(OK)
    # the client closed: `closed` counts it


class Fallback:
    """The prober for what LeanProber does not handle: records the URLs."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    async def probe(self, url: str, timeout: float, header: str | None = None) -> ProbeResult:
        self.urls.append(url)
        return ProbeResult(False, "from the fallback")


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    started: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        server = await RawServer(handler).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


@pytest.fixture
async def fallback() -> Fallback:
    return Fallback()


@pytest.fixture
async def lean(fallback: Fallback) -> AsyncIterator[LeanProber]:
    prober = LeanProber(fallback)
    yield prober
    await prober.aclose()


@pytest.fixture
async def httpx_prober() -> AsyncIterator[HttpProber]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield HttpProber(client)


async def by_path(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    statuses = {
        b"/ok": b"200 OK",
        b"/moved": b"301 Moved Permanently\r\nLocation: /ok",
        b"/down": b"503 Service Unavailable",
        b"/maintenance": b"503 Down for maintenance",
        b"/teapot": b"418 I'm a teapot",
        b"/empty": b"204 No Content",
        b"/bare": b"500",  # no reason phrase
    }
    while (request := await server.next_request(reader)) is not None:
        path = request.split(b" ")[1]
        status = statuses.get(path.split(b"?")[0], b"404 Not Found")
        body = b"" if status.startswith(b"204") else b"body\n"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


async def test_verdicts_and_details_match_httpprober(servers, lean, httpx_prober) -> None:
    server = await servers(by_path)
    expected = {
        "/ok": (True, "200 OK"),
        "/ok?probe=1&x=y": (True, "200 OK"),
        "/moved": (True, "301 Moved Permanently"),  # not followed
        "/down": (False, "503 Service Unavailable"),
        "/maintenance": (False, "503 Down for maintenance"),
        "/teapot": (False, "418 I'm a teapot"),
        "/empty": (True, "204 No Content"),
        "/bare": (False, "500"),
        "/missing": (False, "404 Not Found"),
    }
    for path, verdict in expected.items():
        mine = await lean.probe(server.url(path), 3)
        theirs = await httpx_prober.probe(server.url(path), 3)
        assert (mine.healthy, mine.detail) == verdict, path
        assert (theirs.healthy, theirs.detail) == verdict, path
        assert 0 <= mine.seconds < 3
    lean_requests = [r for r in server.requests if b"upstream-bot" in r]
    assert lean_requests[0].startswith(b"GET /ok HTTP/1.1\r\n")
    assert lean_requests[1].startswith(b"GET /ok?probe=1&x=y HTTP/1.1\r\n")  # path and query as given
    head = lean_requests[0].lower()
    assert f"\r\nhost: 127.0.0.1:{server.port}\r\n".encode() in head
    assert b"\r\nuser-agent: upstream-bot\r\n" in head and b"\r\nconnection: keep-alive\r\n" in head


async def test_sample_service_process(services, lean, httpx_prober) -> None:
    for path, verdict in (("/ping", (True, "200 OK")), ("/nope", (False, "404 Not Found"))):
        url = f"http://127.0.0.1:{services[0]}{path}"
        mine, theirs = await lean.probe(url, 3), await httpx_prober.probe(url, 3)
        assert (mine.healthy, mine.detail) == (theirs.healthy, theirs.detail) == verdict


async def test_version_header_read_by_both_probers(services, lean, httpx_prober) -> None:
    """The sample service names its deployed version in X-App-Version: what /upstream status shows."""
    url = f"http://127.0.0.1:{services[0]}/ping"
    for prober in (lean, httpx_prober):
        asked = await prober.probe(url, 3, "x-app-version")  # header names match whatever their case
        assert asked.healthy and asked.version == "1"
        assert (await prober.probe(url, 3)).version is None  # not asked: not read
        assert (await prober.probe(url, 3, "X-Build")).version is None  # asked, absent


async def odd_versions(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    values = {
        b"/long": b"v" * 500,
        b"/control": b"1.2\x1b[31m.3",
        b"/blank": b"   ",
        b"/bad": b"2.0",
        b"/case": b"Release-2.0-RC1+SHA.ABCDEF",
        b"/twice": b"2.1\r\nX-APP-VERSION: 9.9",  # the header twice: the first counts, for either prober
    }
    while (request := await server.next_request(reader)) is not None:
        path = request.split(b" ")[1]
        status = b"503 Service Unavailable" if path == b"/bad" else b"200 OK"
        writer.write(b"HTTP/1.1 " + status + b"\r\nX-App-Version: " + values[path] + b"\r\nContent-Length: 0\r\n\r\n")


async def test_version_from_the_node_is_made_safe_to_show(servers, lean) -> None:
    server = await servers(odd_versions)
    long = await lean.probe(server.url("/long"), 3, "X-App-Version")
    assert long.version == "v" * 63 + "…"  # a node cannot flood the status message
    assert (await lean.probe(server.url("/control"), 3, "X-App-Version")).version == "1.2[31m.3"  # no escape
    assert (await lean.probe(server.url("/blank"), 3, "X-App-Version")).version is None
    failing = await lean.probe(server.url("/bad"), 3, "X-App-Version")
    assert not failing.healthy and failing.version == "2.0"  # a failing node still says what it runs


async def test_a_version_keeps_its_case_and_the_first_of_two_counts_for_both_probers(
    servers, lean, httpx_prober
) -> None:
    server = await servers(odd_versions)
    for prober in (lean, httpx_prober):
        assert (await prober.probe(server.url("/case"), 3, "x-app-version")).version == "Release-2.0-RC1+SHA.ABCDEF"
        assert (await prober.probe(server.url("/twice"), 3, "X-App-Version")).version == "2.1"


async def test_refused_port(lean, httpx_prober) -> None:
    url = f"http://127.0.0.1:{free_port()}/ping"
    mine, theirs = await lean.probe(url, 3), await httpx_prober.probe(url, 3)
    assert (mine.healthy, mine.detail) == (theirs.healthy, theirs.detail) == (False, "connection refused")


async def never_answers(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await server.next_request(reader)
    await reader.read()  # until the client closes


async def slow_headers(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await server.next_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for _ in range(400):  # a header byte every 25 ms, for 10 s at most
        writer.write(b"X")
        await writer.drain()
        await asyncio.sleep(0.025)


async def probe_timed(prober: LeanProber | HttpProber, url: str, timeout: float) -> tuple[ProbeResult, float]:
    started = time.monotonic()
    result = await prober.probe(url, timeout)
    return result, time.monotonic() - started


@pytest.mark.parametrize("handler", [never_answers, slow_headers])
async def test_timeout_bounds_the_probe(servers, lean, httpx_prober, handler) -> None:
    server = await servers(handler)
    mine, took = await probe_timed(lean, server.url(), 0.3)
    assert (mine.healthy, mine.detail) == (False, "timeout after 0.3 s")
    assert 0.3 <= took < 0.8
    await eventually(lambda: server.closed == 1, "the connection closed")
    assert lean.idle_connections == 0
    if handler is never_answers:  # (httpx's timeout is per read: a slow drip of headers outlasts it)
        theirs = await httpx_prober.probe(server.url(), 0.3)
        assert theirs.detail == mine.detail


async def test_timeout_includes_connect(lean) -> None:
    # A listener that never accepts, its backlog full: the next connect hangs (SYNs dropped).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            result, took = await probe_timed(lean, f"http://127.0.0.1:{port}/ping", 0.3)
    assert (result.healthy, result.detail) == (False, "timeout after 0.3 s")
    assert 0.3 <= took < 0.8


async def test_keep_alive_one_connection_for_many_probes(servers, lean) -> None:
    server = await servers(answer_all)
    for _ in range(20):
        assert (await lean.probe(server.url(), 3)).detail == "200 OK"
    assert len(server.requests) == 20
    assert server.connections == 1 and lean.connections_opened == 1
    assert lean.idle_connections == 1


async def test_fin_from_the_server_is_seen(servers, lean) -> None:
    async def answer_then_close(server: RawServer, reader, writer) -> None:
        await server.next_request(reader)
        writer.write(OK)  # says nothing of closing, then closes: a keep-alive timeout of 0
        await writer.drain()

    server = await servers(answer_then_close)
    assert (await lean.probe(server.url(), 3)).healthy
    await eventually(lambda: lean.idle_connections == 0, "the closed connection left the pool")
    result = await lean.probe(server.url(), 3)
    assert (result.healthy, result.detail) == (True, "200 OK")
    assert server.connections == 2 and len(server.requests) == 2


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_kept_connection_dropped_on_the_next_request_is_retried_once(servers, lean, how) -> None:
    async def one_answer_per_connection(server: RawServer, reader, writer) -> None:
        await server.next_request(reader)
        writer.write(OK)
        await server.next_request(reader)  # the next request on this connection: dropped unanswered
        if how == "reset":
            reset(writer)

    server = await servers(one_answer_per_connection)
    for n in range(1, 6):
        result = await lean.probe(server.url(), 3)
        assert (result.healthy, result.detail) == (True, "200 OK"), n
    # Each probe after the first: the kept connection dropped, one fresh one answered.
    assert server.connections == 5 and len(server.requests) == 9
    assert lean.connections_opened == 5


async def test_retried_only_once_and_only_on_a_kept_connection(servers, lean) -> None:
    answered = []

    async def resets_after_the_first(server: RawServer, reader, writer) -> None:
        while await server.next_request(reader) is not None:
            if answered:
                reset(writer)
                return
            answered.append(True)
            writer.write(OK)

    server = await servers(resets_after_the_first)
    assert (await lean.probe(server.url(), 3)).healthy
    second = await lean.probe(server.url(), 3)  # kept one reset, the fresh one too: no third try
    assert (second.healthy, second.detail) == (False, "connection reset before a response")
    assert server.connections == 2
    third = await lean.probe(server.url(), 3)  # a fresh connection reset: not retried
    assert (third.healthy, third.detail) == (False, "connection reset before a response")
    assert server.connections == 3


async def test_short_server_keepalive_gives_no_false_failure(lean) -> None:
    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app, keepalive_timeout=0.1, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        failures = []
        gaps = [0.07, 0.09, 0.095, 0.1, 0.1, 0.105, 0.11, 0.13]  # around the server's keep-alive timeout
        for n in range(32):
            result = await lean.probe(f"http://127.0.0.1:{port}/ping", 3)
            if not result.healthy:
                failures.append((n, result.detail))
            await asyncio.sleep(gaps[n % len(gaps)])  # pacing between probes, not a wait
        assert failures == []
        assert lean.connections_opened > 4  # the server did close idle connections
    finally:
        await runner.cleanup()


async def test_chunked_body_verdict_by_status_and_not_reused(servers, lean) -> None:
    async def chunked(server: RawServer, reader, writer) -> None:
        while (request := await server.next_request(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\npong\n\r\n")
            if b"/endless" in request:
                await reader.read()  # the last chunk never comes
                return
            writer.write(b"0\r\n\r\n")

    server = await servers(chunked)
    for _ in range(2):
        assert (await lean.probe(server.url(), 3)).detail == "200 OK"
    assert server.connections == 2  # closed once the status was known, not kept
    result, took = await probe_timed(lean, server.url("/endless"), 3)
    assert (result.healthy, result.detail) == (True, "200 OK") and took < 1
    await eventually(lambda: server.closed == 3, "every chunked connection closed by the prober")
    assert lean.idle_connections == 0


async def test_body_by_content_length_read_then_reused(servers, lean) -> None:
    body = b"x" * 100_000

    async def big_body_in_pieces(server: RawServer, reader, writer) -> None:
        while await server.next_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for at in range(0, len(body), 30_000):
                await writer.drain()
                writer.write(body[at : at + 30_000])

    server = await servers(big_body_in_pieces)
    for _ in range(5):
        assert (await lean.probe(server.url(), 3)).detail == "200 OK"
        await eventually(lambda: lean.idle_connections == 1, "the body read, the connection kept")
    assert server.connections == 1


async def test_body_over_the_limit_is_not_read(servers, lean) -> None:
    async def huge(server: RawServer, reader, writer) -> None:
        await server.next_request(reader)
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 1000)
        await reader.read()

    server = await servers(huge)
    result = await lean.probe(server.url(), 3)
    assert (result.healthy, result.detail) == (False, "503 Service Unavailable")
    await eventually(lambda: server.closed == 1, "the connection closed at once")
    assert lean.idle_connections == 0


@pytest.mark.parametrize("ending", [True, False])
async def test_oversized_headers_fail_clearly(servers, lean, ending) -> None:
    async def big_headers(server: RawServer, reader, writer) -> None:
        await server.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for n in range(MAX_HEAD // 1000 + 10):
            writer.write(b"X-Filler-%d: %s\r\n" % (n, b"y" * 1000))
            await writer.drain()
        if ending:
            writer.write(b"Content-Length: 0\r\n\r\n")
        await reader.read()

    server = await servers(big_headers)
    result = await lean.probe(server.url(), 3)
    assert (result.healthy, result.detail) == (False, "response headers larger than 64 KiB")
    await eventually(lambda: server.closed == 1, "the connection closed")


async def test_connection_close_is_not_reused(servers, lean) -> None:
    async def says_close(server: RawServer, reader, writer) -> None:
        while await server.next_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\npong\n")
            # ...and keeps the connection open anyway

    server = await servers(says_close)
    for _ in range(3):
        assert (await lean.probe(server.url(), 3)).detail == "200 OK"
    assert server.connections == 3
    await eventually(lambda: server.closed == 3, "the prober closed each")


async def test_http10_without_keep_alive_is_not_reused_and_interim_responses_skipped(servers, lean) -> None:
    async def old_server(server: RawServer, reader, writer) -> None:
        while await server.next_request(reader) is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 302 Found\r\nContent-Length: 0\r\n\r\n")

    server = await servers(old_server)
    for _ in range(2):
        result = await lean.probe(server.url(), 3)
        assert (result.healthy, result.detail) == (True, "302 Found")
    assert server.connections == 2


async def test_not_http_says_so(servers, lean) -> None:
    async def garbage(server: RawServer, reader, writer) -> None:
        await server.next_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await reader.read()

    server = await servers(garbage)
    result = await lean.probe(server.url(), 3)
    assert result.healthy is False and result.detail == "not an HTTP response: b'SSH-2.0-OpenSSH_9.6'"


async def test_https_and_unhandled_urls_go_to_the_fallback(servers, lean, fallback) -> None:
    server = await servers(answer_all)
    https = f"https://127.0.0.1:{server.port}/ping"
    with_credentials = f"http://user:secret@127.0.0.1:{server.port}/ping"
    for url in (https, with_credentials):
        assert (await lean.probe(url, 3)).detail == "from the fallback"
    assert (await lean.probe(server.url(), 3)).detail == "200 OK"
    assert fallback.urls == [https, with_credentials]
    assert len(server.requests) == 1


async def test_idle_caps_per_node_and_in_all(servers, fallback) -> None:
    async def answer_when_four_wait(server: RawServer, reader, writer) -> None:
        await server.next_request(reader)
        await eventually(lambda: len(server.requests) >= 4, "four requests at once")
        writer.write(OK)
        await reader.read()

    prober = LeanProber(fallback, max_idle_per_key=2, max_idle_total=3)
    try:
        server = await servers(answer_when_four_wait)
        results = await asyncio.gather(*(prober.probe(server.url(), 3) for _ in range(4)))
        assert [r.detail for r in results] == ["200 OK"] * 4
        assert prober.idle_connections == 2  # per node
        await eventually(lambda: server.closed == 2, "the two beyond the node's cap closed")
        others = [await servers(answer_all) for _ in range(3)]
        for other in others:
            assert (await prober.probe(other.url(), 3)).healthy
        assert prober.idle_connections == 3  # in all: the oldest went first
        await eventually(lambda: server.closed == 4, "the first node's idle ones closed")
        assert [other.closed for other in others] == [0, 0, 0]
    finally:
        await prober.aclose()


async def test_idle_connections_closed_after_max_age(servers, fallback) -> None:
    prober = LeanProber(fallback, max_idle_age=0.2)
    try:
        server = await servers(answer_all)
        started = time.monotonic()
        assert (await prober.probe(server.url(), 3)).healthy
        await eventually(lambda: server.closed == 1, "the idle connection closed by age")
        assert time.monotonic() - started >= 0.2
        assert prober.idle_connections == 0
        assert (await prober.probe(server.url(), 3)).healthy  # and a fresh one is opened
        assert server.connections == 2
    finally:
        await prober.aclose()


async def test_aclose_closes_everything(servers, fallback) -> None:
    prober = LeanProber(fallback)
    kept = [await servers(answer_all) for _ in range(3)]
    for server in kept:
        assert (await prober.probe(server.url(), 3)).healthy
    hanging = await servers(never_answers)
    in_flight = asyncio.ensure_future(prober.probe(hanging.url(), 10))
    await eventually(lambda: len(hanging.requests) == 1, "the hanging probe sent")
    await prober.aclose()
    await eventually(lambda: [s.closed for s in [*kept, hanging]] == [1, 1, 1, 1], "all connections closed")
    assert (await in_flight).healthy is False
    assert prober.idle_connections == 0


async def test_cancelled_probe_raises_and_closes_its_connection(servers, lean) -> None:
    server = await servers(never_answers)
    task = asyncio.ensure_future(lean.probe(server.url(), 10))
    await eventually(lambda: len(server.requests) == 1, "the request sent")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: server.closed == 1, "the connection closed")
    assert lean.idle_connections == 0


async def test_raises_a_low_open_files_limit(fallback) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 1024
    if hard != resource.RLIM_INFINITY and hard <= low:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        LeanProber(fallback)
        raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raised == (FD_TARGET if hard == resource.RLIM_INFINITY else min(FD_TARGET, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]), hard))
