"""Releases from Slack through the real HTTP endpoint: plan, Start, approval by a second person,
progress edited in place, a failure alert with buttons, the lock, abort."""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.processes import free_port, start_sample_service, stop
from bot.slack.release_messages import decision_message
from bot.standins.slack import Call
from commands.addresses import ServerAddress
from commands.events import DANGEROUS_OPTIONS, DECISION_OPTIONS, DecisionNeeded
from commands.release_plan import ReleasePlan
from commands.release_state import ReleaseState
from tests.helpers import wait_until
from tests.slack_bot import Bot, confirm_key, running_bot

STEPS = '      steps:\n        stop: "true"\n        deploy: "echo deploying {version}"\n        start: "true"\n'


def app_config(name: str, deploy: str = "echo deploying {version}", extra: str = "", stop: str = "true") -> str:
    return (
        f"  {name}:\n"
        "    health:\n      url: http://{host}:{port}/ping\n      interval: 300ms\n      timeout: 300ms\n"
        "      window: 5s\n      rise: 2\n"
        "    nginx:\n      upsync_interval: 100ms\n"
        "    release:\n      executor: local\n      drain_wait: 100ms\n"
        f'      steps:\n        stop: "{stop}"\n        deploy: "{deploy}"\n        start: "true"\n'
        f"    approvers: [U2BOB]\n{extra}"
    )


@pytest.fixture(scope="module")
def fragile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[int], Path]]:
    """Two sample services of their own (ports, state dir): the `fragile` app's stop step really stops
    them, and its start step does not start them again, so a restore's probe fails."""
    state = tmp_path_factory.mktemp("fragile")
    ports = [free_port(), free_port()]
    processes = [start_sample_service(p, state_dir=state) for p in ports]
    yield ports, state
    stop(processes)


@pytest.fixture(scope="module")
def bot(
    tmp_path_factory: pytest.TempPathFactory, services: list[int], fragile: tuple[list[int], Path]
) -> Iterator[Bot]:
    kill = f"{shlex.quote(sys.executable)} -m bot.sample_service stop --port {{port}} --state-dir {fragile[1]}"
    config = (
        "slack:\n  channel: C0DEPLOY\naccess:\n  operators: [U1ALICE, U2BOB]\napps:\n"
        + app_config("web")
        + app_config("gated", extra="    approval: required\n")
        + app_config("broken", deploy="echo cannot write /opt/app >&2; exit 3")
        + app_config("slow", deploy="sleep 4")
        + app_config("fragile", deploy="exit 3", stop=kill)
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
    plan = start(seeded, 'web --version 2 --reason "hotfix 7"')
    assert "2 node(s) in 2 batch(es)" in plan.text and "hotfix 7" in plan.text
    finished = seeded.said(lambda c: "succeeded" in c.text, method="chat.update", timeout=60)
    assert "hotfix 7" in finished.text  # the reason stays in the progress message's header
    posts = [
        c for c in seeded.slack.calls("chat.postMessage") if "Release web 2" in c.text and "thread_ts" not in c.args
    ]
    assert len(posts) == 1 and posts[0].args["channel"] == "C0DEPLOY"  # one message, edited in place
    assert finished.args["ts"] == posts[0].answer["ts"]  # the final edit is of the message posted first
    edits = seeded.slack.calls("chat.update")
    span = edits[-1].at - posts[0].at
    assert len(edits) <= span + 2  # coalesced: at most about one edit a second
    assert all(down(seeded, "web", p) == 0 for p in services[:2])
    assert "2 of 2 released" in finished.text
    metrics = httpx.get(f"{seeded.url}/metrics").text  # the release, as Prometheus sees it
    assert 'upstream_bot_releases_started_total{app="web"} 1.0' in metrics
    assert 'upstream_bot_releases_finished_total{app="web",outcome="succeeded"} 1.0' in metrics
    assert 'upstream_bot_release_node_seconds_count{app="web",phase="total"} 2.0' in metrics
    # The release's last word, in the thread after the final edit (and nothing left for the next test).
    seeded.said(lambda c: c.args.get("thread_ts") == posts[0].answer["ts"] and "succeeded" in c.text)


def none_running(text: str, app: str) -> bool:
    """A /release status answer saying no release of `app` runs (none ever, or how the last one ended)."""
    return f"No release of {app} is running" in text or f"Last release: Release {app} " in text


def test_a_dry_run_changes_nothing(seeded: Bot, services: list[int]) -> None:
    seeded.command("/release", "web --dry-run --version 2")
    seeded.said(lambda c: "Dry run, nothing changed" in c.text and "estimated minimum" in c.text)
    # The positive signal after the point where a (wrongly) started release would be running: a later
    # /release status is answered, and says none runs. Then no progress may have been posted.
    seeded.command("/release", "status web")
    reply = seeded.said(lambda c: none_running(c.text, "web"), method="chat.postEphemeral")
    assert "Release web 2 (serial), running" not in reply.text
    assert seeded.slack.calls("chat.postMessage") == []
    assert all(down(seeded, "web", p) == 0 for p in services[:2])


def test_approval_is_by_a_second_person_and_only_once(seeded: Bot, services: list[int]) -> None:
    start(seeded, "gated --version 2")
    asked = seeded.said(lambda c: "release_approve" in json.dumps(c.args.get("blocks")), method="chat.postMessage")
    assert asked.args["channel"] == "C0DEPLOY" and "<@U2BOB>" in asked.text
    key = confirm_key(asked, "release_approve")
    seeded.press("release_approve", key, user="U1ALICE")  # the requester
    seeded.said(lambda c: c.args.get("user") == "U1ALICE" and "You asked for this release" in c.text)
    seeded.press("release_approve", key, user="U9MALLORY")  # not an approver
    seeded.said(lambda c: c.args.get("user") == "U9MALLORY" and "Only an approver of gated" in c.text)
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


def test_a_rejection_ends_it_with_its_reason_recorded(seeded: Bot) -> None:
    plan = start(seeded, "gated --version 3")
    release_id = confirm_key(plan, "release_start").split(":")[0]
    asked = seeded.said(lambda c: "release_reject" in json.dumps(c.args.get("blocks")), method="chat.postMessage")
    seeded.press("release_reject", confirm_key(asked, "release_reject"), user="U2BOB")
    modal = seeded.said(
        lambda c: c.args.get("view", {}).get("callback_id") == "release_reject_reason", method="views.open"
    )
    # The press only asks why; the submission is the rejection.
    assert all("rejected by" not in c.text for c in seeded.slack.calls("chat.update"))
    seeded.submit(modal.args["view"], {"reason": "freeze <!here> until monday"}, user="U2BOB")
    rejected = seeded.said(lambda c: "rejected by <@U2BOB>" in c.text, method="chat.update")
    assert rejected.args["ts"] == asked.answer["ts"] and "freeze" in rejected.text and "<!here>" not in rejected.text
    entry = wait_until(
        lambda: [e for e in seeded.history("gated") if e["what"] == "reject" and e["target"] == release_id],
        what="the rejection in the history",
    )[0]
    assert entry["who"] == "U2BOB" and entry["reason"] == "freeze \u2039!here\u203a until monday"
    # Rejected: the buttons are gone, and a late approval changes nothing.
    seeded.press("release_approve", confirm_key(asked, "release_approve"), user="U2BOB")
    seeded.said(lambda c: "Already rejected by <@U2BOB>" in c.text, method="chat.postEphemeral")
    # A later /release status being answered "none running" is the positive signal after which a
    # wrongly started release would have shown (lock, progress).
    seeded.command("/release", "status gated")
    reply = seeded.said(lambda c: none_running(c.text, "gated"), method="chat.postEphemeral")
    assert "Release gated 3" not in reply.text  # the rejected one never started: not even its journal
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
    seeded.said(lambda c: c.args.get("user") == "U9MALLORY" and "only operators of broken" in c.text)
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
    seeded.said(lambda c: "Last release: Release slow 2" in c.text and "aborted" in c.text, method="chat.postEphemeral")


def test_progress_never_shows_more_than_one_node_drained_in_a_serial_release(seeded: Bot) -> None:
    start(seeded, "web --version 9")
    seeded.said(lambda c: "succeeded" in c.text, method="chat.update", timeout=60)
    busy = []
    for call in seeded.slack.calls("chat.update"):
        node_lines = [line for block in re.findall(r"```(.*?)```", call.text, re.S) for line in block.splitlines()]
        assert len(node_lines) == 2
        busy.append(len([line for line in node_lines if line.startswith("..")]))
    assert max(busy) == 1  # one node in the works at a time, and the edits did show it


def decision_button(call: Call, decision: str) -> dict[str, Any]:
    return next(
        e
        for b in call.args["blocks"]
        for e in b.get("elements", [])
        if e.get("action_id") == "release_decision" and json.loads(e["value"])["decision"] == decision
    )


def test_a_restore_that_fails_its_probe_asks_again_with_a_confirmed_unhealthy_restore(
    seeded: Bot, fragile: tuple[list[int], Path]
) -> None:
    ports = sorted(fragile[0])
    for port in ports:
        seeded.consul.add_server("fragile", f"127.0.0.1:{port}")
    start(seeded, "fragile --version 2")
    failure = seeded.said(
        lambda c: "release_decision" in json.dumps(c.args.get("blocks")), method="chat.postMessage", timeout=60
    )
    seeded.press("release_decision", decision_button(failure, "restore")["value"])
    # Its stop step stopped the node and its start step does not start it: the restore's probe fails.
    asked = seeded.said(
        lambda c: "restore_unhealthy" in json.dumps(c.args.get("blocks")), method="chat.postMessage", timeout=60
    )
    assert "NOT healthy" in asked.text and f"127.0.0.1:{ports[0]}" in asked.text
    unhealthy = decision_button(asked, "restore_unhealthy")
    assert unhealthy["text"]["text"] == "Restore UNHEALTHY node" and unhealthy["style"] == "danger"
    assert unhealthy["confirm"]["title"]["text"] == "Put an unhealthy node back into traffic?"
    assert "confirm" not in decision_button(asked, "retry") and "confirm" not in decision_button(asked, "leave")
    seeded.press("release_decision", decision_button(asked, "leave")["value"], user="U2BOB")
    seeded.said(lambda c: "failed" in c.text and "Release fragile 2" in c.text, method="chat.update", timeout=30)
    assert down(seeded, "fragile", ports[0]) == 1 and down(seeded, "fragile", ports[1]) == 0


def decision_buttons(kind: str) -> list[dict[str, Any]]:
    node = ServerAddress.parse("10.0.0.1:8080")
    plan = ReleasePlan("web", "U1ALICE", "2", "serial", ((node,),), ("deploy",))
    event = DecisionNeeded(ReleaseState.new(plan, 0.0), kind, "d1", node, "probe: connection refused")
    _, blocks = decision_message(event, "<@U1ALICE>")
    return [e for b in blocks if b["type"] == "actions" for e in b["elements"]]


@pytest.mark.parametrize("kind", sorted(DECISION_OPTIONS))
def test_decision_buttons_are_the_events_options_and_dangerous_ones_are_confirmed_again(kind: str) -> None:
    buttons = decision_buttons(kind)
    assert [json.loads(b["value"])["decision"] for b in buttons] == list(DECISION_OPTIONS[kind])
    for button in buttons:
        assert len(button["text"]["text"]) <= 75 and button["action_id"] == "release_decision"
        if json.loads(button["value"])["decision"] in DANGEROUS_OPTIONS:
            # Slack's own dialog is the explicit second confirmation, within Block Kit's limits.
            assert button["style"] == "danger"
            confirm = button["confirm"]
            assert confirm["title"]["text"] == "Put an unhealthy node back into traffic?"
            assert "10.0.0.1:8080" in confirm["text"]["text"] and len(confirm["text"]["text"]) <= 300
            assert confirm["style"] == "danger" and len(confirm["confirm"]["text"]) <= 30
        else:
            assert "confirm" not in button


def test_a_failed_restore_offers_a_retry_an_unhealthy_restore_and_leaving_it() -> None:
    labels = {json.loads(b["value"])["decision"]: b["text"]["text"] for b in decision_buttons("restore_failed")}
    assert labels == {
        "retry": "Retry node",
        "restore_unhealthy": "Restore UNHEALTHY node",
        "leave": "Leave drained",
    }
    failure = {json.loads(b["value"])["decision"]: b["text"]["text"] for b in decision_buttons("failure")}
    assert failure["restore"] == "Start, probe and restore"
