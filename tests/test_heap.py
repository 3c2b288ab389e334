"""Freezing long-lived objects out of the collector's passes, and reclaiming frozen garbage later."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref

from bot.heap import keep_collections_short
from tests.helpers import until


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


async def test_survivors_are_frozen_and_frozen_cyclic_garbage_is_reclaimed_later() -> None:
    gc.collect()
    cycle = Node()
    gone = weakref.ref(cycle)
    task = asyncio.get_running_loop().create_task(keep_collections_short(freeze_every=0.05, reclaim_every=0.6))
    try:
        await until(lambda: gc.get_freeze_count() > 0, 2, "survivors frozen")
        del cycle
        gc.collect()
        assert gone() is not None  # frozen: full passes do not walk it (nor free it)
        await until(lambda: gone() is None, 3, "the frozen cycle reclaimed by the hourly pass")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert gc.get_freeze_count() == 0  # nothing left frozen when it stops
