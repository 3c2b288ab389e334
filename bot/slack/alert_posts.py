"""The health watch's messages in the team's channel: an alert per incident (its ts kept, so the
recovery goes in its thread and the alert is updated), a grouped alert when many nodes of an app fail
at once (one message, one recovery thread), the watch unable to see an app, reminders, drained-for-long
reminders.

Nothing the watch says is lost to a Slack outage, and the watch never waits on Slack: `watch_event`
only queues the event. One background worker posts the queue in order; a post Slack did not take
(down, 5xx, timeout, a 429 still refused after the client's own Retry-After retries) is tried again
with backoff (`BACKOFF`, and never sooner than Slack's Retry-After) while later events wait behind it,
so a recovery never comes before its alert nor a reminder after its recovery. An event still not
posted `MAX_AGE` after it was queued is dropped (logged with the event); so is one whose replica no
longer leads the watch (`WatchEvent.still_valid`), and one Slack refuses for good (`channel_not_found`,
`invalid_blocks`: trying again would not change the answer). The queue holds `QUEUE_LIMIT` events;
beyond that the oldest reminders make room, never an alert or a recovery (those are bounded by the
incidents themselves, and by MAX_AGE while Slack is down).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError

from bot.metrics import ALERTS_POSTED
from bot.slack.alert_messages import (
    alert_message,
    drained_reminder_message,
    group_alert_message,
    group_closed_message,
    group_resolved_message,
    resolved_message,
)
from bot.slack.blocks import Message
from bot.slack.calls import slack_call, slack_error
from bot.slack.mrkdwn import mention
from commands.watch import Incident, WatchEvent

if TYPE_CHECKING:
    from bot.slack.front import SlackFrontEnd

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)  # pauses between tries of one post; then every 60 s
MAX_AGE = 3600.0  # seconds an event may wait (queued and retried) before it is dropped
QUEUE_LIMIT = 1000
MAX_RETRY_AFTER = 600.0  # a Retry-After longer than this is not believed
SHEDDABLE = ("reminder", "group_reminder", "drained_reminder")  # what makes room in a full queue
# Slack's own words for "try again later" (HTTP 200 with ok: false, or a 5xx with a JSON body).
TRANSIENT = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}


@dataclass
class _Queued:
    event: WatchEvent
    at: float  # monotonic, when queued


@dataclass
class _Failure:
    """Why one try failed, noted on its way to `slack_call` (which logs it and answers None)."""

    transient: bool = True  # Slack down, slow, or busy: worth another try
    retry_after: float = 0.0  # seconds Slack asked us to wait (429)


class _Dropped(Exception):
    def __init__(self, why: str, level: int = logging.ERROR) -> None:
        super().__init__(why)
        self.level = level


def _retry_after(headers: Any) -> float:
    for key, value in dict(headers or {}).items():
        if str(key).lower() == "retry-after":
            value = value[0] if isinstance(value, list | tuple) and value else value
            try:
                return min(max(float(value), 0.0), MAX_RETRY_AFTER)
            except (TypeError, ValueError):
                return 0.0
    return 0.0


async def _noting(call: Awaitable[T], failure: _Failure) -> T:
    """Await a Slack call; when it raises, note in `failure` whether trying again can help."""
    try:
        return await call
    except SlackApiError as error:
        status = error.response.status_code
        failure.transient = status == 429 or status >= 500 or slack_error(error) in TRANSIENT
        failure.retry_after = _retry_after(error.response.headers)
        raise
    except (aiohttp.ClientError, OSError, TimeoutError):
        raise
    except Exception:  # a bug here, not Slack: another try would fail the same way
        failure.transient = False
        raise


class AlertPosts:
    def __init__(
        self,
        front: SlackFrontEnd,
        backoff: Sequence[float] = BACKOFF,
        max_age: float = MAX_AGE,
        limit: int = QUEUE_LIMIT,
    ) -> None:
        self.front = front
        self.backoff = tuple(backoff)
        self.max_age = max_age
        self.limit = limit
        self.messages: dict[str, tuple[str, str]] = {}  # incident id -> (channel, ts) of its alert
        self.failures = 0  # tries Slack failed so far (each retried)
        self.dropped = 0  # events given up on
        self._queue: deque[_Queued] = deque()
        self._current: _Queued | None = None  # the event being posted (no longer in the queue)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def people(self, app: str) -> str:
        """The app's approvers, as mentions (who an alert is for)."""
        approvers = self.front.service.apps[app].approvers if app in self.front.service.apps else ()
        return " ".join(mention(i) for i in approvers)

    # -- the queue -------------------------------------------------------------------------------------

    async def watch_event(self, event: WatchEvent) -> None:
        """Queue the event for the channel and return at once (the watch's round never waits on Slack)."""
        if not self.front.channel:
            log.warning("health watch event with no slack.channel to post it to: %s", event)
            return
        if self._closed:
            log.warning("health watch event after shutdown, not posted: %s", event)
            return
        if len(self._queue) >= self.limit:
            self._shed()
        self._queue.append(_Queued(event, time.monotonic()))
        self._idle.clear()
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="health watch posts")

    @property
    def pending(self) -> int:
        """Events queued or being posted."""
        return len(self._queue) + (self._current is not None)

    def _shed(self) -> None:
        for queued in self._queue:
            if queued.event.kind in SHEDDABLE:
                self._queue.remove(queued)
                self.dropped += 1
                log.warning(
                    "health watch posts: queue full (%d), oldest reminder dropped: %s", self.limit, queued.event
                )
                return
        log.warning(
            "health watch posts: queue full (%d) of alerts and recoveries; kept (they are never dropped for room)",
            self.limit,
        )

    async def settle(self, timeout: float) -> bool:
        """Wait until the queue is empty, every event posted (or dropped); False if `timeout` came first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self, grace: float = 0.0) -> None:
        """Shutdown: let the queue drain for up to `grace` seconds, then stop the worker. What is left
        is logged, not posted."""
        if grace > 0:
            await self.settle(grace)
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            await asyncio.wait([worker])  # its cancellation, not ours: ours still propagates
        if self.pending:
            log.warning("health watch posts: shutting down with %d event(s) not posted", self.pending)

    async def _work(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._current = queued = self._queue.popleft()
            try:
                await self._deliver(queued)
                ALERTS_POSTED.labels(queued.event.kind).inc()
            except _Dropped as why:
                self.dropped += 1
                event = queued.event
                log.log(why.level, "health watch %s of %s dropped, %s: %r", event.kind, event.app, why, event)
            except Exception:  # a rendering bug: this event is lost, the ones behind it are not
                self.dropped += 1
                log.exception("health watch %s of %s not posted: %r", queued.event.kind, queued.event.app, queued.event)
            self._current = None  # not when cancelled (shutdown): it is still unposted

    # -- one Slack call, tried until Slack takes it -------------------------------------------------

    async def _send(self, queued: _Queued, method: str, channel: str, make: Callable[[], Awaitable[T]]) -> T | None:
        """Slack's answer; None when Slack refused for good (logged by slack_call). Raises _Dropped when
        the event is no longer valid or too old."""
        pauses = iter(self.backoff)
        deadline = queued.at + self.max_age
        while True:
            if not queued.event.still_valid():
                raise _Dropped("this replica no longer leads the watch", logging.WARNING)
            failure = _Failure()
            result = await slack_call(method, channel, _noting(make(), failure))
            if result is not None:
                return result
            if not failure.transient:
                return None
            self.failures += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Dropped(f"Slack did not take it within {self.max_age:g} s")
            pause = max(next(pauses, self.backoff[-1] if self.backoff else 1.0), failure.retry_after)
            await asyncio.sleep(min(pause, left))

    async def _post(self, queued: _Queued, channel: str, message: Message, thread: str | None = None) -> str | None:
        """chat.postMessage (in `thread` when given; in the channel if Slack refuses the thread); its ts."""
        text, blocks = message
        extra = {"thread_ts": thread} if thread else {}
        response = await self._send(
            queued,
            "chat.postMessage",
            channel,
            lambda: self.front.client.chat_postMessage(channel=channel, text=text, blocks=blocks, **extra),
        )
        if response is None and thread:
            return await self._post(queued, channel, message)
        return None if response is None else str(response.get("ts") or "") or None

    async def _update(self, queued: _Queued, channel: str, ts: str, message: Message) -> None:
        text, blocks = message
        await self._send(
            queued,
            "chat.update",
            channel,
            lambda: self.front.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks),
        )

    # -- what each event says ------------------------------------------------------------------------

    async def _deliver(self, queued: _Queued) -> None:
        event, channel, now = queued.event, self.front.channel or "", time.time()
        if time.monotonic() - queued.at > self.max_age:
            raise _Dropped(f"queued more than {self.max_age:g} s ago")
        incident, kind = event.incident, event.kind
        if kind in ("alert", "blind") and incident is not None:
            ts = await self._post(queued, channel, alert_message(incident, now, self.people(event.app)))
            self._posted([incident], channel, ts)
        elif kind == "reminder" and incident is not None:
            if _remindable(incident, now):
                await self._post(queued, channel, alert_message(incident, now, self.people(event.app), True))
        elif kind == "recovered" and incident is not None:
            await self._recovered(queued, incident, channel, now)
        elif kind == "group_alert" and event.incidents:
            ts = await self._post(queued, channel, group_alert_message(event, now, self.people(event.app)))
            self._posted(event.incidents, channel, ts)
        elif kind == "group_reminder":
            still = tuple(i for i in event.incidents if _remindable(i, now))
            if still:
                message = group_alert_message(replace(event, incidents=still), now, self.people(event.app))
                await self._post(queued, channel, message)
        elif kind == "group_recovered" and event.incidents:
            await self._group_recovered(queued, event, channel, now)
        elif kind == "drained_reminder":
            await self._post(queued, channel, drained_reminder_message(event, now))
        else:
            log.warning("health watch event not understood, not posted: %r", event)

    def _posted(self, incidents: Sequence[Incident], channel: str, ts: str | None) -> None:
        """Where an alert went, for its recovery; kept with the incidents in Consul (written at once), so
        a replica taking the watch over replies in the same thread and does not announce it again."""
        if not ts:
            return
        for incident in incidents:
            self.messages[incident.id] = (channel, ts)
            incident.post_ref = {"channel": channel, "ts": ts}
        # Into Consul now, not at the next round: a successor must know it was posted (or it posts again).
        noted = getattr(self.front.service.watches, "posted", None)
        if callable(noted):
            noted(list(incidents))

    def _where(self, incident: Incident) -> tuple[str, str] | None:
        ref = incident.post_ref or {}
        known = (ref["channel"], ref["ts"]) if ref.get("channel") and ref.get("ts") else None
        return self.messages.pop(incident.id, None) or known

    def _group_over(self, app: str, group: str) -> bool:
        """No incident of this grouped alert is open any more (as far as this replica's watch knows)."""
        watches = getattr(self.front.service, "watches", None)
        watch = watches.watch(app) if watches is not None else None
        return watch is not None and not watch.in_group(group)

    async def _recovered(self, queued: _Queued, incident: Incident, channel: str, now: float) -> None:
        message = resolved_message(incident, now)
        posted = self._where(incident)
        if posted is None:
            await self._post(queued, channel, message)
            return
        where, ts = posted
        await self._post(queued, where, message, thread=ts)
        if incident.group is None:
            await self._update(queued, where, ts, message)
        elif self._group_over(incident.app, incident.group):
            await self._update(queued, where, ts, group_closed_message(incident.app))

    async def _group_recovered(self, queued: _Queued, event: WatchEvent, channel: str, now: float) -> None:
        """One message for them all: in their alert's thread when they shared one, else in the channel.
        The grouped alerts they came from are closed once none of their nodes is open."""
        message = group_resolved_message(event, now)
        places = [self._where(i) for i in event.incidents]
        if len(set(places)) == 1 and places[0] is not None:
            where, ts = places[0]
            await self._post(queued, where, message, thread=ts)
        else:
            await self._post(queued, channel, message)
        closed: set[tuple[str, str]] = set()
        for incident, place in zip(event.incidents, places, strict=True):
            if incident.group and place is not None and place not in closed:
                if self._group_over(event.app, incident.group):
                    closed.add(place)
                    await self._update(queued, place[0], place[1], group_closed_message(event.app))


def _remindable(incident: Incident, now: float) -> bool:
    """A reminder still worth posting: not resolved, acknowledged or silenced while it waited."""
    return incident.open and not incident.acknowledged_by and (incident.silenced_until or 0) <= now
