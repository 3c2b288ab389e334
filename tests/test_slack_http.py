"""The Slack front end through Bolt's real HTTP endpoint: `upstream-bot serve --http` as a process,
signed requests, and what the bot said read from the Slack Web API stand-in's record."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import command_body, sign, wait_until
from tests.slack_bot import Bot, confirm_key, running_bot


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    # Operators: Alice by ID, U3OPS through the user group S0OPS (resolved through Slack at each press).
    config = (
        "slack:\n  channel: C0DEPLOY\naccess:\n  operators: [U1ALICE, S0OPS]\n"
        "apps:\n  app:\n    approvers: [U2BOB]\n  big:\n    upstream: big\n"
    )
    with running_bot(tmp_path_factory.mktemp("bot"), config) as running:
        yield running


@pytest.fixture
def seeded(bot: Bot) -> Bot:
    bot.reset()
    return bot


def test_healthz(bot: Bot) -> None:
    assert httpx.get(f"{bot.url}/healthz").json() == {"ok": True}


def test_metrics_count_commands_acks_and_consul_calls_in_prometheus_text(tmp_path: Path) -> None:
    with running_bot(tmp_path, "apps:\n  app: {}\n") as seeded:  # its own process: counts from zero
        seeded.consul.add_server("app", "127.0.0.1:9001")
        _metrics_after_two_commands(seeded)


def _metrics_after_two_commands(seeded: Bot) -> None:
    seeded.command("/upstream", "status app")
    seeded.said(lambda c: "1 of 1 serving" in c.text, method="chat.postEphemeral")
    seeded.command("/upstream", "stats app")  # not a command: counted as usage
    seeded.said(lambda c: "unknown subcommand" in c.text, method="chat.postEphemeral")
    answer = httpx.get(f"{seeded.url}/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    expected = (
        'upstream_bot_commands_total{command="/upstream",outcome="done"} 1.0',  # counted once handled:
        'upstream_bot_commands_total{command="/upstream",outcome="usage"} 1.0',  # polled, not raced
        "upstream_bot_slack_ack_seconds_count 2.0",
        'upstream_bot_consul_call_seconds_count{outcome="ok"}',
    )
    wait_until(lambda: all(e in httpx.get(f"{seeded.url}/metrics").text for e in expected), 5, "the metrics")


def test_readyz_fails_while_consul_cannot_be_read_and_says_why_while_healthz_stays_up(bot: Bot) -> None:
    assert httpx.get(f"{bot.url}/readyz").json() == {"ok": True}
    bot.consul.standin.faults.status = 500
    try:
        # One answer serves /readyz for a second: the next ones say it.
        answer = wait_until(
            lambda: (a := httpx.get(f"{bot.url}/readyz", timeout=10)).status_code == 503 and a, 10, "unready"
        )
        assert answer.json()["ok"] is False and "Consul" in answer.json()["reason"], answer.json()
        assert httpx.get(f"{bot.url}/healthz").json() == {"ok": True}  # alive, not ready
    finally:
        bot.consul.standin.faults.status = 0
    wait_until(lambda: httpx.get(f"{bot.url}/readyz", timeout=10).json() == {"ok": True}, 10, "ready again")


@pytest.mark.parametrize(
    "headers",
    [
        {},  # unsigned
        {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=" + "0" * 64},
        "stale",
        "other-secret",
    ],
)
def test_requests_without_a_valid_fresh_signature_are_refused(seeded: Bot, headers: dict[str, str] | str) -> None:
    body = command_body("/drain", "127.0.0.1:9001")
    if headers == "stale":
        headers = sign(body, timestamp=int(time.time()) - 6 * 60)
    elif headers == "other-secret":
        headers = sign(body, secret="not-the-secret")
    assert isinstance(headers, dict)
    assert seeded.post(body, headers).status_code == 401
    # A refused request must leave no trace. Before looking for none, wait for the positive signal that
    # follows the point where its confirmation would have come: the same command, validly signed, for
    # the other server (the same work, started after the refused one) is answered.
    seeded.post(command_body("/drain", "127.0.0.1:9002"))
    seeded.said(lambda c: "Drain 127.0.0.1:9002" in c.text, method="chat.postEphemeral")
    assert [c.text for c in seeded.slack.calls() if "Drain 127.0.0.1:9001" in c.text] == []


def test_status_is_answered_privately_with_a_summary(seeded: Bot) -> None:
    response = seeded.command("/upstream", "status app")
    assert response.status_code == 200
    call = seeded.said(lambda c: "2 of 2 serving" in c.text, method="chat.postEphemeral")
    assert call.args["user"] == "U1ALICE" and "127.0.0.1:9002" in call.text


def test_drain_is_confirmed_by_the_button_and_announced_in_the_channel(seeded: Bot) -> None:
    seeded.command("/drain", "127.0.0.1:9001")
    asked = seeded.said(lambda c: "app: 1 of 2 will be serving" in c.text, method="chat.postEphemeral")
    assert seeded.down("127.0.0.1:9001") == 0
    assert seeded.press("confirm", confirm_key(asked)).status_code == 200
    posted = seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postMessage")
    assert posted.args["channel"] == "C0DEPLOY" and "U1ALICE" in posted.text and "1 of 2 now serving" in posted.text
    assert seeded.down("127.0.0.1:9001") == 1
    # The buttons are replaced, so the message shows the verdict.
    seeded.said(lambda c: c.args.get("replace_original") and "confirmed by" in c.text, method="response_url")


def test_a_reason_is_shown_with_the_question_the_result_and_the_status(seeded: Bot) -> None:
    seeded.command("/drain", '127.0.0.1:9001 --reason "disk full"')
    asked = seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postEphemeral")
    assert "disk full" in asked.text
    seeded.press("confirm", confirm_key(asked))
    posted = seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postMessage")
    assert "disk full" in posted.text
    seeded.command("/upstream", "status app")
    status = seeded.said(lambda c: "1 of 2 serving" in c.text, method="chat.postEphemeral")
    # Who drained it, when and why, from the history, as a mention (outside the code block).
    assert "drained by <@U1ALICE>" in status.text and "disk full" in status.text


def test_a_double_press_does_the_change_once(seeded: Bot) -> None:
    seeded.command("/drain", "127.0.0.1:9001")
    key = confirm_key(seeded.said(lambda c: "Drain" in c.text, method="chat.postEphemeral"))
    seeded.press("confirm", key)
    seeded.press("confirm", key)
    # Both presses are done with: the winner posted the result, the loser's last act is "Already
    # confirmed" (after which it posts nothing). Only then is counting the results meaningful.
    seeded.said(lambda c: "Already confirmed by <@U1ALICE>" in c.text)
    seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postMessage")
    assert len([c for c in seeded.slack.calls("chat.postMessage") if "Drain" in c.text]) == 1
    assert seeded.down("127.0.0.1:9001") == 1


def test_only_an_operator_may_confirm(seeded: Bot) -> None:
    seeded.command("/drain", "127.0.0.1:9001")
    key = confirm_key(seeded.said(lambda c: "Drain" in c.text, method="chat.postEphemeral"))
    seeded.press("confirm", key, user="U9MALLORY")
    seeded.said(lambda c: c.args.get("user") == "U9MALLORY" and "only operators of app" in c.text)
    assert seeded.down("127.0.0.1:9001") == 0
    seeded.press("confirm", key, user="U3OPS")  # a member of the operators' user group S0OPS
    seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text and "U3OPS" in c.text, method="chat.postMessage")
    assert seeded.down("127.0.0.1:9001") == 1


def test_cancel_changes_nothing(seeded: Bot) -> None:
    seeded.command("/drain", "127.0.0.1:9001")
    key = confirm_key(seeded.said(lambda c: "Drain" in c.text, method="chat.postEphemeral"))
    seeded.press("cancel", key)
    seeded.said(lambda c: "cancelled by" in c.text, method="response_url")
    seeded.press("confirm", key)
    seeded.said(lambda c: "Already cancelled" in c.text)
    assert seeded.down("127.0.0.1:9001") == 0


def test_a_press_after_someone_else_changed_the_server_says_what_changed(seeded: Bot) -> None:
    seeded.command("/drain", "127.0.0.1:9001")
    key = confirm_key(seeded.said(lambda c: "Drain" in c.text, method="chat.postEphemeral"))
    seeded.consul.add_server("app", "127.0.0.1:9001", weight=5)  # someone edits the entry meanwhile
    seeded.press("confirm", key)
    # As sent to Slack: `>` escaped (Slack shows "weight 1 -> 5").
    seeded.said(lambda c: "changed since you asked (weight 1 -&gt; 5)" in c.text, method="chat.postMessage")
    assert seeded.down("127.0.0.1:9001") == 0


def test_bad_input_gets_a_private_answer(seeded: Bot) -> None:
    seeded.command("/drain", "10.0.0.5")
    seeded.said(lambda c: "expected IPv4:port" in c.text, method="chat.postEphemeral")
    seeded.command("/upstream", "status nope")
    seeded.said(lambda c: "known apps: `app`, `big`" in c.text, method="chat.postEphemeral")


def test_a_retried_slash_command_is_handled_once(seeded: Bot) -> None:
    body = command_body("/drain", "127.0.0.1:9001", trigger_id="trigger-retry-1")
    seeded.post(body)
    seeded.post(body, {**sign(body), "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postEphemeral")
    # A second confirmation would come from work started with the retry. A later command doing the same
    # work (another server, a new trigger_id) being answered is the signal that it would have come by now.
    seeded.post(command_body("/drain", "127.0.0.1:9002"))
    seeded.said(lambda c: "Drain 127.0.0.1:9002" in c.text, method="chat.postEphemeral")
    assert len([c for c in seeded.slack.calls("chat.postEphemeral") if "Drain 127.0.0.1:9001" in c.text]) == 1


def test_500_servers_fit_slacks_limits_and_page(seeded: Bot) -> None:
    for i in range(500):
        seeded.consul.add_server("big", f"10.1.{i // 250}.{i % 250 + 1}:8080", down=1 if i % 50 == 0 else 0)
    seeded.command("/upstream", "status big")
    call = seeded.said(lambda c: "490 of 500 serving" in c.text, method="chat.postEphemeral")
    blocks = call.args["blocks"]
    assert len(blocks) <= 50
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")
    assert "page 1 of 10" in call.text
    (next_page,) = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    seeded.press("status_page", next_page["value"])
    seeded.said(lambda c: "page 2 of 10" in c.text and c.args.get("replace_original"), method="response_url")
    seeded.command("/upstream", "status big --page 12")
    seeded.said(lambda c: "There is no page 12" in c.text and "page 10 of 10" in c.text, method="chat.postEphemeral")


def test_acknowledged_before_consul_answers(seeded: Bot) -> None:
    seeded.consul.standin.faults.delay = 1.5
    try:
        started = time.monotonic()
        response = seeded.command("/upstream", "status app")
        acked = time.monotonic() - started
        assert response.status_code == 200 and acked < 1.5  # the ack did not wait for Consul
        seeded.said(lambda c: "2 of 2 serving" in c.text, method="chat.postEphemeral")
    finally:
        seeded.consul.standin.faults.delay = 0.0


def test_manifest_names_every_command_the_bot_registers() -> None:
    import yaml

    from commands.grammar import COMMANDS

    manifest = yaml.safe_load(Path(__file__).parents[1].joinpath("manifest.yml").read_text())
    assert manifest["_metadata"]["major_version"] == 1
    assert {c["command"] for c in manifest["features"]["slash_commands"]} == set(COMMANDS)
    assert {"commands", "chat:write", "usergroups:read"} <= set(manifest["oauth_config"]["scopes"]["bot"])
    assert manifest["settings"]["interactivity"]["is_enabled"] is True


def test_serve_starts_without_bolts_unused_token_warning(tmp_path: Path) -> None:
    with running_bot(tmp_path, "apps:\n  app: {}\n") as running:
        assert httpx.get(f"{running.url}/healthz").json() == {"ok": True}
        log = (tmp_path / "bot.log").read_text()
    assert "upstream-bot serving Slack" in log and "will be unused" not in log
