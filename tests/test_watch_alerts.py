"""The health watch's messages in Slack, as the channel sees them: a storm of failures is one grouped
alert within Block Kit's limits, the watch that cannot see an app says so, and nothing is lost or
reordered when Slack rate-limits, fails, hangs or is unreachable for a while.

In process, with real parts: the Slack Web API stand-in over HTTP (its record is what the channel
saw), the Web API client as `serve` makes it (with its Retry-After retry handler), the command service
with its access policy and a health watch holding the incidents, and Bolt's real HTTP endpoint for the
buttons (signed requests). Events are made directly from commands/watch.py's types and handed to the
front end's notifier, as the watch's scheduler does. Waits poll with deadlines."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from aiohttp import web

from bot.health.prober import HttpProber
from bot.health.scheduler import HealthWatcher
from bot.nginx.status import HttpNginxReader
from bot.slack.alert_messages import group_alert_message
from bot.slack.app import build_app, make_client, warm_up
from bot.slack.front import SlackFrontEnd
from bot.slack.http_server import build_web_app
from bot.standins.server_thread import ServerThread
from bot.standins.slack import Call, SlackStandIn
from bot.terminal.render import watch_lines
from commands.access import AccessPolicy
from commands.addresses import ServerAddress
from commands.history import MemoryHistory
from commands.service import CommandService
from commands.settings import AppSettings, HealthSettings
from commands.watch import Incident, WatchEvent
from tests.fakes import FakeClock, FakeStore
from tests.helpers import SIGNING_SECRET, sign, until

HOSTILE = "<!channel> <https://evil.example|log in> & `code`"


def incident(n: int, group: str | None = None, error: str = "connection refused") -> Incident:
    return Incident(
        "app",
        ServerAddress.parse(f"10.0.{n // 250}.{n % 250 + 1}:8080"),
        "failing its health probe",
        time.time() - 300,
        error,
        None,
        True,
        time.time() - 180,
        group=group,
    )


def blind_incident() -> Incident:
    return Incident(
        "app", None, "the health watch cannot see it", time.time() - 200, "Consul unreadable: timed out", None,
        True, time.time() - 80,
    )  # fmt: skip


def resolve(found: Incident, how: str = "healthy again") -> Incident:
    found.resolved_at, found.resolution = time.time(), how
    return found


@dataclass
class Harness:
    slack: SlackStandIn
    server: ServerThread
    front: SlackFrontEnd
    service: CommandService
    history: MemoryHistory
    events_url: str

    @property
    def watch(self) -> Any:
        return self.service.watches.watch("app") if self.service.watches else None

    async def emit(self, event: WatchEvent) -> float:
        """Hand the event to the front end as the watch does; how long that took."""
        started = time.monotonic()
        await self.front.channel_notifier().emit(event)
        return time.monotonic() - started

    def posts(self, where: Callable[[Call], object] = lambda c: True) -> list[Call]:
        """chat.postMessage calls Slack took (not the faulted tries)."""
        return [c for c in self.slack.calls("chat.postMessage") if not c.fault and where(c)]

    async def press(self, action_id: str, value: str, user: str, message_ts: str) -> None:
        """A signed block_actions request, as Slack sends for a press on a channel message."""
        payload = {
            "type": "block_actions",
            "team": {"id": "T0STANDIN", "domain": "standin"},
            "user": {"id": user, "username": user.lower(), "team_id": "T0STANDIN"},
            "api_app_id": "A0BOT",
            "token": "legacy",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": "C0DEPLOY"},
            "trigger_id": f"trigger-{time.monotonic_ns()}",
            "channel": {"id": "C0DEPLOY", "name": "deploy"},
            "message": {"type": "message", "ts": message_ts, "text": "alert"},
            "response_url": f"{self.server.url}/response/press",
            "actions": [
                {"action_id": action_id, "block_id": "b", "value": value, "type": "button", "action_ts": "1.2"}
            ],
        }
        body = urlencode({"payload": json.dumps(payload)})
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(body)}
        async with httpx.AsyncClient() as client:
            response = await client.post(self.events_url, content=body, headers=headers, timeout=10)
        assert response.status_code == 200


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    slack = SlackStandIn()
    server = ServerThread(slack.app()).start()
    apps = {
        "app": AppSettings("app", "app", health=HealthSettings(url="http://{host}:{port}/ping"), approvers=("U2BOB",))
    }
    history = MemoryHistory()
    async with httpx.AsyncClient(trust_env=False) as http:
        prober, nginx, clock, store = HttpProber(http), HttpNginxReader(apps, http), FakeClock(), FakeStore("app", [])
        watcher = HealthWatcher(apps, store, prober, nginx, clock)  # not started: the test hands it incidents
        policy = AccessPolicy(apps, operators=("U1ALICE", "U2BOB"))
        service = CommandService(apps, store, prober, nginx, clock, watches=watcher, policy=policy, history=history)
        client = make_client("xoxb-test", f"{server.url}/api/", timeout=2)
        front = SlackFrontEnd(service, client, "C0DEPLOY")
        bolt = build_app(front, SIGNING_SECRET)
        await warm_up(bolt)
        runner = web.AppRunner(build_web_app(bolt), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield Harness(slack, server, front, service, history, f"http://127.0.0.1:{port}/slack/events")
        finally:
            slack.clear_faults()
            await front.alerts.aclose()
            await runner.cleanup()
            server.stop()


def blocks_of(call: Call) -> list[dict[str, Any]]:
    return list(call.args["blocks"])


def buttons(call: Call) -> dict[str, str]:
    """The message's buttons: their text -> action_id:value."""
    return {
        e["text"]["text"]: f"{e['action_id']}:{e['value']}"
        for b in blocks_of(call)
        for e in b.get("elements", [])
        if e.get("type") == "button"
    }


def within_block_kit(call: Call) -> None:
    blocks = blocks_of(call)
    assert len(blocks) <= 50
    for block in blocks:
        texts = [block["text"]["text"]] if "text" in block else [e.get("text", "") for e in block.get("elements", [])]
        assert all(len(t) <= 3000 for t in texts if isinstance(t, str))


# -- a storm is one message -----------------------------------------------------------------------------


async def test_a_storm_of_40_alerts_is_one_message_listing_them_and_every_incident_knows_where(
    harness: Harness,
) -> None:
    storm = tuple(incident(n, group="g40", error=f"HTTP 503 {HOSTILE}") for n in range(40))
    taken = await harness.emit(WatchEvent("group_alert", "app", None, incidents=storm))
    assert taken < 0.5  # queued: the watch's round does not wait for Slack
    assert await harness.front.alerts.settle(10)

    (alert,) = harness.posts()
    assert "40 nodes of app failing" in alert.args["text"] and alert.args["channel"] == "C0DEPLOY"
    within_block_kit(alert)
    assert all(str(i.address) in alert.text for i in storm)  # every node listed, with its last error
    assert alert.text.count("HTTP 503") == 40
    sent = json.dumps(alert.args["blocks"])
    assert "<!channel>" not in sent and "<https://evil" not in sent and "&lt;!channel&gt;" in sent
    assert "<@U2BOB>" in alert.text  # the app's approvers are told, as for one node
    shown = buttons(alert)
    assert set(shown) == {"Silence all 1 h", "Acknowledge all"}  # no Drain on a group
    for text, action in (("Silence all 1 h", "watch_silence"), ("Acknowledge all", "watch_ack")):
        action_id, value = shown[text].split(":", 1)
        assert action_id == action and json.loads(value) == {"app": "app", "group": "g40"}
    assert all(i.post_ref == {"channel": "C0DEPLOY", "ts": alert.answer["ts"]} for i in storm)


def test_a_grouped_alert_too_big_for_one_message_lists_what_fits_and_says_how_many_more() -> None:
    huge = tuple(incident(n, group="big", error=("&<>" * 60) + f" node {n}") for n in range(400))
    text, blocks = group_alert_message(WatchEvent("group_alert", "app", None, incidents=huge), time.time(), "")
    assert len(blocks) <= 50 and "400 nodes of app failing" in text
    sections = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert all(len(s) <= 3000 for s in sections)
    listed = sum(s.count("• ") for s in sections)
    assert 0 < listed < 400
    (more,) = [b for b in blocks if b["type"] == "context"]
    assert f"and {400 - listed} more" in more["elements"][0]["text"]
    assert "/upstream alerts app" in more["elements"][0]["text"]
    assert blocks[-1]["type"] == "actions"  # the buttons are kept
    assert all(f"node {n}" in "".join(sections) for n in range(listed))  # the first ones, in order


def test_a_grouped_reminder_of_nodes_from_several_alerts_sends_people_to_those_alerts() -> None:
    mixed = (incident(1, group="a"), incident(2, group="a"), incident(3, group="b"), incident(4))
    text, blocks = group_alert_message(WatchEvent("group_reminder", "app", None, incidents=mixed), time.time(), "")
    assert text.startswith("Still failing: 4 nodes of app")
    assert not [b for b in blocks if b["type"] == "actions"]  # no group to silence: which one would it be?
    assert "from their alerts" in blocks[-1]["elements"][0]["text"]


# -- Slack busy, failing, down ------------------------------------------------------------------------


async def test_a_rate_limited_alert_lands_after_slack_s_retry_after_and_not_before(harness: Harness) -> None:
    # Three refusals: the client's own retry handler waits out two of them, the posting queue the third.
    harness.slack.rate_limit("chat.postMessage", 3, retry_after=2)
    sick = incident(1)
    await harness.emit(WatchEvent("alert", "app", sick.address, sick))
    assert await harness.front.alerts.settle(30)

    tries = harness.slack.calls("chat.postMessage")
    assert [c.fault for c in tries] == ["status 429"] * 3 + [""]
    for before, after in itertools.pairwise(tries):
        assert after.at - before.at >= 2.0  # never sooner than Slack asked
    assert str(sick.address) in tries[-1].text
    assert sick.post_ref == {"channel": "C0DEPLOY", "ts": tries[-1].answer["ts"]}


OUTAGES = ["500", "reset", "hung", "unreachable"]


@pytest.mark.parametrize("outage", OUTAGES)
async def test_an_alert_made_while_slack_is_down_lands_when_it_is_back_then_its_recovery_in_its_thread(
    harness: Harness, outage: str
) -> None:
    slack, alerts = harness.slack, harness.front.alerts
    port = harness.server.port
    if outage == "500":
        slack.set_faults(status=500)
    elif outage == "reset":
        slack.set_faults(reset=True)
    elif outage == "hung":
        slack.set_faults(delay=300.0)  # answers nothing; the client gives up after its 2 s timeout
    else:
        harness.server.stop()  # nothing listens: connection refused

    sick = incident(7)
    assert await harness.emit(WatchEvent("alert", "app", sick.address, sick)) < 0.5  # the watch goes on
    await until(lambda: alerts.failures >= 2, 30, "two tries Slack failed")  # retried, not given up
    if outage != "unreachable":
        assert {c.fault for c in slack.calls("chat.postMessage")} <= {"status 500", "reset", "hung"}
        assert slack.calls("chat.postMessage")
    # It recovers while Slack is still down: the recovery waits behind its alert.
    assert await harness.emit(WatchEvent("recovered", "app", sick.address, resolve(sick))) < 0.5
    assert harness.posts() == []

    if outage == "unreachable":
        harness.server = ServerThread(slack.app(), port=port).start()
    else:
        slack.clear_faults()
    assert await alerts.settle(60)

    (alert,) = harness.posts(lambda c: "thread_ts" not in c.args)
    assert str(sick.address) in alert.text and "watch_drain" in json.dumps(alert.args["blocks"])
    (reply,) = harness.posts(lambda c: "thread_ts" in c.args)
    assert reply.args["thread_ts"] == alert.answer["ts"] and "Resolved" in reply.text
    assert reply.at > alert.at
    (edit,) = [c for c in slack.calls("chat.update") if not c.fault]
    assert edit.args["ts"] == alert.answer["ts"] and "Resolved" in edit.text and edit.at > reply.at
    assert alerts.dropped == 0


async def test_a_replica_that_lost_the_watch_posts_nothing_more_for_it(harness: Harness) -> None:
    slack, alerts = harness.slack, harness.front.alerts
    leading = True
    slack.set_faults(status=503)
    sick, other = incident(1), incident(2)
    await harness.emit(WatchEvent("alert", "app", sick.address, sick, valid=lambda: leading))
    await until(lambda: alerts.failures >= 1, 10, "a try Slack failed")
    leading = False  # another replica leads now (and posts for itself)
    await harness.emit(WatchEvent("alert", "app", other.address, other))  # a later event, still valid
    slack.clear_faults()
    assert await alerts.settle(30)
    (alert,) = harness.posts()
    assert str(other.address) in alert.text and str(sick.address) not in alert.text
    assert sick.post_ref is None and alerts.dropped == 1


async def test_a_full_queue_drops_reminders_never_alerts_or_recoveries(harness: Harness) -> None:
    from bot.slack.alert_posts import AlertPosts

    harness.front.alerts = alerts = AlertPosts(harness.front, backoff=(0.1,), limit=2)
    slack = harness.slack
    slack.set_faults(status=503)
    first, second, third = incident(1), incident(2), incident(3)
    await harness.emit(WatchEvent("alert", "app", first.address, first))  # in hand, retried
    await until(lambda: alerts.failures >= 1, 10, "a try Slack failed")
    await harness.emit(WatchEvent("reminder", "app", third.address, third))  # still failing, never acknowledged
    await harness.emit(WatchEvent("alert", "app", second.address, second))
    await harness.emit(WatchEvent("recovered", "app", first.address, resolve(first)))  # the reminder makes room
    await harness.emit(WatchEvent("recovered", "app", second.address, resolve(second)))  # kept although full
    slack.clear_faults()
    assert await alerts.settle(30)
    said = [(c.args.get("thread_ts"), c.text) for c in harness.posts()]
    assert len(said) == 4 and not any(str(third.address) in text for _, text in said)
    assert str(first.address) in said[0][1] and str(second.address) in said[1][1]
    assert said[2][0] == first.post_ref["ts"] and said[3][0] == second.post_ref["ts"]  # type: ignore[index]
    assert alerts.dropped == 1


async def test_shutdown_stops_the_poster_and_nothing_is_posted_after_it(harness: Harness) -> None:
    alerts = harness.front.alerts
    harness.slack.set_faults(status=503)
    sick = incident(1)
    await harness.emit(WatchEvent("alert", "app", sick.address, sick))
    await until(lambda: alerts.failures >= 1, 10, "a try Slack failed")
    started = time.monotonic()
    await alerts.aclose()
    assert time.monotonic() - started < 1.0  # not held by the retries
    assert alerts._worker is None and alerts.pending == 1
    harness.slack.clear_faults()
    late = incident(2)
    await harness.emit(WatchEvent("alert", "app", late.address, late))
    assert harness.posts() == []


# -- the grouped alert's buttons ------------------------------------------------------------------------


async def test_silence_all_and_acknowledge_all_mark_every_incident_of_the_group(harness: Harness) -> None:
    group = tuple(incident(n, group="g5") for n in range(5))
    elsewhere = incident(99, group="other")
    harness.watch.adopt([*group, elsewhere])
    await harness.emit(WatchEvent("group_alert", "app", None, incidents=group))
    assert await harness.front.alerts.settle(10)
    (alert,) = harness.posts()
    ts, shown = alert.answer["ts"], buttons(alert)
    silence, ack = (shown[t].split(":", 1)[1] for t in ("Silence all 1 h", "Acknowledge all"))

    await harness.press("watch_silence", silence, "U1ALICE", ts)
    reply = await until(
        lambda: harness.posts(lambda c: c.args.get("thread_ts") == ts and "Silenced for 1 h" in c.text), 10, "silenced"
    )
    assert "<@U1ALICE>" in reply[0].text and "5 node(s)" in reply[0].text
    assert all((i.silenced_until or 0) > time.time() + 3500 for i in group)
    assert elsewhere.silenced_until is None  # another alert's incident is left alone

    # Someone who may not change the app is refused, privately, and nothing is marked.
    await harness.press("watch_ack", ack, "U9MALLORY", ts)
    await until(
        lambda: [c for c in harness.slack.calls("chat.postEphemeral") if c.args.get("user") == "U9MALLORY"],
        10,
        "the refusal",
    )
    assert all(i.acknowledged_by is None for i in group)

    await harness.press("watch_ack", ack, "U2BOB", ts)
    await until(lambda: harness.posts(lambda c: "Acknowledged by <@U2BOB>" in c.text), 10, "acknowledged")
    assert all(i.acknowledged_by == "U2BOB" for i in group) and elsewhere.acknowledged_by is None
    assert [(e.what, e.who) for e in harness.history.kept] == [("silence", "U1ALICE"), ("acknowledge", "U2BOB")]

    await harness.press("watch_ack", ack, "U1ALICE", ts)  # nothing left to acknowledge: said so, privately
    await until(lambda: [c for c in harness.slack.calls("chat.postEphemeral") if "already" in c.text], 10, "the notice")
    assert all(i.acknowledged_by == "U2BOB" for i in group)

    # They recover together: one message in the grouped alert's thread, and the alert says it is over.
    for i in group:
        resolve(i)
    harness.watch.adopt([elsewhere])
    await harness.emit(WatchEvent("group_recovered", "app", None, incidents=group))
    assert await harness.front.alerts.settle(10)
    (recovery,) = harness.posts(lambda c: c.args.get("thread_ts") == ts and "Resolved" in c.text)
    assert "5 nodes of app" in recovery.text and all(str(i.address) in recovery.text for i in group)
    (closed,) = [c for c in harness.slack.calls("chat.update") if c.args["ts"] == ts]
    assert "Resolved" in closed.text and buttons(closed) == {}


# -- the watch cannot see the app -----------------------------------------------------------------------


async def test_a_blind_alert_is_acknowledged_and_its_recovery_is_in_its_thread(harness: Harness) -> None:
    blind = blind_incident()
    harness.watch.adopt([blind])
    await harness.emit(WatchEvent("blind", "app", None, blind))
    assert await harness.front.alerts.settle(10)
    (alert,) = harness.posts()
    assert ":see_no_evil: The health watch cannot see app: Consul unreadable: timed out" in alert.text
    assert "<@U2BOB>" in alert.text
    assert set(buttons(alert)) == {"Acknowledge"}  # nothing to drain or silence: the app itself
    assert blind.post_ref == {"channel": "C0DEPLOY", "ts": alert.answer["ts"]}

    value = buttons(alert)["Acknowledge"].split(":", 1)[1]
    await harness.press("watch_ack", value, "U2BOB", alert.answer["ts"])
    await until(lambda: harness.posts(lambda c: "Acknowledged by <@U2BOB>" in c.text), 10, "acknowledged")
    assert blind.acknowledged_by == "U2BOB"  # no more reminders
    await harness.press("watch_ack", value, "U1ALICE", alert.answer["ts"])  # a second person, too late
    await until(
        lambda: [c for c in harness.slack.calls("chat.postEphemeral") if "Already acknowledged by <@U2BOB>" in c.text],
        10,
        "told privately",
    )
    assert len(harness.posts(lambda c: "Acknowledged by" in c.text)) == 1  # the thread is not told twice
    assert [e.what for e in harness.history.kept].count("acknowledge") == 1  # nor the audit trail

    await harness.emit(WatchEvent("recovered", "app", None, resolve(blind, "the watch sees it again")))
    assert await harness.front.alerts.settle(10)
    (reply,) = harness.posts(lambda c: c.args.get("thread_ts") == alert.answer["ts"] and "sees" in c.text)
    assert "The watch sees app again" in reply.text
    (edit,) = harness.slack.calls("chat.update")
    assert edit.args["ts"] == alert.answer["ts"] and "sees app again" in edit.text


# -- the terminal -----------------------------------------------------------------------------------------


def test_the_terminal_says_every_kind() -> None:
    now = time.time()
    group = tuple(incident(n, group="g") for n in range(3))
    blind = blind_incident()
    said = {
        kind: watch_lines(event, now)
        for kind, event in {
            "group_alert": WatchEvent("group_alert", "app", None, incidents=group),
            "group_reminder": WatchEvent("group_reminder", "app", None, incidents=group),
            "blind": WatchEvent("blind", "app", None, blind),
            "blind_reminder": WatchEvent("reminder", "app", None, blind),
            "group_recovered": WatchEvent("group_recovered", "app", None, incidents=tuple(map(resolve, group))),
            "seen": WatchEvent("recovered", "app", None, resolve(blind, "the watch sees it again")),
        }.items()
    }
    assert said["group_alert"][0] == "ALERT: 3 nodes of app failing" and len(said["group_alert"]) == 4
    assert said["group_reminder"][0].startswith("STILL FAILING: 3 nodes")
    assert said["blind"] == [said["blind"][0]] and "cannot see app: the health watch" in said["blind"][0]
    assert said["blind_reminder"][0].startswith("STILL BLIND")
    assert said["group_recovered"][0] == "RESOLVED: 3 nodes of app"
    assert all("healthy again" in line for line in said["group_recovered"][1:])
    assert said["seen"][0].startswith("RESOLVED: the watch sees app again")
