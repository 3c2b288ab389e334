"""The release lock over the Consul stand-in: one release per app across bot replicas."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

import bot.consul.lock as module
from bot.consul.lock import ConsulLockManager
from bot.consul.store import ConsulStore
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


async def test_a_renewed_lock_outlives_its_ttl(consul: Consul, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "SESSION_TTL", 10)  # the shortest TTL Consul takes; renewed every ~3.3 s
    locks = ConsulLockManager(ConsulStore((consul.url,)))
    lock = await locks.acquire(info("long"))
    first = lock.renewed_at
    # Watch it through more than one TTL: held and trusted at every look, renewed meanwhile.
    until = time.monotonic() + 12
    for _ in range(12 * 4 + 4):
        if time.monotonic() >= until:
            break
        assert not lock.lost and (await locks.holder("app")) is not None
        await asyncio.sleep(0.25)
    assert time.monotonic() >= until
    assert lock.renewed_at - first >= 6  # at least two renewals went through
    await lock.release()


async def destroy_session(consul: Consul, session: str) -> None:
    """Another client ends the session (an operator, or Consul invalidating it)."""
    async with httpx.AsyncClient() as client:
        answer = await client.put(f"{consul.url}/v1/session/destroy/{session}")
    assert answer.status_code == 200


async def test_a_session_destroyed_from_outside_loses_the_lock(consul: Consul, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "RENEW_EVERY", 0.5)  # so the loss is noticed within a second
    replica_a, replica_b = ConsulLockManager(ConsulStore((consul.url,))), ConsulLockManager(ConsulStore((consul.url,)))
    lock = await replica_a.acquire(info("r1"))
    waiter = asyncio.create_task(lock.wait_lost())
    await asyncio.sleep(0)  # the waiter is waiting before the loss
    assert not lock.lost and not waiter.done()
    await destroy_session(consul, lock.session)
    await asyncio.wait_for(waiter, timeout=5)
    assert lock.lost
    # The lock is free for another replica now, and the loser's release neither raises nor takes it back.
    other = await replica_b.acquire(info("r2", "U2BOB", "bot-b:2"))
    await lock.release()
    assert (await replica_a.holder("app")).release_id == "r2"  # type: ignore[union-attr]
    await other.release()


async def test_a_silent_consul_loses_the_lock_after_the_ttl_and_not_before(
    consul: Consul, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "SESSION_TTL", 10)
    locks = ConsulLockManager(ConsulStore((consul.url,), timeout=1))
    lock = await locks.acquire(info("r1"))
    created = lock.renewed_at
    for _ in range(100):  # wait (at most 10 s) for a renewal to have gone through
        if lock.renewed_at > created:
            break
        await asyncio.sleep(0.1)
    assert lock.renewed_at > created
    waiter = asyncio.create_task(lock.wait_lost())
    consul.server.call(setattr, consul.standin.faults, "delay", 60.0)  # Consul stops answering
    silent_since = time.monotonic()
    first_lost: float | None = None
    for _ in range(int((module.SESSION_TTL + 3) / 0.05)):
        if lock.lost:
            first_lost = time.monotonic()
            break
        await asyncio.sleep(0.05)
    assert first_lost is not None, "not lost within TTL + 3 s of Consul going silent"
    await asyncio.wait_for(waiter, timeout=1)  # wait_lost follows `lost` closely
    # When Consul last renewed the session (its clock is this process's monotonic clock too):
    renewed_by_consul = consul.server.call(lambda: consul.standin.sessions[lock.session].expires_at) - 10
    assert first_lost <= silent_since + 10 + 2
    assert first_lost >= lock.renewed_at + 10  # never before a TTL has passed since the last renewal sent
    assert first_lost >= renewed_by_consul + 10 - 0.25  # ... which Consul got moments later
    consul.server.call(setattr, consul.standin.faults, "delay", 0.0)  # lets the held requests go
    await asyncio.wait_for(lock.release(), timeout=10)  # best effort, does not raise


async def test_a_lock_session_has_no_health_check_that_could_end_it_before_its_holder_knows(consul: Consul) -> None:
    """Consul ties a session to the node's serfHealth unless told otherwise; a failing check would end it
    while its holder, counting only the TTL, still acts as if it held the lock."""
    lock = await ConsulLockManager(ConsulStore((consul.url,))).acquire(info("r1"))
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            answer = await client.get(f"{consul.url}/v1/session/info/{lock.session}")
        assert answer.json()[0]["NodeChecks"] == []
    finally:
        await lock.release()
