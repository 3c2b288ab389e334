"""Probing many nodes of an app at once, with a bound (status, release plans and guards, the watch)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from commands.addresses import ServerAddress
from commands.interfaces import Prober, ProbeResult
from commands.settings import AppSettings

PROBE_CONCURRENCY = 32  # probes in flight at once unless the caller says otherwise


async def probe_nodes(
    prober: Prober, app: AppSettings, addresses: Sequence[ServerAddress], concurrency: int = PROBE_CONCURRENCY
) -> dict[ServerAddress, ProbeResult]:
    """Each node's `health.url` result ({} when the app has none), with the version the node names in
    `health.version_header` when the app has one."""
    if app.health.url is None or not addresses:
        return {}
    # A fixed pool of workers, not one task per node: thousands of tasks created at once stall the loop.
    pending = list(addresses)
    results: dict[ServerAddress, ProbeResult] = {}

    async def worker() -> None:
        while pending:
            address = pending.pop()
            url = app.health.url_for(address.host, address.port)
            assert url is not None
            results[address] = await prober.probe(url, app.health.timeout, app.health.version_header)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(pending)))))
    return results
