"""Which `serve` replica runs the health watch: the one holding the Consul session lock
`upstream-bot/locks/watch` (its value names the holder, host:pid).

Every replica keeps a session (TTL `consul.session_ttl`, bot/consul/session.py) and, while it does
not lead, looks at the key every `POLL` seconds and tries `?acquire=` when it is free. A leader that
dies stops renewing; Consul frees the key when the session's TTL runs out, then keeps it from everyone
for the session's lock-delay: another replica leads within TTL + lock-delay + POLL (Consul itself may
take up to twice the TTL to expire a session).

The session is renewed every TTL/5 (at most every 10 s) and its lock-delay is that and one second
more: when Consul ends a leader's session early (an operator destroys it, Consul invalidates it), the
leader's next renewal hears 404 and it stops before the lock-delay lets anyone else lead, so two
replicas never post at once. (When the leader is the one cut off, its own TTL count, started before
Consul's, runs out first.) TTL 15 s: renewed every 3 s, lock-delay 4 s, takeover within about 20 s.

`leading` is what the watch asks before every round and every alert. It turns false at once when the
session is lost (Consul says it is gone, or no renewal succeeded within a TTL, counted on
time.monotonic()), before Consul could give the key to anyone else. `term` grows with each election
won, so the watch can tell a new leadership (reload the incidents) from the one it started a round in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable

from bot.consul.session import KeptSession, acquire, create_session, end_session
from bot.consul.store import ConsulStore
from commands.errors import StoreError
from commands.interfaces import HeldLock

log = logging.getLogger(__name__)
WATCH_LOCK = "upstream-bot/locks/watch"
POLL = 1.0  # seconds between looks at a held key (and after a failure)
RENEW_RETRY = 1.0
RENEW_EVERY_MAX = 10.0


def renew_every(ttl: float) -> float:
    return min(ttl / 5, RENEW_EVERY_MAX)


def lock_delay(ttl: float) -> int:
    """Whole seconds (Consul's lock-delay goes up to 60 s): longer than a renewal period."""
    return math.ceil(renew_every(ttl)) + 1


class WatchElection:
    def __init__(self, store: ConsulStore, holder: str, ttl: float, key: str = WATCH_LOCK) -> None:
        self.store = store
        self.holder = holder
        self.ttl = ttl
        self.key = key
        self.term = 0
        self.on_elected: Callable[[], None] | None = None  # called each time this replica starts leading
        self._session: KeptSession | None = None
        self._leader = False
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return self._leader and self._session is not None and not self._session.lost

    @property
    def held(self) -> HeldLock | None:
        """The lock as the leader's writes name it (`check-session`); None when not leading."""
        return HeldLock(self.key, self._session.session) if self.leading and self._session is not None else None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="watch election")

    async def _run(self) -> None:
        while True:
            try:
                await self._campaign()
            except asyncio.CancelledError:
                raise
            except StoreError as error:
                log.warning("watch election: %s", error.message)
            except Exception:
                log.exception("watch election failed a turn")
            await asyncio.sleep(POLL)

    async def _campaign(self) -> None:
        """One turn: a live session, the key if free, and, once leading, wait until the session is lost."""
        if self._session is None or self._session.lost:
            self._session = None
            session, sent = await create_session(
                self.store, f"upstream-bot watch {self.holder}", self.ttl, lock_delay(self.ttl)
            )
            self._session = KeptSession(
                self.store,
                session,
                ttl=self.ttl,
                renewed_at=sent,
                renew_every=renew_every(self.ttl),
                retry_every=RENEW_RETRY,
                what="watch lock",
            )
        session = self._session
        _, item = await self.store.call(lambda c: c.kv.get(self.key), f"reading {self.key}")
        if item and item.get("Session") and item["Session"] != session.session:
            return  # someone else leads
        value = json.dumps({"holder": self.holder, "since": time.time()})
        if not await acquire(self.store, self.key, value, session.session, lock_delay(self.ttl)) or session.lost:
            return
        self._leader = True
        self.term += 1
        log.info("leading the health watch (%s, session %s)", self.key, session.session)
        if self.on_elected is not None:
            self.on_elected()
        try:
            await session.wait_lost()
        finally:
            self._leader = False
        log.warning("no longer leading the health watch: its session was lost")

    async def close(self) -> None:
        """Stop campaigning; free the key at once if held (no lock-delay on an explicit release), end
        the session. Best effort, never raises."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        session, self._session, self._leader = self._session, None, False
        if session is None:
            return
        with contextlib.suppress(Exception):
            if not session.lost:
                await session.release_key(self.key)  # answers false (harmlessly) when not held
                return
            await session.stop_renewing()
            await end_session(self.store, session.session)
