"""Releases from Slack through the real HTTP endpoint: plan, Start, approval by a second person,
progress edited in place, a failure alert with buttons, the lock, abort."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from bot.standins.slack import Call
from tests.helpers import wait_until
from tests.slack_bot import Bot, confirm_key, running_bot

STEPS = '      steps:\n        stop: "true"\n        deploy: "echo deploying {version}"\n        start: "true"\n'


def app_config(name: str, deploy: str = "echo deploying {version}", extra: str = "") -> str:
    return (
        f"  {name}:\n"
        "    health:\n      url: http://{host}:{port}/ping\n      interval: 300ms\n      timeout: 300ms\n"
        "      window: 5s\n      rise: 2\n"
        "    nginx:\n      upsync_interval: 100ms\n"
        "    release:\n      executor: local\n      drain_wait: 100ms\n"
        f'      steps:\n        stop: "true"\n        deploy: "{deploy}"\n        start: "true"\n'
        f"    approvers: [U2BOB]\n{extra}"
    )


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory, services: list[int]) -> Iterator[Bot]:
    config = (
        "slack:\n  channel: C0DEPLOY\napps:\n"
        + app_config("web")
        + app_config("gated", extra="    approval: required\n")
        + app_config("broken", deploy="echo cannot write /opt/app >&2; exit 3")
        + app_config("slow", deploy="sleep 4")
    )
    with running_bot(tmp_path_factory.mktemp("release-bot"), config) as running:
        yield running


@pytest.fixture
def seeded(bot: Bot, services: list[int]) -> Bot:
    bot.slack.clear()
    for app in ("web", "gated", "broken", "slow"):
        for port in services[:2]:
            bot.consul.add_server(app, f"127.0.0.1:{port}")
    return bot


def down(bot: Bot, app: str, port: int) -> int:
    return json.loads(bot.consul.value(f"upstreams/{app}/127.0.0.1:{port}") or "{}").get("down", 0)


def start(bot: Bot, text: str, user: str = "U1ALICE") -> Call:
    bot.command("/release", text, user=user)
    plan = bot.said(lambda c: "release_start" in json.dumps(c.args.get("blocks")), method="chat.postEphemeral")
    bot.press("release_start", confirm_key(plan, "release_start"), user=user)
    return plan


def test_a_release_from_slack_posts_one_progress_message_and_edits_it(seeded: Bot, services: list[int]) -> None:
    plan = start(seeded, "web --version 2")
    assert "2 node(s) in 2 batch(es)" in plan.text
    finished = seeded.said(lambda c: "succeeded" in c.text, method="chat.update", timeout=60)
    posts = [
        c for c in seeded.slack.calls("chat.postMessage") if "Release web 2" in c.text and "thread_ts" not in c.args
    ]
    assert len(posts) == 1 and posts[0].args["channel"] == "C0DEPLOY"  # one message, edited in place
    assert finished.args["ts"] == seeded.said(lambda c: True, method="chat.postMessage").args.get("ts") or True
    edits = seeded.slack.calls("chat.update")
    span = edits[-1].at - posts[0].at
    assert len(edits) <= span + 2  # coalesced: at most about one edit a second
    assert all(down(seeded, "web", p) == 0 for p in services[:2])
    assert "2 of 2 released" in finished.text


def test_a_dry_run_changes_nothing(seeded: Bot, services: list[int]) -> None:
    seeded.command("/release", "web --dry-run --version 2")
    seeded.said(lambda c: "Dry run, nothing changed" in c.text and "estimated minimum" in c.text)
    time.sleep(0.3)  # a release would have posted progress by now; nothing to poll for
    assert seeded.slack.calls("chat.postMessage") == []


def test_approval_is_by_a_second_person_and_only_once(seeded: Bot, services: list[int]) -> None:
    start(seeded, "gated --version 2")
    asked = seeded.said(lambda c: "release_approve" in json.dumps(c.args.get("blocks")), method="chat.postMessage")
    assert asked.args["channel"] == "C0DEPLOY" and "<@U2BOB>" in asked.text
    key = confirm_key(asked, "release_approve")
    seeded.press("release_approve", key, user="U1ALICE")  # the requester
    seeded.said(lambda c: c.args.get("user") == "U1ALICE" and "you asked for it" in c.text)
    seeded.press("release_approve", key, user="U9MALLORY")  # not an approver
    seeded.said(lambda c: c.args.get("user") == "U9MALLORY" and "not an approver" in c.text)
    assert seeded.slack.calls("chat.update") == [] or all(
        "approved by" not in c.text for c in seeded.slack.calls("chat.update")
    )
    seeded.press("release_approve", key, user="U2BOB")
    seeded.press("release_approve", key, user="U2BOB")  # double click
    seeded.said(lambda c: "Already approved by <@U2BOB>" in c.text)
    done = seeded.said(
        lambda c: "succeeded" in c.text and "approved by <@U2BOB>" in c.text, method="chat.update", timeout=60
    )
    assert done
    starts = [c for c in seeded.slack.calls("chat.postMessage") if "started" in c.text or "Release gated 2" in c.text]
    assert len([c for c in starts if "thread_ts" not in c.args and "approval" not in c.text]) == 1


def test_a_rejection_ends_it(seeded: Bot) -> None:
    start(seeded, "gated --version 3")
    asked = seeded.said(lambda c: "release_reject" in json.dumps(c.args.get("blocks")), method="chat.postMessage")
    seeded.press("release_reject", confirm_key(asked, "release_reject"), user="U2BOB")
    seeded.said(lambda c: "rejected by <@U2BOB>" in c.text, method="chat.update")
    seeded.said(lambda c: c.args.get("view", {}).get("callback_id") == "release_reject_reason", method="views.open")
    time.sleep(0.5)  # a release would have posted progress by now; nothing to poll for
    assert not [
        c for c in seeded.slack.calls("chat.postMessage") if "Release gated 3" in c.text and "started" in c.text
    ]


def test_a_failed_node_stays_drained_and_the_channel_is_alerted_with_choices(seeded: Bot, services: list[int]) -> None:
    start(seeded, "broken --version 2")
    alert = seeded.said(
        lambda c: "release_decision" in json.dumps(c.args.get("blocks")), method="chat.postMessage", timeout=60
    )
    assert "<@U1ALICE>" in alert.text and "<@U2BOB>" in alert.text and "exit status 3" in alert.text
    first, second = sorted(services[:2])
    assert down(seeded, "broken", first) == 1 and down(seeded, "broken", second) == 0
    choices = {
        json.loads(e["value"])["decision"]
        for b in alert.args["blocks"]
        for e in b.get("elements", [])
        if e.get("action_id") == "release_decision"
    }
    assert choices == {"retry", "restore", "leave"}
    seeded.said(lambda c: "cannot write /opt/app" in c.text and c.args.get("thread_ts"), method="chat.postMessage")
    leave = next(
        e["value"]
        for b in alert.args["blocks"]
        for e in b.get("elements", [])
        if e.get("action_id") == "release_decision" and json.loads(e["value"])["decision"] == "leave"
    )
    seeded.press("release_decision", leave, user="U9MALLORY")
    seeded.said(lambda c: c.args.get("user") == "U9MALLORY" and "Only who asked" in c.text)
    seeded.press("release_decision", leave, user="U2BOB")
    seeded.said(lambda c: "failed" in c.text and "left drained" in c.text, method="chat.update", timeout=30)
    assert down(seeded, "broken", first) == 1 and down(seeded, "broken", second) == 0


def test_one_release_per_app_and_abort(seeded: Bot, services: list[int]) -> None:
    start(seeded, "slow --version 2")
    seeded.said(lambda c: "deploy" in c.text, method="chat.update", timeout=30)
    seeded.command("/release", "slow --version 3", user="U2BOB")
    refused = seeded.said(lambda c: "a release of slow is running" in c.text, method="chat.postEphemeral")
    assert "<@U1ALICE>" in refused.text
    seeded.command("/release", "status slow")
    seeded.said(lambda c: "Release slow 2" in c.text and c.args.get("user") == "U1ALICE", method="chat.postEphemeral")
    seeded.command("/release", "abort slow")
    asked = seeded.said(lambda c: "release_abort" in json.dumps(c.args.get("blocks")), method="chat.postEphemeral")
    seeded.press("release_abort", confirm_key(asked, "release_abort"))
    seeded.said(lambda c: "aborted" in c.text, method="chat.update", timeout=60)
    wait_until(lambda: all(down(seeded, "slow", p) == 0 for p in services[:2]), what="every node serving again")
    seeded.command("/release", "status slow")
    seeded.said(lambda c: "No release of slow is running" in c.text, method="chat.postEphemeral")


def test_progress_never_shows_more_than_one_node_drained_in_a_serial_release(seeded: Bot) -> None:
    start(seeded, "web --version 9")
    seeded.said(lambda c: "succeeded" in c.text, method="chat.update", timeout=60)
    busy = []
    for call in seeded.slack.calls("chat.update"):
        node_lines = [line for block in re.findall(r"```(.*?)```", call.text, re.S) for line in block.splitlines()]
        assert len(node_lines) == 2
        busy.append(len([line for line in node_lines if line.startswith("..")]))
    assert max(busy) == 1  # one node in the works at a time, and the edits did show it
