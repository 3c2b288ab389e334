"""Slack goes down in the middle of a release, through the real HTTP endpoint of a running bot: the
release must finish untouched (every node back in traffic, read from Consul over HTTP), and once Slack
is back the progress message must show how it ended."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bot.standins.slack import Call
from tests.helpers import wait_until
from tests.slack_bot import Bot, confirm_key, running_bot

RELEASE_TIME = 60.0  # seconds a release of two nodes may take here (it takes about 5)
# Held against the release's end with Slack hanging: an engine that waited on Slack, even for one
# second (the bot's timeout below) at each of its ~20 updates, would not make it.
HUNG_RELEASE_TIME = 15.0
FINAL_SHOWN_TIME = 45.0  # the final edit's retries span about 30 s (progress.FINAL_BACKOFF)
# Tries of the final edit Slack fails before it comes back: more than the progress syncer's last flush
# plus one more, so only a retry with backoff gets the final state through.
TRIES = 3


def app_config(name: str) -> str:
    # deploy sleeps a second, so the release is still running when Slack is cut after its first post.
    return (
        f"  {name}:\n"
        "    health:\n      url: http://{host}:{port}/ping\n      interval: 300ms\n      timeout: 300ms\n"
        "      window: 5s\n      rise: 2\n"
        "    nginx:\n      upsync_interval: 100ms\n"
        "    release:\n      executor: local\n      drain_wait: 100ms\n"
        '      steps:\n        stop: "true"\n        deploy: "sleep 1"\n        start: "true"\n'
        "    approvers: [U2BOB]\n"
    )


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory, services: list[int]) -> Iterator[Bot]:
    config = (
        "slack:\n  channel: C0DEPLOY\naccess:\n  operators: [U1ALICE]\napps:\n" + app_config("web") + app_config("hung")
    )
    # A 1 s Slack timeout keeps the hanging-Slack test short; the default is 10 s.
    with running_bot(tmp_path_factory.mktemp("outage-bot"), config, env={"SLACK_API_TIMEOUT": "1"}) as running:
        yield running


@pytest.fixture
def seeded(bot: Bot, services: list[int]) -> Iterator[Bot]:
    bot.slack.clear()
    for app in ("web", "hung"):
        for port in services[:2]:
            bot.consul.add_server(app, f"127.0.0.1:{port}")
    yield bot
    bot.slack.clear_faults()  # whatever the test did: the next one starts with Slack up


# -- reading Consul over HTTP, as nginx-upsync and any operator would ---------------------------------


def kv(bot: Bot, key: str) -> dict[str, Any] | None:
    response = httpx.get(f"{bot.consul.url}/v1/kv/{key}", timeout=5)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return dict(response.json()[0])


def serving(bot: Bot, app: str, port: int) -> bool:
    entry = kv(bot, f"upstreams/{app}/127.0.0.1:{port}")
    assert entry is not None, f"127.0.0.1:{port} is gone from {app}'s upstream"
    return json.loads(base64.b64decode(entry["Value"])).get("down", 0) == 0


def lock_held(bot: Bot, app: str) -> bool:
    """The app's release lock (bot/consul_lock.py): held while a release runs, free once it ended."""
    entry = kv(bot, f"upstream-bot/locks/{app}")
    return entry is not None and bool(entry.get("Session"))


def set_faults(bot: Bot, **faults: Any) -> None:
    """Slack's outage switch over HTTP (PUT /_standin/faults), as an operator's script would flip it."""
    response = httpx.put(f"{bot.slack_url}/_standin/faults", json=faults, timeout=5)
    response.raise_for_status()
    assert {k: response.json()[k] for k in faults} == faults


# -- the flow ---------------------------------------------------------------------------------------------


def start_release(bot: Bot, app: str) -> Call:
    """Plan and Start a release from Slack; its progress message once posted (the lock is held by then)."""
    bot.command("/release", f"{app} --version 2")
    plan = bot.said(lambda c: "release_start" in json.dumps(c.args.get("blocks")), method="chat.postEphemeral")
    bot.press("release_start", confirm_key(plan, "release_start"))
    first = bot.said(
        lambda c: not c.fault and f"Release {app} 2" in c.text and "thread_ts" not in c.args,
        method="chat.postMessage",
        timeout=30,
    )
    assert lock_held(bot, app)  # so a free lock later means this release ended
    return first


def release_ended(bot: Bot, app: str, ports: list[int]) -> bool:
    return not lock_held(bot, app) and all(serving(bot, app, p) for p in ports)


def final_edit(bot: Bot, first: Call) -> Call:
    """The edit of the progress message that Slack accepted, showing the release succeeded."""
    return bot.said(
        lambda c: not c.fault and c.args.get("ts") == first.answer["ts"] and "succeeded" in c.text,
        method="chat.update",
        timeout=FINAL_SHOWN_TIME,
    )


def failed_final_edits(bot: Bot) -> list[Call]:
    """The tries to show the final state that Slack failed (refused, reset, or left hanging)."""
    return [c for c in bot.slack.calls("chat.update") if c.fault and "succeeded" in c.text]


def one_progress_message(bot: Bot, app: str) -> None:
    posts = [
        c
        for c in bot.slack.calls("chat.postMessage")
        if not c.fault and f"Release {app} 2" in c.text and "thread_ts" not in c.args
    ]
    assert len(posts) == 1, [c.text[:100] for c in posts]


@pytest.mark.parametrize("outage", [{"status": 503}, {"reset": True}], ids=["503", "reset"])
def test_a_release_outlives_a_slack_outage_and_its_message_shows_the_end(
    seeded: Bot, services: list[int], outage: dict[str, Any]
) -> None:
    first = start_release(seeded, "web")
    set_faults(seeded, **outage)  # Slack fails every call from now on, mid-release

    wait_until(
        lambda: release_ended(seeded, "web", services[:2]), timeout=RELEASE_TIME, what="the release ending in Consul"
    )
    # The final state was tried while Slack was down, and refused, again and again: the positive signal
    # that the bot keeps retrying it (a single try, or one right after the last update, would not do).
    tries = wait_until(lambda: failed_final_edits(seeded)[TRIES - 1 :], timeout=30, what=f"{TRIES} tries")
    assert all(c.args["ts"] == first.answer["ts"] for c in failed_final_edits(seeded))

    set_faults(seeded, status=0, reset=False)  # Slack is back
    shown = final_edit(seeded, first)
    assert "2 of 2 released" in shown.text and shown.at > tries[0].at
    one_progress_message(seeded, "web")
    # The thread reply queued with the final state went out after it.
    seeded.said(
        lambda c: not c.fault and c.args.get("thread_ts") == first.answer["ts"] and "succeeded" in c.text,
        method="chat.postMessage",
        timeout=FINAL_SHOWN_TIME,
    )
    assert all(serving(seeded, "web", p) for p in services[:2])


def test_a_hanging_slack_does_not_hold_a_release(seeded: Bot, services: list[int]) -> None:
    first = start_release(seeded, "hung")
    cut = time.monotonic()
    seeded.slack.set_faults(delay=300.0)  # Slack accepts connections and never answers (in process)

    wait_until(
        lambda: release_ended(seeded, "hung", services[:2]),
        timeout=HUNG_RELEASE_TIME,
        what="the release ending in Consul while Slack hangs",
    )
    assert time.monotonic() - cut < HUNG_RELEASE_TIME
    # The final state went to Slack again and again and hung there: each try after the first is the
    # positive signal that the one before timed out and was retried.
    tries = wait_until(lambda: failed_final_edits(seeded)[TRIES - 1 :], timeout=30, what=f"{TRIES} tries")
    assert all(c.args["ts"] == first.answer["ts"] and c.fault == "hung" for c in failed_final_edits(seeded))

    seeded.slack.clear_faults()  # Slack answers again (a try still waiting gets its answer)
    shown = final_edit(seeded, first)
    assert "2 of 2 released" in shown.text and shown.at > tries[0].at
    one_progress_message(seeded, "hung")
    assert all(serving(seeded, "hung", p) for p in services[:2])


@pytest.mark.parametrize("outage", [{"status": 503}, {"reset": True}], ids=["503", "reset"])
def test_a_progress_message_slack_failed_is_posted_once_slack_is_back(
    seeded: Bot, services: list[int], outage: dict[str, Any]
) -> None:
    seeded.command("/release", "web --version 2")
    plan = seeded.said(lambda c: "release_start" in json.dumps(c.args.get("blocks")), method="chat.postEphemeral")
    seeded.slack.set_faults(**outage)  # Slack fails from the press on: the first progress post too
    seeded.press("release_start", confirm_key(plan, "release_start"))
    refused = seeded.said(
        lambda c: bool(c.fault) and "Release web 2" in c.text and "thread_ts" not in c.args,
        method="chat.postMessage",
        timeout=30,
    )
    seeded.slack.clear_faults()
    # The next update posts it (the release runs for seconds more; each step is an update).
    first = seeded.said(
        lambda c: not c.fault and "Release web 2" in c.text and "thread_ts" not in c.args,
        method="chat.postMessage",
        timeout=30,
    )
    assert first.at > refused.at
    shown = final_edit(seeded, first)
    assert "2 of 2 released" in shown.text
    one_progress_message(seeded, "web")
    wait_until(lambda: release_ended(seeded, "web", services[:2]), timeout=RELEASE_TIME, what="the release ending")


async def test_an_interrupted_release_is_told_once_slack_is_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mark in Consul says it was told: with Slack down at that moment, the message and the edit of
    the progress message are retried until Slack takes them."""
    from types import SimpleNamespace

    import bot.slack.release_posts as posts
    from bot.slack.app import make_client
    from bot.slack.front import SlackFrontEnd
    from bot.standins.server_thread import ServerThread
    from bot.standins.slack import SlackStandIn
    from commands.events import ReleaseInterrupted
    from commands.journal import JournalEntry, JournalNode

    monkeypatch.setattr(posts, "FINAL_BACKOFF", (0.2,) * 20)  # the same retries, closer together
    slack = SlackStandIn()
    server = ServerThread(slack.app()).start()
    try:
        client = make_client("xoxb-test", f"{server.url}/api/", timeout=2)
        front = SlackFrontEnd(SimpleNamespace(apps={}), client, "C0DEPLOY")  # type: ignore[arg-type]
        node = JournalNode("10.0.0.1:80", "running", True, True, step="deploy")
        entry = JournalEntry(
            "app", "r1", "Release app 7", "running", "", "U1ALICE", None, "7", 0.0, None, "host:1", (node,), {},
            progress={"channel": "C0DEPLOY", "ts": "1700000000.000100"},
        )
        slack.set_faults(status=503)  # Slack is down when the replica tells it
        await front.releases.interrupted(ReleaseInterrupted(entry, "interrupted"), "C0DEPLOY")
        for _ in range(100):  # bounded: 5 s for a few refused tries
            if len([c for c in slack.calls() if c.fault]) >= 4:
                break
            await asyncio.sleep(0.05)
        slack.clear_faults()  # Slack is back

        def told() -> bool:
            ok = [c for c in slack.calls() if not c.fault and "was interrupted" in c.text]
            return {c.method for c in ok} == {"chat.postMessage", "chat.update"}

        for _ in range(200):  # bounded: 10 s
            if told():
                break
            await asyncio.sleep(0.05)
        assert told()
        updates = [c for c in slack.calls("chat.update") if not c.fault]
        assert [c.args["ts"] for c in updates] == ["1700000000.000100"]  # the release's own message
        assert len([c for c in slack.calls("chat.postMessage") if not c.fault]) == 1  # told once
    finally:
        server.stop()
