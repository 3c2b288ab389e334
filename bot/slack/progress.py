"""One channel message per release, updated in place, at most once a second (chat.update is Tier 3).

Every update marks the message dirty; a single background syncer renders the latest state when the
second is up, so a burst of steps costs one edit. Detail (a failing step's output) goes into the
message's thread.

Slack can be down while a release runs; the release must not notice. So nothing here makes the engine
wait on Slack: `update` and `reply` only record and wake the syncer, and every call goes through
`slack_call` (never raises). What Slack did not take is kept: a progress message that could not be
posted is posted by the next flush, a failed edit is redone by the next one (the state is rendered
whole, so the latest state wins), thread replies wait until the message exists. `finish` shows the
final state for sure: it retries with backoff until Slack takes it, so when Slack comes back the
channel shows how the release ended.
"""

from __future__ import annotations

import asyncio
import logging
import time

from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.calls import slack_call
from bot.slack.release_messages import progress_message
from commands.release_state import ReleaseState

log = logging.getLogger(__name__)
MIN_INTERVAL = 1.0
# Pauses between the attempts to show the final state: 5 attempts over about 30 s (plus the calls'
# own time, each bounded by the client's timeout).
FINAL_BACKOFF = (2.0, 4.0, 8.0, 16.0)
MAX_REPLIES = 50  # thread replies kept while Slack is down; older ones are dropped (a summary follows)
SYNC_ROUNDS = 10_000  # bound on one syncer's flushes; an update wakes a new syncer if ever reached


class ProgressMessage:
    def __init__(
        self,
        client: AsyncWebClient,
        channel: str,
        min_interval: float = MIN_INTERVAL,
        final_backoff: tuple[float, ...] = FINAL_BACKOFF,
    ) -> None:
        self.client = client
        self.channel = channel
        self.min_interval = min_interval
        self.final_backoff = final_backoff
        self.ts: str | None = None
        self.state: ReleaseState | None = None
        self.last_output: dict[str, str] = {}
        self.edits = 0
        self.shown_final = False  # Slack has accepted the final state
        self._last_call = 0.0  # monotonic time of the last post or edit attempt (for the pacing)
        self._dirty = False  # the state changed since Slack last accepted it
        self._replies: list[str] = []  # thread replies waiting for the message (and for Slack)
        self._syncer: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()  # one flush at a time: edits must not cross
        self._final = False

    async def update(self, state: ReleaseState, thread: str | None = None) -> None:
        """The release moved on: shown by the syncer, never awaited here (Slack may hang)."""
        if self._final:
            return  # the final state is being shown; nothing after it may replace it
        self.state = state
        self._dirty = True
        if thread:
            self._queue(thread)
        self._wake()

    def reply(self, text: str) -> None:
        """A message in the progress message's thread, sent once the message exists."""
        self._queue(text)
        self._wake()

    def _queue(self, text: str) -> None:
        self._replies.append(text[:39000])
        if len(self._replies) > MAX_REPLIES:
            dropped = self._replies.pop(0)
            log.warning("dropping a release thread reply Slack did not take: %s", dropped[:200])

    def _wake(self) -> None:
        if self._syncer is None or self._syncer.done():
            self._syncer = asyncio.get_running_loop().create_task(self._sync())

    def _pending(self) -> bool:
        return self._dirty or bool(self._replies and self.ts is not None)

    async def _sync(self) -> None:
        for _ in range(SYNC_ROUNDS):
            if not self._pending():
                return
            await self._pace()
            if not await self._flush():
                # Slack failed it; what is pending stays pending. Retrying here would hammer a Slack that
                # is down: the next update (or finish) flushes again.
                return

    async def _pace(self) -> None:
        wait = self._last_call + self.min_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # pacing (chat.update is Tier 3), not waiting for a condition

    async def _flush(self) -> bool:
        """Show the latest state (post the message if it is not there yet, else edit it), then send the
        thread replies. True when Slack took everything pending."""
        async with self._writing:
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        if self._dirty and self.state is not None:
            self._dirty = False  # an update while the call is out marks it again
            text, blocks = progress_message(self.state, time.time(), self.last_output)
            self._last_call = time.monotonic()
            if self.ts is None:
                call = self.client.chat_postMessage(channel=self.channel, text=text, blocks=blocks)
                posted = await slack_call("chat.postMessage", self.channel, call)
                if posted is None or not posted.get("ts"):
                    self._dirty = True
                    return False
                self.ts = str(posted["ts"])
                # Kept in the release's journal (its next write): a bot taking it up after a crash edits
                # this message rather than starting another.
                self.state.progress = {"channel": self.channel, "ts": self.ts}
            else:
                self.edits += 1
                call = self.client.chat_update(channel=self.channel, ts=self.ts, text=text, blocks=blocks)
                if await slack_call("chat.update", self.channel, call) is None:
                    self._dirty = True
                    return False
        for _ in range(len(self._replies)):
            if self.ts is None:
                break
            call = self.client.chat_postMessage(channel=self.channel, thread_ts=self.ts, text=self._replies[0])
            if await slack_call("chat.postMessage", self.channel, call) is None:
                return False
            self._replies.pop(0)
        return not self._pending()

    async def finish(self, state: ReleaseState) -> bool:
        """Show the final state (and the replies queued before it) for sure: retried with backoff until
        Slack takes it. Run it in the background (SlackFrontEnd.spawn): with Slack down it takes about
        30 s and must not hold anything. True when Slack took it."""
        self._final = True
        self.state = state
        self._dirty = True
        attempts = len(self.final_backoff) + 1
        for attempt in range(attempts):
            if self._syncer is not None and not self._syncer.done():
                # Let a running syncer end first (bounded: each call by the client's timeout): it shows
                # the final state itself if it gets to it, and then there is nothing left to do here.
                # asyncio.wait: neither raises the syncer's end nor swallows a cancellation of this task.
                await asyncio.wait({self._syncer})
            if self._pending():
                await self._pace()
            if not self._pending() or await self._flush():
                self.shown_final = True
                return True
            if attempt < len(self.final_backoff):
                delay = self.final_backoff[attempt]
                log.warning(
                    "the final state of the release in %s did not reach Slack (attempt %d of %d); next in %.0f s",
                    self.channel,
                    attempt + 1,
                    attempts,
                    delay,
                )
                await asyncio.sleep(delay)  # backoff while Slack is down: there is nothing to poll
        log.error("gave up showing the final state of the release in %s: Slack did not take it", self.channel)
        return False
