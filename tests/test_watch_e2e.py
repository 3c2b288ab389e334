"""The health watch end to end: `serve --http` with real sample services; SIGKILL one and the channel
gets exactly one alert, then a recovery reply in its thread when it is back. A drained node that dies
is not alerted. Turning the watch off asks first and is announced.

Absence ("no second alert") is asserted only after the watch has run the rounds in which it would
have come: a second watched app, `beat`, has one node in the test's process that counts its probes,
one a round (tests.slack_bot.FakeNode)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.processes import free_port, start_sample_service, stop
from bot.standins.slack import Call
from tests.slack_bot import Bot, FakeNode, confirm_key, running_bot

INTERVAL, WINDOW = 0.3, 2.0
HEALTH = (
    "    health:\n      url: http://{host}:{port}/ping\n"
    f"      interval: {INTERVAL}s\n      timeout: {INTERVAL}s\n"
    f"      window: {WINDOW}s\n      rise: 2\n"
)

Watched = tuple[Bot, list[int], dict[int, subprocess.Popen[bytes]], FakeNode]


def rounds(seconds: float) -> int:
    """Rounds of the watch that cover `seconds` (and one more, for the round in progress)."""
    return math.ceil(seconds / INTERVAL) + 1


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    ports = sorted(free_port() for _ in range(3))
    processes = {p: start_sample_service(p) for p in ports}
    config = (
        "slack:\n  channel: C0DEPLOY\naccess:\n  operators: [U1ALICE, U2BOB, S0OPS]\n"
        f"apps:\n  app:\n    approvers: [U2BOB]\n{HEALTH}  beat:\n{HEALTH}"
    )
    with FakeNode() as beat, running_bot(tmp_path, config) as bot:
        for port in ports:
            bot.consul.add_server("app", f"127.0.0.1:{port}")
        bot.consul.add_server("beat", beat.address)
        yield bot, ports, processes, beat
    stop(list(processes.values()))


def alerts(bot: Bot, port: int) -> list[Call]:
    return [
        c
        for c in bot.slack.calls("chat.postMessage")
        if "watch_silence" in json.dumps(c.args.get("blocks")) and f"127.0.0.1:{port}" in c.text
    ]


def test_a_killed_node_is_alerted_once_and_its_recovery_is_threaded(watched: Watched) -> None:
    bot, ports, processes, beat = watched
    victim = ports[0]
    beat.wait_probes(3)  # a few healthy rounds first
    assert bot.slack.calls("chat.postMessage") == []
    killed_at = time.time()
    os.kill(processes[victim].pid, signal.SIGKILL)
    processes[victim].wait(5)
    alert = bot.said(
        lambda c: "watch_silence" in json.dumps(c.args.get("blocks")),
        method="chat.postMessage",
        timeout=WINDOW + INTERVAL + 2.0,
    )
    assert alert.at - killed_at <= WINDOW + INTERVAL + 2.0
    assert f"127.0.0.1:{victim}" in alert.text and "connection refused" in alert.text
    assert "Consul lists it serving" in alert.text and "<@U2BOB>" in alert.text
    assert alert.args["channel"] == "C0DEPLOY"
    beat.wait_probes(rounds(2 * WINDOW))  # it stays dead for two more windows: no second alert may come
    assert len(alerts(bot, victim)) == 1
    processes[victim] = start_sample_service(victim)
    reply = bot.said(
        lambda c: "Resolved" in c.text and c.args.get("thread_ts"), method="chat.postMessage", timeout=WINDOW + 5
    )
    assert reply.args["thread_ts"] == alert.answer["ts"]  # in the alert's thread
    bot.said(lambda c: "Resolved" in c.text, method="chat.update")
    bot.command("/upstream", "alerts")
    bot.said(lambda c: "0 open incident(s)" in c.text, method="chat.postEphemeral")


def test_a_drained_node_that_dies_is_not_alerted(watched: Watched) -> None:
    bot, ports, processes, beat = watched
    quiet = ports[1]
    bot.command("/drain", f"127.0.0.1:{quiet}")
    asked = bot.said(lambda c: "Drain" in c.text, method="chat.postEphemeral")
    bot.press("confirm", confirm_key(asked))
    bot.said(lambda c: f"Drain 127.0.0.1:{quiet}" in c.text, method="chat.postMessage")
    os.kill(processes[quiet].pid, signal.SIGKILL)
    processes[quiet].wait(5)
    beat.wait_probes(rounds(2 * WINDOW + 2 * INTERVAL))  # long enough for an alert to come; none may
    assert alerts(bot, quiet) == []


def test_the_alerts_buttons_drain_silence_and_acknowledge(watched: Watched) -> None:
    bot, ports, processes, _ = watched
    victim = ports[2]
    os.kill(processes[victim].pid, signal.SIGKILL)
    processes[victim].wait(5)
    alert = bot.said(
        lambda c: "watch_drain" in json.dumps(c.args.get("blocks")), method="chat.postMessage", timeout=WINDOW + 5
    )
    bot.press("watch_ack", confirm_key(alert, "watch_ack"), user="U2BOB")
    bot.said(lambda c: "Acknowledged by <@U2BOB>" in c.text and c.args.get("thread_ts"), method="chat.postMessage")
    bot.press("watch_drain", confirm_key(alert, "watch_drain"), user="U2BOB")
    asked = bot.said(
        lambda c: c.args.get("user") == "U2BOB" and "2 of 3 will be serving" in c.text, method="chat.postEphemeral"
    )
    bot.press("confirm", confirm_key(asked), user="U2BOB")
    bot.said(lambda c: f"Drain 127.0.0.1:{victim}" in c.text, method="chat.postMessage")
    # Drained on purpose: the incident is closed in its thread, saying by whom.
    bot.said(
        lambda c: "Resolved" in c.text and "drained by U2BOB" in c.text, method="chat.postMessage", timeout=WINDOW + 5
    )


def test_watch_off_asks_is_announced_and_means_no_alert(watched: Watched) -> None:
    bot, ports, processes, beat = watched
    bot.command("/upstream", 'watch app off --reason "maintenance"')
    asked = bot.said(lambda c: "Turn the health watch of app OFF?" in c.text, method="chat.postEphemeral")
    assert "maintenance" in asked.text and asked.args["user"] == "U1ALICE"
    bot.press("confirm", confirm_key(asked))
    announced = bot.said(lambda c: "turned OFF by <@U1ALICE>" in c.text, method="chat.postMessage")
    assert announced.args["channel"] == "C0DEPLOY" and "maintenance" in announced.text
    bot.command("/upstream", "alerts")
    bot.said(lambda c: "watch off for: app" in c.text, method="chat.postEphemeral")
    os.kill(processes[ports[0]].pid, signal.SIGKILL)
    processes[ports[0]].wait(5)
    beat.wait_probes(rounds(WINDOW + 3 * INTERVAL))  # an alert would have come by now; none may
    assert alerts(bot, ports[0]) == []
    bot.command("/upstream", "watch app on")
    bot.said(lambda c: "Health watch of app turned on by <@U1ALICE>" in c.text, method="chat.postMessage")
    bot.said(
        lambda c: "watch_silence" in json.dumps(c.args.get("blocks")), method="chat.postMessage", timeout=WINDOW + 5
    )
