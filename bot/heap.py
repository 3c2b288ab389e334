"""Short garbage-collector pauses in a long-running `serve`.

Every full pass of the cyclic collector walks every long-lived object while the event loop that answers
Slack waits: 100 ms and more when the watch's 10,000 kept-alive connections lived in this process
(they now live in the probe worker), about 25 ms with what remains (the watch's per-node state,
incidents, the clients; measured with `benchmarks/watch_scale.py`). Every `FREEZE_EVERY` seconds what has
survived so far is moved out of the collector's reach (`gc.freeze()`: the passes then walk only what
is newer). Refcounting still frees what is not in a reference cycle; frozen cyclic garbage is
reclaimed every `RECLAIM_EVERY` seconds by one full pass over everything (one pause an hour rather
than several a minute). The price: cyclic garbage among what was frozen is held until then.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)
FREEZE_EVERY = 60.0
RECLAIM_EVERY = 3600.0


async def keep_collections_short(freeze_every: float = FREEZE_EVERY, reclaim_every: float = RECLAIM_EVERY) -> None:
    """Runs until cancelled; leaves nothing frozen when it ends."""
    reclaimed_at = time.monotonic()
    try:
        while True:
            await asyncio.sleep(freeze_every)
            if time.monotonic() - reclaimed_at >= reclaim_every:
                gc.unfreeze()
                started = time.perf_counter()
                found = gc.collect()
                log.debug("full collection: %d unreachable, %.0f ms", found, (time.perf_counter() - started) * 1000)
                reclaimed_at = time.monotonic()
            gc.freeze()
    finally:
        gc.unfreeze()
