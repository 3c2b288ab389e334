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
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from commands.addresses import ServerAddress
from commands.errors import StoreError, StoreUncertain
from commands.interfaces import HeldLock, UpstreamStore
from commands.servers import ServerEntry, Upstream, upsync_down

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
    """Whether `fields` take the server out of traffic, as upsync reads them (only a `down` of 1 does)."""
    value = next((v for k, v in fields.items() if k.lower() == "down"), 0)
    return upsync_down(value) == 1


def _witness(
    upstream: Upstream, address: ServerAddress, exclude: Sequence[ServerAddress], prefer: Sequence[ServerAddress]
) -> ServerEntry | None:
    """Another server serving now, preferring `prefer` (healthy ones); never one of `exclude`."""
    serving = {s.address: s for s in upstream.servers if s.surely_serving and s.address != address}
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
    held: HeldLock | None = None,
) -> WriteResult:
    """Read, decide, and check-and-set `address`; a drain (unless `keep_serving` is False) also requires
    another serving server, `prefer`red first and never one of `exclude`, to be unchanged at write time;
    with `held`, the write lands only while that lock is held (a release's writes)."""
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

        send = functools.partial(store.write, upstream, address, decision, cas, witnesses or None, held)

        try:
            if await send():
                return WriteResult(Written.APPLIED, "written", entry)
        except StoreUncertain as lost:
            return await _settle(store, upstream, address, decision, entry, lost, send)
        if held is not None and await _lock_gone(store, upstream, address, entry):
            return WriteResult(Written.NOT_APPLIED, "not written: the release lock is no longer held", entry)
    return WriteResult(
        Written.NOT_APPLIED, f"not written: {address} in {upstream} changed under each of {ATTEMPTS} attempts", entry
    )


async def _lock_gone(store: UpstreamStore, upstream: str, address: ServerAddress, entry: ServerEntry | None) -> bool:
    """A refused transaction whose entry did not change: with a lock condition, the lock was the reason."""
    now = (await store.read(upstream)).find(address)
    return (now.modify_index if now else 0) == (entry.modify_index if entry else 0)


async def delete_entry(store: UpstreamStore, upstream: str, address: ServerAddress, expect: ServerEntry) -> WriteResult:
    """Delete `address` if it is still exactly `expect` (its ModifyIndex)."""

    send = functools.partial(store.delete, upstream, address, expect.modify_index)

    try:
        if await send():
            return WriteResult(Written.APPLIED, "deleted", expect)
    except StoreUncertain as lost:
        return await _settle(store, upstream, address, None, expect, lost, send)
    return WriteResult(Written.NOT_APPLIED, f"not removed: {address} changed meanwhile", expect)


async def _settle(
    store: UpstreamStore,
    upstream: str,
    address: ServerAddress,
    wanted: dict[str, Any] | None,
    before: ServerEntry | None,
    lost: StoreError,
    resend: Callable[[], Awaitable[bool]],
) -> WriteResult:
    """A write whose answer was lost (`wanted` None: a delete): what does Consul hold?

    Read back: our value -> applied; someone else's change -> not applied (a late landing of ours is then
    impossible: its check-and-set index is gone). Unchanged: ours may still be on its way (a slow Raft
    commit), so the same check-and-set is sent once more; it cannot land twice."""
    now = await _read(store, upstream, address)
    if isinstance(now, StoreError):
        return _unknown(address, lost, now, before)
    if _holds(now, wanted):
        return WriteResult(Written.APPLIED, "done (its answer was lost; confirmed by reading it back)", before)
    if _index(now) != _index(before):
        held_now = f"not applied: {address} {_describe(now)} (someone else wrote it)"
        return WriteResult(Written.NOT_APPLIED, held_now, before)
    try:
        if await resend():
            return WriteResult(Written.APPLIED, "done (the first answer was lost; sent again and confirmed)", before)
    except StoreError as again:
        return _unknown(address, lost, again, before)
    now = await _read(store, upstream, address)
    if isinstance(now, StoreError):
        return _unknown(address, lost, now, before)
    if _holds(now, wanted):
        return WriteResult(Written.APPLIED, "done (its answer was lost; confirmed by reading it back)", before)
    return WriteResult(Written.NOT_APPLIED, f"not applied: {address} {_describe(now)}", before)


async def _read(store: UpstreamStore, upstream: str, address: ServerAddress) -> ServerEntry | StoreError | None:
    try:
        return (await store.read(upstream)).find(address)
    except StoreError as error:
        return error


def _holds(now: ServerEntry | None, wanted: dict[str, Any] | None) -> bool:
    return now is None if wanted is None else (now is not None and now.fields == wanted)


def _index(entry: ServerEntry | None) -> int:
    return entry.modify_index if entry is not None else 0


def _describe(entry: ServerEntry | None) -> str:
    return "has no key now" if entry is None else f"now holds down={int(entry.drained)}"


def _unknown(address: ServerAddress, lost: StoreError, error: StoreError, before: ServerEntry | None) -> WriteResult:
    return WriteResult(
        Written.UNKNOWN,
        f"unknown: the write of {address} was sent but not answered ({lost.message}), and Consul cannot be "
        f"read back ({error.message}); check with `/upstream status` before acting again",
        before,
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
    held: HeldLock | None = None,
    keep_serving: bool = True,
) -> WriteResult:
    """The release engine's drain (guarded: another server keeps serving, unless `keep_serving` is False
    for a --force release confirmed twice) and restore."""
    decide = set_down_decision(address, down)
    return await write_entry(store, upstream, address, decide, keep_serving, prefer, exclude, held)
