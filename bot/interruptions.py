"""Finds releases whose bot died and tells the channel, on every `serve` replica.

A release is interrupted when its journal says running and its lock is free (the holder's session
ended: the bot died, or lost Consul for longer than the TTL). Every second one read of the lock keys
shows which locks are free; the journal is read only for an app whose lock key changed since the last
look (a release ended, or a session expired), and for every app at start and once a minute, so a bot
that starts after the crash reports it too. Each finding is marked in the journal with check-and-set
before it is told, so several replicas tell it once (Releases.claim_interrupted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from commands.errors import StoreError
from commands.events import Notifier, ReleaseInterrupted
from commands.releases import Releases

log = logging.getLogger(__name__)
CHECK_EVERY = 1.0  # seconds between looks at the lock keys (one small Consul read)
FULL_LOOK_EVERY = 60  # looks between reads of every app's journal


class InterruptionMonitor:
    def __init__(self, releases: Releases, apps: list[str], check_every: float = CHECK_EVERY) -> None:
        self.releases = releases
        self.apps = apps
        self.check_every = check_every
        self._seen: dict[str, int] = {}  # app -> version of its free lock key at the last look
        self._task: asyncio.Task[None] | None = None

    def start(self, notifier: Notifier) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(notifier), name="interrupted releases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def look(self, notifier: Notifier, everything: bool) -> int:
        """One look; how many interrupted releases it told. Each is told as soon as it is claimed: an
        error on another app must not keep it from the channel (it is marked told in Consul already)."""
        free = await self.releases.locks.free()
        changed = [a for a in self.apps if a in free and free.get(a) != self._seen.get(a)]
        told, failed = 0, set()
        for app in list(self.apps) if everything else changed:
            try:
                entry = await self.releases.claim_interrupted(app)
            except StoreError as error:
                # Not remembered as seen: the next look (a second on) reads this app again, rather than the
                # next full look a minute on.
                log.warning("cannot read the release journal of %s: %s", app, error.message)
                failed.add(app)
                continue
            if entry is not None:
                await notifier.emit(ReleaseInterrupted(entry, self.releases.summary(entry)))
                told += 1
        self._seen = {a: v for a, v in free.items() if a in self.apps and a not in failed}
        return told

    async def _run(self, notifier: Notifier) -> None:
        looks = 0
        while True:  # until stopped with the service
            try:
                await self.look(notifier, everything=looks % FULL_LOOK_EVERY == 0)
            except StoreError as error:
                log.warning("cannot look for interrupted releases: %s", error.message)
            except Exception:
                log.exception("looking for interrupted releases failed")
            looks += 1
            await asyncio.sleep(self.check_every)  # a poll of Consul's state, not a wait for our own work
