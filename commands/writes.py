"""Setting `down` on one server with check-and-set and a bounded retry (the release engine's writes)."""

from __future__ import annotations

from commands.addresses import ServerAddress
from commands.errors import StoreError
from commands.interfaces import UpstreamStore

ATTEMPTS = 3


class WriteConflict(StoreError):
    """The entry changed under every attempt, or disappeared."""


async def set_down(store: UpstreamStore, upstream: str, address: ServerAddress, down: bool) -> bool:
    """Write `down`, keeping every other field as it is now. False when it already was so."""
    for _ in range(ATTEMPTS):
        entry = (await store.read(upstream)).find(address)
        if entry is None:
            raise WriteConflict(f"{address} is no longer in {upstream} (its key was deleted)")
        if entry.drained == down:
            return False
        if await store.write(upstream, address, entry.with_down(down), entry.modify_index):
            return True
    raise WriteConflict(f"{address} in {upstream} changed under each of {ATTEMPTS} check-and-set attempts")
