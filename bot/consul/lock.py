"""One release per app, also across bot replicas: a Consul session lock under `upstream-bot/locks/<app>`.

The session has a TTL and is renewed while the release runs; a bot that dies leaves a lock that
expires with its session (Consul may take up to 2 x TTL). Behavior `release`: the key stays, unheld.

The holder must know when its lock can no longer be trusted (`lost`): Consul said the session is
gone, or no renewal succeeded within one TTL (the session keeping, shared with the watch's election,
is bot/consul/session.py).
"""

from __future__ import annotations

import contextlib
import json
import logging

from bot.consul.session import KeptSession, acquire, create_session, end_session
from bot.consul.store import ConsulStore
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


class ConsulReleaseLock(KeptSession):
    """A held lock; a task renews its session (bot/consul/session.py) until `release()` or until it is lost."""

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
        self.info = info
        super().__init__(
            store,
            session,
            ttl=ttl,
            renewed_at=renewed_at,
            renew_every=renew_every,
            retry_every=retry_every,
            what=f"release lock for {info.app}",
        )

    @property
    def held(self) -> HeldLock:
        return HeldLock(lock_key(self.info.app), self.session)

    async def release(self) -> None:
        """Stop renewing, unlock the key and end the session; best effort, never raises."""
        await self.release_key(lock_key(self.info.app))


class ConsulLockManager:
    def __init__(self, store: ConsulStore, ttl: float | None = None) -> None:
        self.store = store
        self.ttl = ttl  # None: SESSION_TTL (read at acquire time)

    async def holder(self, app: str) -> LockInfo | None:
        key = lock_key(app)
        _, item = await self.store.call(lambda c: c.kv.get(key), f"reading {key}")
        if not item or not item.get("Session"):
            return None
        return _decode(item.get("Value"), app)

    async def free(self) -> dict[str, int]:
        prefix = LOCK_PREFIX + "/"
        _, items = await self.store.call(lambda c: c.kv.get(prefix, recurse=True), f"reading {prefix}")
        return {
            str(item["Key"])[len(prefix) :]: int(item["ModifyIndex"])
            for item in items or []
            if not item.get("Session") and "/" not in str(item["Key"])[len(prefix) :]
        }

    async def acquire(self, info: LockInfo) -> ConsulReleaseLock:
        key = lock_key(info.app)
        ttl = self.ttl if self.ttl is not None else SESSION_TTL
        session, sent = await create_session(self.store, f"upstream-bot release {info.app}", ttl)
        value = json.dumps(
            {"release_id": info.release_id, "requester": info.requester, "holder": info.holder, "since": info.since}
        )
        try:
            taken = await acquire(self.store, key, value, session)
        except BaseException:
            with contextlib.suppress(Exception):
                await end_session(self.store, session)
            raise
        if not taken:
            await end_session(self.store, session)
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
