"""The release lock over the Consul stand-in: one release per app across bot replicas."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.consul_lock import ConsulLockManager
from bot.consul_store import ConsulStore
from commands.interfaces import LockBusy, LockInfo
from tests.conftest import Consul


def info(release: str, requester: str = "U1ALICE", holder: str = "bot-a:1") -> LockInfo:
    return LockInfo("app", release, requester, holder, time.time())


async def test_a_second_replica_is_refused_with_who_holds_it_and_since_when(consul: Consul) -> None:
    replica_a, replica_b = ConsulLockManager(ConsulStore((consul.url,))), ConsulLockManager(ConsulStore((consul.url,)))
    lock = await replica_a.acquire(info("r1"))
    with pytest.raises(LockBusy) as busy:
        await replica_b.acquire(info("r2", "U2BOB", "bot-b:2"))
    assert busy.value.info is not None
    assert (busy.value.info.requester, busy.value.info.holder, busy.value.info.release_id) == (
        "U1ALICE",
        "bot-a:1",
        "r1",
    )
    await lock.release()
    assert await replica_b.holder("app") is None
    again = await replica_b.acquire(info("r3", "U2BOB", "bot-b:2"))
    assert (await replica_a.holder("app")).release_id == "r3"  # type: ignore[union-attr]
    await again.release()


async def test_a_lock_left_by_a_dead_bot_expires_with_its_session(consul: Consul) -> None:
    locks = ConsulLockManager(ConsulStore((consul.url,)))
    lock = await locks.acquire(info("dead"))
    lock._renewer.cancel()  # the bot died: nobody renews the session, nobody releases the lock
    for _ in range(80):  # TTL 15 s; Consul may take up to 2 x TTL: poll for at most 40 s
        if await locks.holder("app") is None:
            break
        await asyncio.sleep(0.5)
    assert await locks.holder("app") is None
    taken = await locks.acquire(info("next"))
    await taken.release()


async def test_a_renewed_lock_outlives_its_ttl(consul: Consul) -> None:
    import bot.consul_lock as module

    locks = ConsulLockManager(ConsulStore((consul.url,)))
    saved = module.SESSION_TTL
    module.SESSION_TTL = 10  # the shortest TTL Consul takes; renewed every ~3 s
    try:
        lock = await locks.acquire(info("long"))
        await asyncio.sleep(12)
        assert (await locks.holder("app")) is not None and not lock.lost
        await lock.release()
    finally:
        module.SESSION_TTL = saved
