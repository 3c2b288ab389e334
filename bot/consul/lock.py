"""One release per app, also across bot replicas: a Consul session lock under `upstream-bot/locks/<app>`.

The session has a TTL and is renewed while the release runs; a bot that dies leaves a lock that
expires with its session (Consul may take up to 2 x TTL). Behavior `release`: the key stays, unheld.

The holder must know when its lock can no longer be trusted (`lost`): Consul said the session is
gone, or no renewal succeeded within one TTL. That TTL is counted on time.monotonic() from the moment
the last successful renewal was *sent*: Consul restarted its timer at some point after that, so this
errs on the early side and never trusts a session Consul may already have dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from bot.consul.store import ConsulStore
from commands.errors import StoreError, StoreNotFound
from commands.interfaces import HeldLock, LockBusy, LockInfo

log = logging.getLogger(__name__)
LOCK_PREFIX = "upstream-bot/locks"
SESSION_TTL = 15  # seconds (Consul takes 10..86400); read when a lock is acquired, so tests can shorten it
RENEW_EVERY: float | None = None  # seconds between renewals; None: TTL/3. Read at acquire time.
RENEW_RETRY = 1.0  # after a failed renewal, try again this soon (until the TTL runs out)


def lock_key(app: str) -> str:
    return f"{LOCK_PREFIX}/{app}"


def _decode(value: bytes | str | None, app: str) -> LockInfo | None:
    try:
        data = json.loads(value or b"{}")
        return LockInfo(app, str(data["release_id"]), str(data["requester"]), str(data["holder"]), float(data["since"]))
    except (ValueError, KeyError, TypeError):
        return None


class ConsulReleaseLock:
    """A held lock; a task renews its session until `release()` or until the lock is lost."""

    def __init__(
        self,
        store: ConsulStore,
        info: LockInfo,
        session: str,
        *,
        ttl: float,
        renewed_at: float,
        renew_every: float,
        retry_every: float,
    ) -> None:
        self.store = store
        self.info = info
        self.session = session
        self.ttl = ttl
        self._renew_every = renew_every
        self._retry_every = retry_every
        self._renewed_at = renewed_at  # monotonic: when the last renewal that succeeded was sent
        self._lost = False
        self._released = False
        self._lost_event = asyncio.Event()
        self._renewer = asyncio.get_running_loop().create_task(self._renew(), name=f"renew release lock {info.app}")

    @property
    def renewed_at(self) -> float:
        """time.monotonic() when the last successful renewal (or the session's creation) was sent."""
        return self._renewed_at

    @property
    def held(self) -> HeldLock:
        return HeldLock(lock_key(self.info.app), self.session)

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
        log.error("release lock for %s lost (session %s): %s", self.info.app, self.session, why)

    async def _renew(self) -> None:
        """Renew every `renew_every`; after a failure every `retry_every`, until the TTL says lost.

        Ends when the lock is lost or `release()` cancels it; every wait is bounded by the deadline."""
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
                    answer = await self.store.call(self._renew_call, "renewing the release lock")
            except TimeoutError:
                continue  # the deadline has passed: the next turn says so
            except StoreNotFound:
                self._mark_lost("Consul says the session is gone")
                return
            except Exception as error:  # unreachable Consul, or a bug: the session may live on; retry
                message = error.message if isinstance(error, StoreError) else repr(error)
                # One warning per run of failures; the TTL decides when it becomes "lost".
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "cannot renew the release lock for %s: %s", self.info.app, message)
                failing = True
                continue
            if not isinstance(answer, dict) or answer.get("ID") != self.session:
                self._mark_lost(f"the renewal answer does not include the session ({answer!r:.100})")
                return
            self._renewed_at = sent
            failing = False

    def _renew_call(self, client: Any) -> Any:
        return client.session.renew(self.session)

    async def release(self) -> None:
        """Stop renewing, unlock the key and end the session; best effort, never raises."""
        self._released = True
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer
        key = lock_key(self.info.app)
        try:
            await self.store.call(lambda c: c.kv.put(key, "", release=self.session), f"releasing {key}")
        except Exception as error:  # the session's end (below, or its TTL) frees the key anyway
            log.warning("cannot release %s: %s", key, getattr(error, "message", repr(error)))
        try:
            await self.store.call(lambda c: c.session.destroy(self.session), "ending the lock session")
        except Exception as error:  # it expires with its TTL
            log.warning("cannot end lock session %s: %s", self.session, getattr(error, "message", repr(error)))


class ConsulLockManager:
    def __init__(self, store: ConsulStore) -> None:
        self.store = store

    async def holder(self, app: str) -> LockInfo | None:
        key = lock_key(app)
        _, item = await self.store.call(lambda c: c.kv.get(key), f"reading {key}")
        if not item or not item.get("Session"):
            return None
        return _decode(item.get("Value"), app)

    async def acquire(self, info: LockInfo) -> ConsulReleaseLock:
        key = lock_key(info.app)
        ttl = SESSION_TTL
        # Consul starts the session's TTL after it gets this request: counting from before sending
        # keeps our idea of the deadline no later than Consul's.
        sent = time.monotonic()
        session = await self.store.call(
            lambda c: c.session.create(
                name=f"upstream-bot release {info.app}", behavior="release", ttl=ttl, lock_delay=1
            ),
            "creating a lock session",
        )
        value = json.dumps(
            {"release_id": info.release_id, "requester": info.requester, "holder": info.holder, "since": info.since}
        )
        try:
            # Not `write=True`: acquiring with our own session is idempotent (Consul answers true when
            # the session already holds the key), so resending after a lost answer is safe.
            taken = await self.store.call(lambda c: c.kv.put(key, value, acquire=session), f"acquiring {key}")
        except BaseException:
            with contextlib.suppress(Exception):
                await self.store.call(lambda c: c.session.destroy(session), "ending the lock session")
            raise
        if not taken:
            await self.store.call(lambda c: c.session.destroy(session), "ending the lock session")
            raise LockBusy(await self.holder(info.app))
        return ConsulReleaseLock(
            self.store,
            info,
            session,
            ttl=ttl,
            renewed_at=sent,
            renew_every=RENEW_EVERY if RENEW_EVERY is not None else ttl / 3,
            retry_every=RENEW_RETRY,
        )
