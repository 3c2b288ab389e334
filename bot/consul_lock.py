"""One release per app, also across bot replicas: a Consul session lock under `upstream-bot/locks/<app>`.

The session has a TTL and is renewed while the release runs; a bot that dies leaves a lock that
expires with its session (Consul may take up to 2 x TTL). Behavior `release`: the key stays, unheld.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import consul

from bot.consul_store import ConsulStore
from commands.errors import StoreError
from commands.interfaces import LockBusy, LockInfo

log = logging.getLogger(__name__)
LOCK_PREFIX = "upstream-bot/locks"
SESSION_TTL = 15  # seconds; renewed every TTL/3


def lock_key(app: str) -> str:
    return f"{LOCK_PREFIX}/{app}"


def _decode(value: bytes | str | None, app: str) -> LockInfo | None:
    try:
        data = json.loads(value or b"{}")
        return LockInfo(app, str(data["release_id"]), str(data["requester"]), str(data["holder"]), float(data["since"]))
    except (ValueError, KeyError, TypeError):
        return None


class ConsulReleaseLock:
    def __init__(self, store: ConsulStore, info: LockInfo, session: str) -> None:
        self.store = store
        self.info = info
        self.session = session
        self._lost = False
        self._renewer = asyncio.get_running_loop().create_task(self._renew())

    @property
    def lost(self) -> bool:
        return self._lost

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(SESSION_TTL / 3)
            try:
                await self.store.call(lambda c: c.session.renew(self.session), "renewing the release lock")
            except consul.NotFound:
                log.error("release lock for %s lost: session %s is gone", self.info.app, self.session)
                self._lost = True
                return
            except StoreError as error:
                # Consul is unreachable: the session may still live; keep trying until its TTL says.
                log.warning("cannot renew the release lock for %s: %s", self.info.app, error.message)

    async def release(self) -> None:
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer
        key = lock_key(self.info.app)
        with contextlib.suppress(StoreError, consul.ConsulException):
            await self.store.call(lambda c: c.kv.put(key, "", release=self.session), f"releasing {key}")
        with contextlib.suppress(StoreError, consul.ConsulException):
            await self.store.call(lambda c: c.session.destroy(self.session), "ending the lock session")


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
        session = await self.store.call(
            lambda c: c.session.create(
                name=f"upstream-bot release {info.app}", behavior="release", ttl=SESSION_TTL, lock_delay=1
            ),
            "creating a lock session",
        )
        value = json.dumps(
            {"release_id": info.release_id, "requester": info.requester, "holder": info.holder, "since": info.since}
        )
        try:
            taken = await self.store.call(lambda c: c.kv.put(key, value, acquire=session), f"acquiring {key}")
        except BaseException:
            with contextlib.suppress(Exception):
                await self.store.call(lambda c: c.session.destroy(session), "ending the lock session")
            raise
        if not taken:
            await self.store.call(lambda c: c.session.destroy(session), "ending the lock session")
            raise LockBusy(await self.holder(info.app))
        return ConsulReleaseLock(self.store, info, session)
