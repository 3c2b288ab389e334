"""A Consul session kept alive by this bot: the part the release lock and the watch election share.

The session has a TTL and behavior `release` (a lock it holds is freed, the key kept, when it ends).
A task renews it every `renew_every` (after a failure, every `retry_every`) until it is stopped or
lost. Lost means Consul said the session is gone, or no renewal succeeded within one TTL. That TTL is
counted on time.monotonic() from the moment the last successful renewal was *sent*: Consul restarted
its timer at some point after that, so this errs on the early side and never trusts a session Consul
may already have dropped.

Acquiring a key (`acquire`) retries for a moment when the key is free but Consul still refuses it:
after a session holding it was invalidated, Consul keeps the key from everyone for that session's
lock-delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from bot.consul.store import ConsulStore
from commands.errors import StoreError, StoreNotFound

log = logging.getLogger(__name__)
LOCK_DELAY = 1  # seconds: how long Consul keeps a dead session's keys from everyone (its default is 15)
ACQUIRE_RETRY = 0.25  # while a free key is refused (its lock-delay), ask again this often


async def create_session(
    store: ConsulStore, name: str, ttl: float, lock_delay: int = LOCK_DELAY
) -> tuple[str, float]:
    """A new session and the time.monotonic() just before it was asked for (its TTL counts from then)."""
    # Consul starts the session's TTL after it gets this request: counting from before sending
    # keeps our idea of the deadline no later than Consul's.
    sent = time.monotonic()
    session = await store.call(
        # No health checks (Consul's default ties a session to the node's serfHealth): a check could end the
        # session early, before the holder's own TTL count tells it so, and then two holders could act at
        # once. With the TTL alone, the holder always learns of the loss first (see KeptSession).
        lambda c: c.session.create(name=name, behavior="release", ttl=ttl, lock_delay=lock_delay, checks=[]),
        "creating a lock session",
    )
    return str(session), sent


async def acquire(store: ConsulStore, key: str, value: str, session: str, lock_delay: int = LOCK_DELAY) -> bool:
    """Take `key` with `session` (`?acquire=`); False when another session holds it, or when it stays
    refused longer than `lock_delay` (the longest lock-delay we expect on it) and a second.

    Not `write=True`: acquiring with our own session is idempotent (Consul answers true when the
    session already holds the key), so resending after a lost answer is safe."""
    deadline = time.monotonic() + lock_delay + 1.0
    for _ in range(int((lock_delay + 1.0) / ACQUIRE_RETRY) + 1):
        if await store.call(lambda c: c.kv.put(key, value, acquire=session), f"acquiring {key}"):
            return True
        _, item = await store.call(lambda c: c.kv.get(key), f"reading {key}")
        if (item and item.get("Session")) or time.monotonic() >= deadline:
            return False  # held by someone else (or still refused after the longest lock-delay)
        await asyncio.sleep(ACQUIRE_RETRY)  # free, yet refused: a lock-delay runs
    return False


async def end_session(store: ConsulStore, session: str) -> None:
    """Best effort, never raises: a session we fail to end expires with its TTL."""
    try:
        await store.call(lambda c: c.session.destroy(session), "ending the lock session")
    except Exception as error:
        log.warning("cannot end lock session %s: %s", session, getattr(error, "message", repr(error)))


class KeptSession:
    """A session renewed by a task of its own until `stop_renewing()` or until it is lost."""

    def __init__(
        self,
        store: ConsulStore,
        session: str,
        *,
        ttl: float,
        renewed_at: float,
        renew_every: float,
        retry_every: float,
        what: str,
    ) -> None:
        self.store = store
        self.session = session
        self.ttl = ttl
        self.what = what  # "release lock for app", "watch lock": for the log
        self._renew_every = renew_every
        self._retry_every = retry_every
        self._renewed_at = renewed_at  # monotonic: when the last renewal that succeeded was sent
        self._lost = False
        self._released = False
        self._lost_event = asyncio.Event()
        self._renewer = asyncio.get_running_loop().create_task(self._renew(), name=f"renew {what}")

    @property
    def renewed_at(self) -> float:
        """time.monotonic() when the last successful renewal (or the session's creation) was sent."""
        return self._renewed_at

    @property
    def lost(self) -> bool:
        if self._lost:
            return True
        # Also true before the renewer has woken up to notice: the TTL is what counts, not the task.
        return not self._released and time.monotonic() >= self._renewed_at + self.ttl

    async def wait_lost(self) -> None:
        await self._lost_event.wait()

    def _mark_lost(self, why: str) -> None:
        if self._lost:
            return
        self._lost = True
        self._lost_event.set()
        log.error("%s lost (session %s): %s", self.what, self.session, why)

    async def _renew(self) -> None:
        """Renew every `renew_every`; after a failure every `retry_every`, until the TTL says lost.

        Ends when the session is lost or `stop_renewing()` cancels it; every wait is bounded by the deadline."""
        failing = False
        while not self._lost:
            deadline = self._renewed_at + self.ttl
            due = time.monotonic() + self._retry_every if failing else self._renewed_at + self._renew_every
            pause = min(due, deadline) - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            sent = time.monotonic()
            if sent >= deadline:
                self._mark_lost(f"no renewal succeeded within the session TTL ({self.ttl:g} s)")
                return
            try:
                # A renewal still in flight at the deadline is too late to count: stop waiting for it.
                async with asyncio.timeout(deadline - sent):
                    answer = await self.store.call(self._renew_call, f"renewing the {self.what}")
            except TimeoutError:
                continue  # the deadline has passed: the next turn says so
            except StoreNotFound:
                self._mark_lost("Consul says the session is gone")
                return
            except Exception as error:  # unreachable Consul, or a bug: the session may live on; retry
                message = error.message if isinstance(error, StoreError) else repr(error)
                # One warning per run of failures; the TTL decides when it becomes "lost".
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "cannot renew the %s: %s", self.what, message)
                failing = True
                continue
            if not isinstance(answer, dict) or answer.get("ID") != self.session:
                self._mark_lost(f"the renewal answer does not include the session ({answer!r:.100})")
                return
            self._renewed_at = sent
            failing = False

    def _renew_call(self, client: Any) -> Any:
        return client.session.renew(self.session)

    async def stop_renewing(self) -> None:
        """From now on the session is ours to end, not lost: the caller releases and ends it."""
        self._released = True
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer

    async def release_key(self, key: str) -> None:
        """Stop renewing, unlock `key` and end the session; best effort, never raises."""
        await self.stop_renewing()
        try:
            await self.store.call(lambda c: c.kv.put(key, "", release=self.session), f"releasing {key}")
        except Exception as error:  # the session's end (below, or its TTL) frees the key anyway
            log.warning("cannot release %s: %s", key, getattr(error, "message", repr(error)))
        await end_session(self.store, self.session)
