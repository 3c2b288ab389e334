"""Who may do what from Slack, through the real HTTP endpoint of a running bot (signed requests), the
Consul stand-in and the Slack stand-in with user groups: the allowed channels, operators for every
change and every press, approvers (never the requester), user groups read afresh at each press."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot.slack.app import make_client
from bot.slack.directory import ApproverDirectory
from bot.standins.slack import Call, SlackStandIn
from tests.helpers import wait_until
from tests.slack_bot import Bot, FakeNode, confirm_key, running_bot

MALLORY = "U9MALLORY"  # in an allowed channel, operator of nothing
CHANNEL_REFUSAL = "upstream-bot takes commands in <#C0DEPLOY>, <#C0OPS>; nothing was done."
RELEASE = (
    "    release:\n      executor: local\n      drain_wait: 100ms\n"
    '      steps:\n        stop: "true"\n        deploy: "true"\n        start: "true"\n'
)


@pytest.fixture(scope="module")
def watched_node() -> Iterator[FakeNode]:
    with FakeNode() as node:
        yield node


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory, watched_node: FakeNode) -> Iterator[Bot]:
    # Operators: Alice by ID, U3OPS through the user group S0OPS (the stand-in's). `orphan` has none.
    # Only `watched` has a health watch, with one round an hour: after its first round (its node's
    # first probe) the bot reads Consul only for what the tests ask.
    config = (
        "slack:\n  channel: C0DEPLOY\n  channels: [C0DEPLOY, C0OPS]\n"
        "access:\n  operators: [U1ALICE, S0OPS]\n"
        "apps:\n"
        "  app:\n    approvers: [U2BOB]\n"
        f"  gated:\n    approvers: [U2BOB]\n    approval: required\n{RELEASE}"
        "  orphan:\n    operators: []\n"
        "  watched:\n    health:\n      url: http://{host}:{port}/ping\n      interval: 1h\n      window: 2h\n"
    )
    folder = tmp_path_factory.mktemp("access-bot")
    with running_bot(folder, config, seed=lambda c: c.add_server("watched", watched_node.address)) as running:
        wait_until(lambda: watched_node.probes >= 1, timeout=20, what="the watch's first round")
        yield running


@pytest.fixture
def seeded(bot: Bot) -> Bot:
    bot.slack.clear()
    bot.slack.set_usergroup("S0OPS", ["U3OPS"])
    for key in [*bot.keys("upstreams/app/"), *bot.keys("upstreams/gated/"), *bot.keys("upstreams/orphan/")]:
        bot.consul.server.call(bot.consul.standin.kv.pop, key)
    for key in bot.keys("upstream-bot/history/"):  # each test reads only what it did
        bot.consul.server.call(bot.consul.standin.kv.pop, key)
    bot.consul.add_server("app", "127.0.0.1:9001")
    bot.consul.add_server("app", "127.0.0.1:9002")
    bot.consul.add_server("app", "127.0.0.1:9009", down=1)
    for port in (9201, 9202):
        bot.consul.add_server("gated", f"127.0.0.1:{port}")
    bot.consul.add_server("orphan", "127.0.0.1:9101")
    bot.consul.add_server("orphan", "127.0.0.1:9102")
    return bot


def upstreams(bot: Bot) -> dict[str, str | None]:
    return {key: bot.consul.value(key) for key in bot.keys("upstreams/")}


def consul_requests(bot: Bot) -> int:
    return int(bot.consul.server.call(lambda: bot.consul.standin.requests))


def to(user: str, *words: str) -> Callable[[Call], bool]:
    """A predicate: an ephemeral answer to `user` saying all of `words`."""
    return lambda c: c.args.get("user") == user and all(w in c.text for w in words)


def ephemeral(bot: Bot, user: str, *words: str) -> Call:
    return bot.said(to(user, *words), method="chat.postEphemeral")


# -- channels -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["C0RANDOM", "D0ALICEDM"], ids=["other-channel", "dm"])
def test_a_command_from_elsewhere_gets_one_ephemeral_answer_and_changes_nothing(seeded: Bot, channel: str) -> None:
    before = upstreams(seeded)
    # What the same reading command costs in Consul from an allowed channel, answered: the baseline.
    start = consul_requests(seeded)
    seeded.command("/upstream", "status app", channel="C0DEPLOY")
    ephemeral(seeded, "U1ALICE", "2 of 3 serving")
    one_status = consul_requests(seeded) - start

    start = consul_requests(seeded)
    for command, text in (("/drain", "127.0.0.1:9001"), ("/upstream", "status app"), ("/upstream", "history app")):
        response = seeded.command(command, text, channel=channel)
        # The refusal is the acknowledgement itself: no Web API call, so it reaches a DM too.
        assert response.status_code == 200
        assert response.json() == {"text": CHANNEL_REFUSAL, "response_type": "ephemeral"}
    # The positive signal: the same status asked from an allowed channel, started after the refused
    # ones, is answered. Work started for a refused command would have read Consul by then.
    seeded.command("/upstream", "status app", channel="C0DEPLOY")
    wait_until(
        lambda: len(seeded.slack.calls("chat.postEphemeral")) >= 2, what="the second status from C0DEPLOY answered"
    )
    assert consul_requests(seeded) - start == one_status  # the refused commands read nothing
    assert [c for c in seeded.slack.calls() if c.args.get("channel") == channel] == []
    assert upstreams(seeded) == before
    assert seeded.keys("upstream-bot/history/") == []


def test_everyone_in_an_allowed_channel_can_read(seeded: Bot) -> None:
    seeded.command("/upstream", "status app", user=MALLORY, channel="C0OPS")
    ephemeral(seeded, MALLORY, "2 of 3 serving")
    seeded.command("/upstream", "alerts", user=MALLORY, channel="C0OPS")
    ephemeral(seeded, MALLORY, "open incident(s)", "watching: watched")
    seeded.command("/upstream", "history app", user=MALLORY)
    ephemeral(seeded, MALLORY, "History of app")
    seeded.command("/release", "status gated", user=MALLORY)
    ephemeral(seeded, MALLORY, "No release of gated is running")
    seeded.command("/release", "gated --dry-run", user=MALLORY)
    ephemeral(seeded, MALLORY, "Dry run, nothing changed")


# -- operators ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "text", "app"),
    [
        ("/drain", "127.0.0.1:9001", "app"),
        ("/undrain", "127.0.0.1:9009", "app"),
        ("/upstream", "add app 127.0.0.1:9003", "app"),
        ("/upstream", "remove app 127.0.0.1:9001", "app"),
        ("/release", "gated", "gated"),
        ("/release", "abort gated", "gated"),
        ("/upstream", "watch watched off", "watched"),
    ],
)
def test_a_non_operator_is_refused_every_change(seeded: Bot, command: str, text: str, app: str) -> None:
    before = upstreams(seeded)
    seeded.command(command, text, user=MALLORY)
    refused = ephemeral(seeded, MALLORY, f"only operators of {app}", "Nothing was changed")
    assert "<@U1ALICE>" in refused.text and "<!subteam^S0OPS>" in refused.text  # who may, as mentions
    # The refusal is the command's last act: nothing was asked, written or recorded.
    others = [c for c in seeded.slack.calls() if c.method != "usergroups.users.list" and c.args.get("user") != MALLORY]
    assert others == []
    assert upstreams(seeded) == before
    assert seeded.keys(f"upstream-bot/history/{app}/") == []


def press_values() -> dict[str, str]:
    """Payload values of buttons the bot did not have to post (they only name an app and ids)."""
    incident = {"app": "app", "address": "127.0.0.1:9001", "incident": "i0"}
    return {
        "release_decision": json.dumps({"app": "gated", "decision_id": "d0", "decision": "leave"}),
        "release_abort": json.dumps({"app": "gated", "release_id": "r0"}),
        "watch_drain": json.dumps(incident),
        "watch_silence": json.dumps(incident),
        "watch_ack": json.dumps(incident),
    }


@pytest.mark.parametrize("action", sorted(press_values()))
def test_a_non_operator_pressing_a_release_or_alert_button_is_refused(seeded: Bot, action: str) -> None:
    before = upstreams(seeded)
    seeded.press(action, press_values()[action], user=MALLORY)
    app = json.loads(press_values()[action])["app"]
    ephemeral(seeded, MALLORY, f"only operators of {app}")
    assert upstreams(seeded) == before
    assert seeded.keys(f"upstream-bot/history/{app}/") == []
    assert seeded.slack.calls("chat.postMessage") == []  # no thread reply, no question to the channel


def test_a_non_operator_pressing_confirm_or_start_is_refused_and_the_button_still_works(seeded: Bot) -> None:
    seeded.command("/drain", "127.0.0.1:9001")
    asked = seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postEphemeral")
    seeded.press("confirm", confirm_key(asked), user=MALLORY)
    ephemeral(seeded, MALLORY, "only operators of app")
    seeded.command("/release", "gated")
    plan = seeded.said(lambda c: "release_start" in json.dumps(c.args.get("blocks")), method="chat.postEphemeral")
    seeded.press("release_start", confirm_key(plan, "release_start"), user=MALLORY)
    ephemeral(seeded, MALLORY, "only operators of gated")
    assert seeded.slack.calls("response_url") == []  # no verdict shown: the refused presses used nothing up
    assert json.loads(seeded.consul.value("upstreams/app/127.0.0.1:9001") or "{}")["down"] == 0
    # The requester's own press still works: the refused one did not use the button up.
    seeded.press("confirm", confirm_key(asked))
    seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text and "by <@U1ALICE>" in c.text, method="chat.postMessage")
    seeded.press("release_cancel", confirm_key(plan, "release_start"))
    seeded.said(lambda c: "cancelled by <@U1ALICE>" in c.text, method="response_url")


def test_someone_removed_from_the_operators_group_can_no_longer_press(seeded: Bot) -> None:
    seeded.command("/drain", "127.0.0.1:9001", user="U3OPS")  # an operator through S0OPS
    asked = seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postEphemeral")
    seeded.slack.set_usergroup("S0OPS", [])  # removed between the question and the press
    seeded.press("confirm", confirm_key(asked), user="U3OPS")
    ephemeral(seeded, "U3OPS", "only operators of app")
    assert json.loads(seeded.consul.value("upstreams/app/127.0.0.1:9001") or "{}")["down"] == 0
    # Read afresh at every press, not cached: back in the group, the same button works.
    seeded.slack.set_usergroup("S0OPS", ["U3OPS"])
    seeded.press("confirm", confirm_key(asked), user="U3OPS")
    seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text and "by <@U3OPS>" in c.text, method="chat.postMessage")
    entry = wait_until(lambda: [e for e in seeded.history("app") if e["what"] == "drain"], what="the drain recorded")
    assert entry[0]["who"] == "U3OPS" and entry[0]["where"] == "C0DEPLOY"  # the Slack user ID, nothing else


def test_an_app_without_operators_refuses_changes_naming_the_keys(seeded: Bot) -> None:
    seeded.command("/drain", "127.0.0.1:9101 orphan")
    refused = ephemeral(seeded, "U1ALICE", "orphan has no operators")
    assert "apps.orphan.operators" in refused.text and "access.operators" in refused.text
    assert json.loads(seeded.consul.value("upstreams/orphan/127.0.0.1:9101") or "{}")["down"] == 0


# -- approvals ----------------------------------------------------------------------------------------


def test_the_requester_cannot_approve_their_own_release(seeded: Bot) -> None:
    seeded.command("/release", "gated --reason 'new TLS certs'")
    plan = seeded.said(lambda c: "release_start" in json.dumps(c.args.get("blocks")), method="chat.postEphemeral")
    seeded.press("release_start", confirm_key(plan, "release_start"))
    asked = seeded.said(lambda c: "release_approve" in json.dumps(c.args.get("blocks")), method="chat.postMessage")
    assert "new TLS certs" in asked.text  # the reason is shown with the approval request
    key = confirm_key(asked, "release_approve")
    seeded.press("release_approve", key)  # Alice asked for it
    ephemeral(seeded, "U1ALICE", "You asked for this release")
    seeded.press("release_approve", key, user="U3OPS")  # an operator, not an approver
    ephemeral(seeded, "U3OPS", "Only an approver of gated")
    seeded.press("release_start", key)  # the approval's key sent as Start (a crafted payload)
    ephemeral(seeded, "U1ALICE", "does not answer that question")
    assert seeded.slack.calls("chat.update") == []  # still open: refused presses used nothing up
    seeded.press("release_approve", key, user="U2BOB")
    seeded.said(lambda c: "approved by <@U2BOB>" in c.text and c.args.get("ts") == asked.answer["ts"])
    seeded.said(lambda c: "succeeded" in c.text and "approved by <@U2BOB>" in c.text, method="chat.update", timeout=60)
    # The release's last entry is written after its end is shown: waited for, so the next test starts clean.
    wait_until(lambda: [e for e in seeded.history("gated") if e["what"] == "release.finish"], what="release.finish")
    approvals = [e for e in seeded.history("gated") if e["what"] == "approve"]
    assert [(e["who"], e["reason"]) for e in approvals] == [("U2BOB", "new TLS certs")]


# -- the health watch ---------------------------------------------------------------------------------


def test_watch_off_asks_and_the_channel_is_told_who_turned_it_off(seeded: Bot) -> None:
    seeded.command("/upstream", "watch watched off", user="U3OPS", channel="C0OPS")
    asked = ephemeral(seeded, "U3OPS", "Turn the health watch of watched OFF?")
    seeded.command("/upstream", "alerts", channel="C0OPS")
    ephemeral(seeded, "U1ALICE", "watching: watched")  # asking changed nothing yet
    seeded.press("confirm", confirm_key(asked), user="U3OPS", channel="C0OPS")
    # Announced where it was asked and in the team's channel, naming who.
    wait_until(
        lambda: {
            c.args["channel"] for c in seeded.slack.calls("chat.postMessage") if "turned OFF by <@U3OPS>" in c.text
        }
        == {"C0OPS", "C0DEPLOY"},
        what="the announcement in both channels",
    )
    entry = wait_until(lambda: [e for e in seeded.history("watched") if e["what"] == "watch.off"], what="recorded")
    assert entry[0]["who"] == "U3OPS" and entry[0]["where"] == "C0OPS"
    seeded.command("/upstream", "watch watched on", user="U3OPS")
    seeded.said(lambda c: "turned on by <@U3OPS>" in c.text, method="chat.postMessage")


# -- the user-group directory -------------------------------------------------------------------------


async def test_user_groups_are_read_at_every_question_and_a_stale_answer_only_while_slack_fails(
    slack: tuple[SlackStandIn, str],
) -> None:
    standin, url = slack
    now = [1000.0]
    client = make_client("xoxb-test", f"{url}/api/", timeout=2)
    directory = ApproverDirectory(client, stale_seconds=60, clock=lambda: now[0])

    def asked() -> list[dict[str, Any]]:
        return [c.args for c in standin.calls("usergroups.users.list") if not c.fault]

    assert await directory.is_member("U3OPS", ("U1ALICE", "S0OPS"))
    assert await directory.is_member("U1ALICE", ("U1ALICE", "S0OPS"))  # listed by ID: Slack not asked
    assert len(asked()) == 1
    standin.set_usergroup("S0OPS", [])
    assert not await directory.is_member("U3OPS", ("S0OPS",))  # asked again: no cache in the way
    standin.set_usergroup("S0OPS", ["U3OPS"])
    assert await directory.is_member("U3OPS", ("S0OPS",))
    assert len(asked()) == 3
    standin.set_faults(status=503)  # Slack fails: the last answer, while it is recent
    assert await directory.is_member("U3OPS", ("S0OPS",))
    now[0] += 61  # ... and not any longer
    assert not await directory.is_member("U3OPS", ("S0OPS",))
    assert [c.fault for c in standin.calls("usergroups.users.list") if c.fault] == ["status 503", "status 503"]


@pytest.mark.parametrize("channel", ["C0RANDOM", "D0ALICEDM"], ids=["other-channel", "dm"])
def test_a_press_from_elsewhere_is_refused_and_the_button_still_works(seeded: Bot, channel: str) -> None:
    seeded.command("/drain", "127.0.0.1:9001")
    asked = seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postEphemeral")
    seeded.press("confirm", confirm_key(asked), channel=channel)  # the same operator, pressing from elsewhere
    seeded.said(lambda c: "takes commands in" in c.text and c.args.get("channel") == channel)
    assert json.loads(seeded.consul.value("upstreams/app/127.0.0.1:9001") or "{}")["down"] == 0
    seeded.press("confirm", confirm_key(asked))  # from the channel it was asked in: it works
    seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text and "by <@U1ALICE>" in c.text, method="chat.postMessage")
