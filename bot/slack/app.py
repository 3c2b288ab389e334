"""The Slack front end: Bolt AsyncApp listeners, kept thin. Acknowledge first, then work.

Transport (HTTP endpoint or Socket Mode) lives elsewhere; this module only turns Slack payloads into
requests for `CommandService` and its events into Slack messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.confirmations import ClaimRefused, Confirmations, Pending
from bot.slack.blocks import (
    abort_message,
    alert_message,
    alerts_message,
    applied_message,
    approval_message,
    confirmation_message,
    decision_label,
    decision_message,
    mention,
    release_plan_message,
    release_status_message,
    resolved_message,
    status_message,
    text_message,
)
from bot.slack.directory import ApproverDirectory, slack_call, slack_error
from bot.slack.progress import ProgressMessage
from bot.terminal.render import when
from commands.errors import UserError
from commands.events import (
    AbortRequested,
    AlertsReport,
    ApprovalRequested,
    ChangeApplied,
    ConfirmationNeeded,
    DecisionNeeded,
    Event,
    Help,
    Notice,
    Problem,
    ReleaseDryRun,
    ReleaseFinished,
    ReleasePlanned,
    ReleaseStatusReport,
    ReleaseUpdate,
    StatusReport,
    StepOutput,
)
from commands.grammar import COMMANDS, parse
from commands.plans import ChangePlan
from commands.release_plan import ReleasePlan
from commands.release_state import ReleaseState, Status
from commands.requests import StatusRequest
from commands.service import CommandService
from commands.watch import WatchEvent

log = logging.getLogger(__name__)
SEEN_TRIGGERS = 2000  # slash-command trigger_ids remembered to ignore Slack's retries
SILENCE = 3600.0  # the alert's "Silence 1 h"
# Seconds a Slack call may take (slack-sdk's default is 30). Slack answers in well under a second; a
# Slack that hangs must not hold whatever waits on it for long. SLACK_API_TIMEOUT overrides it.
SLACK_TIMEOUT = 10


TOKEN_ERRORS = ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired")


class BotTokenRefused(Exception):
    pass


def slack_timeout() -> int:
    """SLACK_API_TIMEOUT (whole seconds, at least 1), or SLACK_TIMEOUT when unset or not a number."""
    raw = os.environ.get("SLACK_API_TIMEOUT", "")
    try:
        return max(1, int(raw)) if raw else SLACK_TIMEOUT
    except ValueError:
        log.warning("SLACK_API_TIMEOUT=%r is not a whole number of seconds; using %d", raw, SLACK_TIMEOUT)
        return SLACK_TIMEOUT


def make_client(token: str, api_url: str | None, timeout: int | None = None) -> AsyncWebClient:
    client = AsyncWebClient(
        token=token, base_url=api_url or "https://slack.com/api/", timeout=timeout or slack_timeout()
    )
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
    return client


class SlackNotifier:
    """Renders one request's events: answers to the requester are ephemeral, results go to the channel."""

    def __init__(self, front: SlackFrontEnd, channel: str, user: str, response_url: str | None) -> None:
        self.front = front
        self.channel = channel
        self.user = user
        self.response_url = response_url

    async def emit(self, event: Event) -> None:
        """Never raises: the release engine and the commands emit through this, and nothing on the Slack
        side (Slack down, a rendering bug) may stop or corrupt them. Slack calls are guarded one by one
        (slack_call); this catches the rest."""
        try:
            await self._emit(event)
        except Exception:
            log.exception("cannot show %s in Slack", type(event).__name__)

    async def _emit(self, event: Event) -> None:
        front = self.front
        match event:
            case StatusReport():
                await self.private(*status_message(event))
            case ConfirmationNeeded():
                pending = front.confirmations.add(event.plan, event.stage, self.channel)
                await self.private(*confirmation_message(event, pending.key))
            case ChangeApplied():
                await front.announce(self.channel, *applied_message(event))
            case Problem(text=text):
                await self.private(*text_message(text, ":no_entry:"))
            case Notice(text=text) | Help(text=text):
                await self.private(*text_message(text))
            case ReleasePlanned(plan=plan, stage=stage):
                pending = front.confirmations.add(plan, stage, self.channel)
                await self.private(*release_plan_message(plan, pending.key, stage))
            case ReleaseDryRun(plan=plan):
                await self.private(*release_plan_message(plan, "", dry_run=True))
            case ApprovalRequested(plan=plan):
                pending = front.confirmations.add(plan, 0, self.channel)
                await front.post(front.release_channel(self.channel), *approval_message(plan, pending.key))
            case ReleaseUpdate(state=state, thread=thread):
                await front.progress(state, self.channel).update(state, thread)
            case StepOutput(release_id=release_id, output=output):
                progress = front.progresses.get(release_id)
                if progress is not None:
                    progress.last_output[output.node] = output.line
            case DecisionNeeded(state=state):
                front.alerted.add(state.plan.id)
                await front.post(
                    front.release_channel(self.channel), *decision_message(event, front.people(state.plan))
                )
            case ReleaseFinished(state=state):
                await front.finished(state, self.channel)
            case ReleaseStatusReport():
                await self.private(*release_status_message(event, time.time()))
            case AbortRequested():
                await self.private(*abort_message(event))
            case AlertsReport():
                await self.private(*alerts_message(event, time.time()))
            case WatchEvent():
                await front.watch_event(event)

    async def private(self, text: str, blocks: list[dict[str, Any]]) -> None:
        """chat.postEphemeral; through the response_url where that failed (the bot is not in the channel)."""
        call = self.front.client.chat_postEphemeral(channel=self.channel, user=self.user, text=text, blocks=blocks)
        if await slack_call("chat.postEphemeral", self.channel, call) is not None or not self.response_url:
            return
        await self.front.respond(self.response_url, self.channel, text=text, blocks=blocks, response_type="ephemeral")


class SlackFrontEnd:
    def __init__(self, service: CommandService, client: AsyncWebClient, channel: str | None = None) -> None:
        self.service = service
        self.client = client
        self.channel = channel  # the team's deploy channel: every result is posted there too
        self.confirmations = Confirmations()
        self.directory = ApproverDirectory(client)
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._tasks: set[asyncio.Task[object]] = set()
        self.progresses: dict[str, ProgressMessage] = {}
        self.alerted: set[str] = set()  # releases whose failure was already posted with buttons
        self.alert_messages: dict[str, tuple[str, str]] = {}  # incident id -> (channel, ts) of its alert

    # -- health watch ------------------------------------------------------------------------------

    def channel_notifier(self) -> SlackNotifier:
        """For events nobody asked for (the health watch): they go to the team's channel."""
        return SlackNotifier(self, self.channel or "", "", None)

    def app_people(self, app: str) -> str:
        return " ".join(mention(i) for i in self.service.apps[app].approvers)

    async def watch_event(self, event: WatchEvent) -> None:
        if not self.channel:
            log.warning("health watch event with no slack.channel to post it to: %s", event)
            return
        incident, now = event.incident, time.time()
        if event.kind in ("alert", "reminder") and incident is not None:
            text, blocks = alert_message(incident, now, self.app_people(event.app), event.kind == "reminder")
            call = self.client.chat_postMessage(channel=self.channel, text=text, blocks=blocks)
            response = await slack_call("chat.postMessage", self.channel, call)
            if response is None:
                return
            if event.kind == "alert":
                self.alert_messages[incident.id] = (self.channel, response["ts"])
        elif event.kind == "recovered" and incident is not None:
            text, blocks = resolved_message(incident, now)
            posted = self.alert_messages.pop(incident.id, None)
            if posted is None:
                await self.post(self.channel, text, blocks)
                return
            channel, ts = posted
            await self.post_thread(channel, ts, text)
            await slack_call(
                "chat.update", channel, self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
            )
        elif event.kind == "drained_reminder":
            by = f" by <@{event.by}>" if event.by and event.by[:1] in "UW" else (f" by {event.by}" if event.by else "")
            since = f"<!date^{int(event.since or now)}^{{date_short_pretty}} {{time}}|{when(event.since or now)}>"
            await self.post(
                self.channel,
                *text_message(
                    f"{event.address} of {event.app} is still drained since {since}{by}. `/undrain {event.address}` "
                    "puts it back after a probe.",
                    ":hourglass:",
                ),
            )

    async def on_watch_drain(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._watch_drain(body))

    async def _watch_drain(self, body: dict[str, Any]) -> None:
        """The alert's Drain button: exactly `/drain <node> <app>` by whoever pressed it (confirmed, guarded)."""
        user, _, notifier = self._context(body)
        value = json.loads(body["actions"][0]["value"])
        try:
            request = parse("/drain", f"{value['address']} {value['app']}")
        except UserError as error:
            await notifier.emit(Problem(error.message))
            return
        await self._guarded(self.service.handle(request, user, notifier), notifier, "drain from an alert")

    async def on_watch_silence(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._watch_mark(body, "silence"))

    async def on_watch_ack(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._watch_mark(body, "acknowledge"))

    async def _watch_mark(self, body: dict[str, Any], what: str) -> None:
        user, _, notifier = self._context(body)
        value = json.loads(body["actions"][0]["value"])
        watch = self.service.watches.watch(value["app"]) if self.service.watches else None
        incident = None
        if watch is not None:
            if what == "silence":
                incident = watch.silence(value["incident"], time.time() + SILENCE)
            else:
                incident = watch.acknowledge(value["incident"], user)
        if incident is None:
            await notifier.private(*text_message("That incident is already resolved.", ":information_source:"))
            return
        message = (
            f"Silenced for 1 h by <@{user}>: no reminder, no new alert for {incident.address} until "
            f"{when(time.time() + SILENCE)}."
            if what == "silence"
            else f"Acknowledged by <@{incident.acknowledged_by}>: no more reminders; recovery is still posted."
        )
        ts = (body.get("message") or {}).get("ts") or body.get("container", {}).get("message_ts")
        await self.post_thread((body.get("channel") or {}).get("id", self.channel or ""), ts, message)

    def release_channel(self, origin: str) -> str:
        return self.channel or origin

    def people(self, plan: ReleasePlan) -> str:
        """The requester and the app's approvers, as mentions (who an alert is for)."""
        ids = dict.fromkeys([plan.requester, *self.service.apps[plan.app].approvers])
        return " ".join(mention(i) for i in ids)

    def progress(self, state: ReleaseState, origin: str) -> ProgressMessage:
        progress = self.progresses.get(state.plan.id)
        if progress is None:
            progress = self.progresses[state.plan.id] = ProgressMessage(self.client, self.release_channel(origin))
        return progress

    async def finished(self, state: ReleaseState, origin: str) -> None:
        progress = self.progress(state, origin)
        progress.reply(f"{state.plan.title}: {state.status.value}. {state.message}")  # sent after the final edit
        # In the background: with Slack down, finish retries for about 30 s; nothing waits for that.
        self.spawn(progress.finish(state))
        if state.status is Status.FAILED and state.plan.id not in self.alerted:
            # Stopped without a question (preflight, guard, lost lock): still tell the people concerned.
            await self.post(
                progress.channel,
                *text_message(
                    f"{self.people(state.plan)}: {state.plan.title} failed: {state.message}", ":rotating_light:"
                ),
            )
        self.progresses.pop(state.plan.id, None)
        self.alerted.discard(state.plan.id)

    async def post(self, channel: str, text: str, blocks: list[dict[str, Any]]) -> None:
        await slack_call(
            "chat.postMessage", channel, self.client.chat_postMessage(channel=channel, text=text, blocks=blocks)
        )

    async def announce(self, origin: str, text: str, blocks: list[dict[str, Any]]) -> None:
        for channel in dict.fromkeys(c for c in (origin, self.channel) if c):
            await self.post(channel, text, blocks)

    async def respond(self, url: str, channel: str | None, **message: Any) -> None:
        """Post to an interaction's response_url (a Slack webhook), with the Web API client's timeout."""
        webhook = AsyncWebhookClient(url, timeout=self.client.timeout)
        await slack_call("response_url", channel, webhook.send(**message))

    def _first_time(self, trigger_id: str | None) -> bool:
        if not trigger_id:
            return True
        if trigger_id in self._seen:
            return False
        self._seen[trigger_id] = time.time()
        while len(self._seen) > SEEN_TRIGGERS:
            self._seen.popitem(last=False)
        return True

    # -- listeners -------------------------------------------------------------------------------

    def register(self, app: AsyncApp) -> None:
        for name in COMMANDS:
            app.command(name)(self.on_command)
        app.action("confirm")(self.on_confirm)
        app.action("cancel")(self.on_cancel)
        app.action("status_page")(self.on_status_page)
        app.action("release_start")(self.on_release_start)
        app.action("release_cancel")(self.on_release_cancel)
        app.action("release_approve")(self.on_release_approve)
        app.action("release_reject")(self.on_release_reject)
        app.view("release_reject_reason")(self.on_reject_reason)
        app.action("release_decision")(self.on_release_decision)
        app.action("release_abort")(self.on_release_abort)
        app.action("watch_drain")(self.on_watch_drain)
        app.action("watch_silence")(self.on_watch_silence)
        app.action("watch_ack")(self.on_watch_ack)

    def spawn(self, work: Coroutine[Any, Any, object]) -> None:
        """Run `work` after the acknowledgement has gone out; keep a reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        # Said now, not whenever the task is collected: a listener's work that failed is a bug to see.
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def on_command(self, ack: Any, command: dict[str, Any]) -> None:
        await ack()  # before any other I/O: Slack gives up after 3 s
        if not self._first_time(command.get("trigger_id")):
            log.info("ignoring a retry of %s %s", command.get("command"), command.get("trigger_id"))
            return
        self.spawn(self._command(command))

    async def _command(self, command: dict[str, Any]) -> None:
        notifier = SlackNotifier(self, command["channel_id"], command["user_id"], command.get("response_url"))
        try:
            request = parse(command["command"], command.get("text", ""))
        except UserError as error:
            await notifier.emit(Problem(error.message))
            return
        try:
            await self.service.handle(request, command["user_id"], notifier)
        except Exception:
            log.exception("command %s failed", command.get("command"))
            await notifier.emit(Problem("Internal error; nothing more was done. The bot's log has the details."))

    async def _is_approver(self, user: str, apps: list[str]) -> bool:
        approvers: tuple[str, ...] = ()
        for app in apps:
            approvers += self.service.apps[app].approvers
        return await self.directory.is_approver(user, approvers)

    async def _may_confirm(self, user: str, key: str) -> str | None:
        """Why `user` may not press the button behind `key`, or None."""
        pending = self.confirmations.get(key)
        if pending is None or user == pending.plan.requester:
            return None  # claim() explains an unknown key
        apps = self.confirmations.apps(key)
        if await self._is_approver(user, apps):
            return None
        return (
            f"Only <@{pending.plan.requester}> (who asked) or an approver of {', '.join(apps)} can press this; "
            "nothing was changed."
        )

    async def on_confirm(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._press(body, "confirmed"))

    async def on_cancel(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._press(body, "cancelled"))

    async def _claim(self, body: dict[str, Any], verdict: str) -> tuple[Pending, str, SlackNotifier] | None:
        """A Confirm/Start/Cancel press: checked against who may press it, then claimed once (idempotent);
        the buttons are replaced by the verdict. None when refused (the presser is told why)."""
        user, _, notifier = self._context(body)
        key = body["actions"][0].get("value", "")
        refusal = await self._may_confirm(user, key)
        if refusal:
            await notifier.private(*text_message(refusal, ":no_entry:"))
            return None
        try:
            pending = self.confirmations.claim(key, user, verdict)
        except ClaimRefused as refused:
            await notifier.private(*text_message(refused.message, ":information_source:"))
            return None
        await self._replace(body, f"{pending.plan.title}: {verdict} by <@{user}>.")
        return pending, user, notifier

    async def _press(self, body: dict[str, Any], verdict: str) -> None:
        claimed = await self._claim(body, verdict)
        if claimed is None or verdict == "cancelled":
            return
        pending, user, notifier = claimed
        assert isinstance(pending.plan, ChangePlan)
        work = self.service.confirm(pending.plan, pending.stage, user, notifier)
        await self._guarded(work, notifier, pending.plan.title)

    async def _replace(self, body: dict[str, Any], text: str) -> None:
        """Swap the buttons for the verdict, so the message cannot be pressed again."""
        url = body.get("response_url")
        if url:
            channel = (body.get("channel") or {}).get("id")
            await self.respond(url, channel, text=text, replace_original=True, blocks=text_message(text)[1])

    async def on_status_page(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._status_page(body))

    async def _status_page(self, body: dict[str, Any]) -> None:
        value = json.loads(body["actions"][0]["value"])
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id", "")
        notifier = SlackNotifier(self, channel, user, body.get("response_url"))
        try:
            report = await self.service.status(StatusRequest(value["app"], int(value["page"])))
        except UserError as error:
            await notifier.emit(Problem(error.message))
            return
        text, blocks = status_message(report)
        url = body.get("response_url")
        if url:
            await self.respond(url, channel, text=text, blocks=blocks, replace_original=True)
        else:
            await notifier.private(text, blocks)

    # -- release buttons ----------------------------------------------------------------------------

    def _context(self, body: dict[str, Any]) -> tuple[str, str, SlackNotifier]:
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id") or body.get("container", {}).get("channel_id", "")
        return user, channel, SlackNotifier(self, channel, user, body.get("response_url"))

    async def on_release_start(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._release_press(body, "started"))

    async def on_release_cancel(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._release_press(body, "cancelled"))

    async def _release_press(self, body: dict[str, Any], verdict: str) -> None:
        claimed = await self._claim(body, verdict)
        if claimed is None or verdict == "cancelled":
            return
        pending, user, notifier = claimed
        assert isinstance(pending.plan, ReleasePlan)
        work = self.service.start_release(pending.plan, pending.stage, user, notifier)
        await self._guarded(work, notifier, pending.plan.title)

    async def _guarded(self, work: Coroutine[Any, Any, Any], notifier: SlackNotifier, what: str) -> None:
        try:
            await work
        except Exception:
            log.exception("%s failed", what)
            await notifier.emit(
                Problem(
                    f"Internal error in {what}; check the state with /upstream status (and /release status). "
                    "The bot's log has the details."
                )
            )

    async def on_release_approve(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._approval(body, "approved"))

    async def on_release_reject(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._approval(body, "rejected"))

    async def _approval(self, body: dict[str, Any], verdict: str) -> None:
        user, _, notifier = self._context(body)
        key = body["actions"][0].get("value", "")
        pending = self.confirmations.get(key)
        if pending is not None:
            plan = pending.plan
            assert isinstance(plan, ReleasePlan)
            approver = await self._is_approver(user, [plan.app])
            if verdict == "approved" and (user == plan.requester or not approver):
                why = "you asked for it" if user == plan.requester else f"you are not an approver of {plan.app}"
                await notifier.private(
                    *text_message(
                        f"You cannot approve {plan.title}: {why}. A second person ({self.people(plan)}) has to.",
                        ":no_entry:",
                    )
                )
                return
            if verdict == "rejected" and not (approver or user == plan.requester):
                await notifier.private(
                    *text_message(
                        f"Only an approver of {plan.app} or <@{plan.requester}> can reject this.", ":no_entry:"
                    )
                )
                return
        try:
            pending = self.confirmations.claim(key, user, verdict)
        except ClaimRefused as refused:
            await notifier.private(*text_message(refused.message, ":information_source:"))
            return
        plan = pending.plan
        assert isinstance(plan, ReleasePlan)
        message = body.get("container", {}).get("message_ts") or (body.get("message") or {}).get("ts")
        text = f"{plan.title} (asked by <@{plan.requester}>): {verdict} by <@{user}>."
        if message and pending.channel:
            call = self.client.chat_update(channel=pending.channel, ts=message, text=text, blocks=text_message(text)[1])
            await slack_call("chat.update", pending.channel, call)
        if verdict == "rejected":
            await self._ask_reason(body, plan, pending.channel, message)
            return
        await self._guarded(self.service.approve_release(plan, user, notifier), notifier, plan.title)

    async def _ask_reason(self, body: dict[str, Any], plan: ReleasePlan, channel: str, ts: str | None) -> None:
        """The rejection stands already; the modal only adds an optional reason to the thread."""
        trigger = body.get("trigger_id")
        if not trigger:
            return
        view = {
            "type": "modal",
            "callback_id": "release_reject_reason",
            "private_metadata": json.dumps({"channel": channel, "ts": ts, "title": plan.title}),
            "title": {"type": "plain_text", "text": "Rejected"},
            "submit": {"type": "plain_text", "text": "Add reason"},
            "close": {"type": "plain_text", "text": "No reason"},
            "blocks": [
                {
                    "type": "input",
                    "block_id": "reason",
                    "optional": True,
                    "label": {"type": "plain_text", "text": "Why (optional)"},
                    "element": {"type": "plain_text_input", "action_id": "text", "multiline": True},
                }
            ],
        }
        await slack_call("views.open", channel, self.client.views_open(trigger_id=trigger, view=view))

    async def on_reject_reason(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        meta = json.loads(body["view"].get("private_metadata") or "{}")
        values = body["view"].get("state", {}).get("values", {})
        reason = (values.get("reason", {}).get("text", {}) or {}).get("value") or ""
        if reason.strip() and meta.get("channel"):
            self.spawn(
                self.post_thread(
                    meta["channel"], meta.get("ts"), f"Rejected by <@{body['user']['id']}>: {reason.strip()[:2000]}"
                )
            )

    async def post_thread(self, channel: str, ts: str | None, text: str) -> None:
        await slack_call(
            "chat.postMessage", channel, self.client.chat_postMessage(channel=channel, thread_ts=ts, text=text)
        )

    async def _may_steer(self, user: str, app: str) -> bool:
        """Decisions and aborts: the release's requester or an approver of the app."""
        engine = self.service.releases.engine(app) if self.service.releases else None
        if engine is not None and user == engine.plan.requester:
            return True
        return await self._is_approver(user, [app])

    async def on_release_decision(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._decision(body))

    async def _steering(self, body: dict[str, Any], verb: str) -> tuple[str, SlackNotifier, dict[str, Any]] | None:
        """The presser, a notifier and the button's value, if they may steer the app's release."""
        user, _, notifier = self._context(body)
        value = json.loads(body["actions"][0]["value"])
        if await self._may_steer(user, value["app"]):
            return user, notifier, value
        message = f"Only who asked for the release or an approver of {value['app']} can {verb}; nothing was changed."
        await notifier.private(*text_message(message, ":no_entry:"))
        return None

    async def _decision(self, body: dict[str, Any]) -> None:
        steering = await self._steering(body, "decide this")
        if steering is None:
            return
        user, notifier, value = steering
        outcome = await self.service.decide(value["app"], value["decision_id"], value["decision"], user, notifier)
        if outcome.ok:
            await self.post_thread(
                (body.get("channel") or {}).get("id", ""),
                (body.get("message") or {}).get("ts"),
                f"<@{user}> chose: {decision_label(value['decision'])}",
            )

    async def on_release_abort(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self._abort(body))

    async def _abort(self, body: dict[str, Any]) -> None:
        steering = await self._steering(body, "abort it")
        if steering is None:
            return
        user, notifier, value = steering
        await self._replace(body, f"Abort of the release of {value['app']} requested by <@{user}>.")
        await self.service.abort_release(value["app"], value["release_id"], user, notifier)


def build_app(front: SlackFrontEnd, signing_secret: str | None) -> AsyncApp:
    app = AsyncApp(
        client=front.client,
        signing_secret=signing_secret,
        request_verification_enabled=signing_secret is not None,
        # Listeners only ack and spawn their work (SlackFrontEnd.spawn), so Bolt can answer as soon as
        # they return, instead of polling every 10 ms for the ack of a listener still running.
        process_before_response=True,
    )
    front.register(app)
    return app


async def warm_up(app: AsyncApp) -> None:
    """Call auth.test now, so no command waits for it before its acknowledgement."""
    from slack_bolt.middleware.authorization.async_single_team_authorization import (
        AsyncSingleTeamAuthorization,
    )

    try:
        result = await app.client.auth_test()
    except SlackApiError as error:
        if slack_error(error) in TOKEN_ERRORS:
            raise BotTokenRefused(f"Slack refused SLACK_BOT_TOKEN (auth.test: {slack_error(error)})") from None
        log.warning("auth.test failed (%s); Bolt will try again on the first request", slack_error(error))
        return
    except Exception as error:  # Slack (or SLACK_API_URL) unreachable right now: not fatal for serving
        log.warning("auth.test failed (%s); Bolt will try again on the first request", error)
        return
    for middleware in app._async_middleware_list:  # Bolt keeps its result here; no public setter
        if isinstance(middleware, AsyncSingleTeamAuthorization):
            middleware.auth_test_result = result
