"""One channel message per release, updated in place, at most once a second (chat.update is Tier 3).

Every update marks the message dirty; a single flusher renders the latest state when the second is up,
so a burst of steps costs one edit. Detail (a failing step's output) goes into the message's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.approvers import slack_error
from bot.blocks import progress_message
from commands.release_state import ReleaseState

log = logging.getLogger(__name__)
MIN_INTERVAL = 1.0


class ProgressMessage:
    def __init__(self, client: AsyncWebClient, channel: str, min_interval: float = MIN_INTERVAL) -> None:
        self.client = client
        self.channel = channel
        self.min_interval = min_interval
        self.ts: str | None = None
        self.state: ReleaseState | None = None
        self.last_output: dict[str, str] = {}
        self.edits = 0
        self._last_edit = 0.0
        self._dirty = False
        self._flusher: asyncio.Task[None] | None = None
        self._posting = asyncio.Lock()

    async def update(self, state: ReleaseState, thread: str | None = None) -> None:
        self.state = state
        async with self._posting:
            if self.ts is None:
                text, blocks = progress_message(state, time.time(), self.last_output)
                try:
                    response = await self.client.chat_postMessage(channel=self.channel, text=text, blocks=blocks)
                    self.ts = response["ts"]
                    self._last_edit = time.monotonic()
                except SlackApiError as error:
                    log.error("cannot post release progress to %s: %s", self.channel, slack_error(error))
            else:
                self._dirty = True
                if self._flusher is None or self._flusher.done():
                    self._flusher = asyncio.get_running_loop().create_task(self._flush_later())
        if thread:
            await self.reply(thread)

    async def reply(self, text: str) -> None:
        if self.ts is None:
            return
        try:
            await self.client.chat_postMessage(channel=self.channel, thread_ts=self.ts, text=text[:39000])
        except SlackApiError as error:
            log.error("cannot post to the release thread: %s", slack_error(error))

    async def _flush_later(self) -> None:
        while self._dirty:
            wait = self._last_edit + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty = False
            await self._edit()

    async def _edit(self) -> None:
        if self.ts is None or self.state is None:
            return
        text, blocks = progress_message(self.state, time.time(), self.last_output)
        self._last_edit = time.monotonic()
        self.edits += 1
        try:
            await self.client.chat_update(channel=self.channel, ts=self.ts, text=text, blocks=blocks)
        except SlackApiError as error:
            log.error("cannot update release progress: %s", slack_error(error))

    async def finish(self, state: ReleaseState) -> None:
        """The final state, shown for sure (after any pending edit)."""
        self.state = state
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._dirty = True
        await self._flush_later()
