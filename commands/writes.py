"""The one write path for every change to an upstream entry, manual or by a release.

Each write is a check-and-set on the entry's ModifyIndex, and a drain also names a "witness": another
server that is serving when the write is planned. The store writes both in one Consul transaction
(`check-index` on the witness), so the guard "another server keeps serving" still holds when the write
lands: two drains racing for the last two serving servers cannot both succeed.

A write whose answer was lost (StoreUncertain) is never retried blindly: the key is read back and the
result says what Consul holds (applied, not applied, or unknown when Consul cannot be read either).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from commands.addresses import ServerAddress
from commands.errors import StoreError, StoreUncertain
from commands.interfaces import UpstreamStore
from commands.servers import ServerEntry, Upstream, number

ATTEMPTS = 3  # a check-and-set that loses to an unrelated rewrite is tried again this often


class Written(enum.Enum):
    APPLIED = "applied"
    ALREADY = "already so"  # nothing to write: the entry already holds what was asked
    REFUSED = "refused"  # a guard said no (nothing written)
    NOT_APPLIED = "not applied"  # Consul holds something else (changed meanwhile, conflicts)
    UNKNOWN = "unknown"  # the answer was lost and Consul could not be read back


@dataclass(frozen=True)
class WriteResult:
    written: Written
    detail: str  # for people: what happened and what Consul holds now
    entry: ServerEntry | None = None  # the entry as last read (before the write)

    @property
    def ok(self) -> bool:
        return self.written in (Written.APPLIED, Written.ALREADY)


# What to write, decided from a fresh read: the fields, a refusal (str), or None (nothing to do).
Decide = Callable[[Upstream, ServerEntry | None], "dict[str, Any] | str | None"]


def down_of(fields: dict[str, Any]) -> bool:
    value = next((v for k, v in fields.items() if k.lower() == "down"), 0)
    return number(value, 0) != 0


def _witness(
    upstream: Upstream, address: ServerAddress, exclude: Sequence[ServerAddress], prefer: Sequence[ServerAddress]
) -> ServerEntry | None:
    """Another server serving now, preferring `prefer` (healthy ones); never one of `exclude`."""
    serving = {s.address: s for s in upstream.servers if not s.drained and s.address != address}
    for candidate in [*prefer, *sorted(serving)]:
        if candidate in serving and candidate not in exclude:
            return serving[candidate]
    return None


async def write_entry(
    store: UpstreamStore,
    upstream: str,
    address: ServerAddress,
    decide: Decide,
    keep_serving: bool = True,
    prefer: Sequence[ServerAddress] = (),
    exclude: Sequence[ServerAddress] = (),
) -> WriteResult:
    """Read, decide, and check-and-set `address`; a drain (unless `keep_serving` is False) also requires
    another serving server, `prefer`red first and never one of `exclude`, to be unchanged at write time."""
    entry: ServerEntry | None = None
    for _ in range(ATTEMPTS):
        current = await store.read(upstream)
        entry = current.find(address)
        decision = decide(current, entry)
        if decision is None:
            return WriteResult(Written.ALREADY, "nothing to change", entry)
        if isinstance(decision, str):
            return WriteResult(Written.REFUSED, decision, entry)
        witnesses: dict[ServerAddress, int] = {}
        if keep_serving and down_of(decision) and (entry is None or not entry.drained):
            witness = _witness(current, address, exclude, prefer)
            if witness is None:
                return WriteResult(
                    Written.REFUSED,
                    f"not drained: no other server of {upstream} would be serving (Consul now: "
                    f"{current.serving} of {len(current.servers)} serving)",
                    entry,
                )
            witnesses[witness.address] = witness.modify_index
        cas = entry.modify_index if entry is not None else 0
        try:
            if await store.write(upstream, address, decision, cas, witnesses or None):
                return WriteResult(Written.APPLIED, "written", entry)
        except StoreUncertain as lost:
            return await read_back(store, upstream, address, decision, entry, lost)
    return WriteResult(
        Written.NOT_APPLIED, f"not written: {address} in {upstream} changed under each of {ATTEMPTS} attempts", entry
    )


async def delete_entry(store: UpstreamStore, upstream: str, address: ServerAddress, expect: ServerEntry) -> WriteResult:
    """Delete `address` if it is still exactly `expect` (its ModifyIndex)."""
    try:
        if await store.delete(upstream, address, expect.modify_index):
            return WriteResult(Written.APPLIED, "deleted", expect)
    except StoreUncertain as lost:
        return await read_back(store, upstream, address, None, expect, lost)
    return WriteResult(Written.NOT_APPLIED, f"not removed: {address} changed meanwhile", expect)


async def read_back(
    store: UpstreamStore,
    upstream: str,
    address: ServerAddress,
    wanted: dict[str, Any] | None,
    before: ServerEntry | None,
    lost: StoreError,
) -> WriteResult:
    """After a write whose answer was lost: what does Consul hold? (`wanted` None: a delete.)"""
    try:
        now = (await store.read(upstream)).find(address)
    except StoreError as error:
        return WriteResult(
            Written.UNKNOWN,
            f"unknown: the write of {address} was sent but not answered ({lost.message}), and Consul cannot be "
            f"read back ({error.message}); check with `/upstream status` before acting again",
            before,
        )
    if wanted is None:
        if now is None:
            return WriteResult(Written.APPLIED, "deleted (confirmed by reading it back: the answer was lost)", before)
        return WriteResult(Written.NOT_APPLIED, f"not removed: {address} is still in {upstream} (read back)", before)
    if now is not None and now.fields == wanted:
        return WriteResult(Written.APPLIED, "written (confirmed by reading it back: the answer was lost)", before)
    held = "no such key" if now is None else f"down={int(now.drained)}"
    return WriteResult(
        Written.NOT_APPLIED, f"not applied: the answer was lost and Consul now holds {held} for {address}", before
    )


def set_down_decision(address: ServerAddress, down: bool) -> Decide:
    """Decide a drain (down) or a restore: None when it already is so; a refusal when the key is gone."""

    def decide(upstream: Upstream, entry: ServerEntry | None) -> dict[str, Any] | str | None:
        if entry is None:
            return f"{address} is no longer in {upstream.name} (its key was deleted)"
        if entry.drained == down and entry.invalid_value is None:
            return None
        return entry.with_down(down)

    return decide


async def set_down(
    store: UpstreamStore,
    upstream: str,
    address: ServerAddress,
    down: bool,
    prefer: Sequence[ServerAddress] = (),
    exclude: Sequence[ServerAddress] = (),
) -> WriteResult:
    """The release engine's drain (guarded: another server keeps serving) and restore."""
    return await write_entry(store, upstream, address, set_down_decision(address, down), True, prefer, exclude)
