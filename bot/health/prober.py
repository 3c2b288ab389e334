"""HTTP health probes: 2xx/3xx is healthy, anything else says what it was."""

from __future__ import annotations

import time

import httpx

from commands.interfaces import ProbeResult
from commands.versions import shown_version


class HttpProber:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def probe(self, url: str, timeout: float, header: str | None = None) -> ProbeResult:
        started = time.monotonic()
        try:
            # No redirects followed: a 3xx from the node itself counts as healthy.
            response = await self.client.get(url, timeout=timeout, follow_redirects=False)
        except httpx.TimeoutException:
            return ProbeResult(False, f"timeout after {timeout:g} s", time.monotonic() - started)
        except httpx.ConnectError as error:
            return ProbeResult(False, connect_reason(error), time.monotonic() - started)
        except httpx.HTTPError as error:
            return ProbeResult(False, f"{type(error).__name__}: {error}", time.monotonic() - started)
        elapsed = time.monotonic() - started
        phrase = f"{response.status_code} {response.reason_phrase}".strip()
        # The first value, as LeanProber takes it (httpx would join repeated headers with ", ").
        values = response.headers.get_list(header) if header else []
        version = shown_version(values[0]) if values else None
        return ProbeResult(200 <= response.status_code < 400, phrase, elapsed, version)


def connect_reason(error: BaseException) -> str:
    """httpx's async ConnectError says "All connection attempts failed"; the cause says what happened."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return "connection refused"
        if isinstance(seen, OSError) and seen.strerror:
            return f"cannot connect: {seen.strerror}"
        seen = seen.__cause__ or seen.__context__
    return f"cannot connect: {error}"
