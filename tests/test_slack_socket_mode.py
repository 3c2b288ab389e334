"""Socket Mode end to end: `upstream-bot serve` (no `--http`) as a real process, connected to the Socket
Mode stand-in (bot/standins/socket_mode.py) through the Web API stand-in's `apps.connections.open`.

What a person would notice is checked: every command and every press is acknowledged by its envelope_id
within Slack's 3 s, the command has its effect (an answer in Slack, a drain in Consul), a command refused
for its channel is answered in the acknowledgement itself, and when Slack ends the connection (a
`disconnect` message, or the connection just dropped) the bot opens a new one (another
apps.connections.open, a new hello) and the next command is acknowledged and handled. At shutdown
(SIGTERM) the bot closes its connection and logs no error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from bot.processes import stop
from bot.standins.server_thread import ServerThread
from bot.standins.slack import SlackStandIn
from bot.standins.socket_mode import Envelope, SocketModeStandIn
from tests.conftest import Consul
from tests.helpers import action_body, command_body, wait_until
from tests.slack_bot import Bot, confirm_key

ACK_WITHIN = 3.0  # Slack shows the person an error when an envelope is not acknowledged in 3 s
# A `disconnect` message is acted on at once; a dropped connection at the client's next look at it.
# Fixed, not derived from SOCKET_PING_INTERVAL: Bolt's default (a look every 10 s) must fail this.
RECONNECT_WITHIN = {"refresh_requested": 2.0, "warning": 2.0, "dropped": 8.0}
CONFIG = "slack:\n  channel: C0DEPLOY\n  channels: [C0DEPLOY]\naccess:\n  operators: [U1ALICE]\napps:\n  app: {}\n"
TROUBLE = (" ERROR ", " CRITICAL ", "Traceback", "Exception ignored", "Unclosed")  # in the bot's log


class SocketModeBot(Bot):
    """`Bot`'s readers (said, keys, history) for a bot that Slack reaches over the Socket Mode stand-in:
    commands and presses are envelopes pushed on its WebSocket, not HTTP requests."""

    def __init__(self, consul: Consul, slack: SlackStandIn, slack_url: str, socket: SocketModeStandIn) -> None:
        super().__init__("", consul, slack, slack_url)
        self.socket = socket
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path()

    def send_command(self, command: str, text: str, user: str = "U1ALICE", channel: str = "C0DEPLOY") -> Envelope:
        """A slash command as Slack sends it in Socket Mode: the same fields as over HTTP, as JSON."""
        url = f"{self.slack_url}/response/{time.monotonic_ns()}"
        payload = dict(parse_qsl(command_body(command, text, user=user, channel=channel, response_url=url)))
        return self.socket.push("slash_commands", {**payload, "is_enterprise_install": "false"})

    def send_press(self, action_id: str, value: str, user: str = "U1ALICE") -> Envelope:
        """A button press (block_actions) as Slack sends it in Socket Mode: the payload itself, not a form."""
        body = action_body(action_id, value, user=user, response_url=f"{self.slack_url}/response/press")
        return self.socket.push("interactive", json.loads(dict(parse_qsl(body))["payload"]))

    def acknowledged(self, envelope: Envelope) -> dict[str, object] | None:
        """The acknowledgement's payload, once `envelope` is acknowledged; fails unless within ACK_WITHIN."""
        ack = self.socket.wait_ack(envelope.envelope_id, timeout=ACK_WITHIN + 2)
        took = ack.at - envelope.sent_at
        assert took < ACK_WITHIN, f"{envelope.type} acknowledged after {took:.2f} s"
        return ack.payload

    def trouble(self) -> list[str]:
        """The bot's log lines so far that an operator would have to look into."""
        return [line for line in self.log.read_text().splitlines() if any(t in line for t in TROUBLE)]


@contextmanager
def socket_mode_bot(
    folder: Path, config_text: str, slack_down_until: Callable[[SlackStandIn], bool] | None = None
) -> Iterator[SocketModeBot]:
    """The stand-ins (Consul, Slack's Web API, Socket Mode) and `upstream-bot serve` connected to them.
    `slack_down_until`: Slack's Web API answers 503 from the start until this holds (checked from a thread)."""
    consul = Consul()
    socket = SocketModeStandIn()
    socket_server = ServerThread(socket.app()).start()
    socket.serve_at(socket_server.url)
    slack = SlackStandIn(socket_mode=socket.open_url)
    slack_server = ServerThread(slack.app()).start()
    bot = SocketModeBot(consul, slack, slack_server.url, socket)
    lifting = None
    if slack_down_until is not None:
        slack.set_faults(status=503)
        condition = slack_down_until

        def lift() -> None:
            wait_until(lambda: condition(slack), timeout=30, what="the bot trying Slack while it is down")
            slack.clear_faults()

        lifting = threading.Thread(target=lift, daemon=True)
        lifting.start()
    try:
        with _serving(bot, folder, config_text):
            yield bot
    finally:
        if lifting is not None:
            lifting.join(35)
        slack_server.stop()
        socket_server.stop()
        consul.stop()


@contextmanager
def _serving(bot: SocketModeBot, folder: Path, config_text: str) -> Iterator[None]:
    """`upstream-bot serve` in Socket Mode (`bot.process`), until its first connection is greeted. Its log
    (`bot.log`, less the scheduler's lines) is printed at the end: pytest shows it when a test failed.
    `serve --http` has tests/slack_bot.py's `served`; this is the same without a port to wait on."""
    config = folder / "upstream-bot.yml"
    config.write_text(config_text)
    environment = {
        **{k: v for k, v in os.environ.items() if k != "SLACK_SIGNING_SECRET"},
        "UPSTREAM_BOT_CONFIG": str(config),
        "CONSUL_HTTP_ADDR": bot.consul.url,
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_APP_TOKEN": "xapp-test",
        "SLACK_API_URL": f"{bot.slack_url}/api/",
    }
    bot.log = folder / "bot.log"
    with bot.log.open("w") as log:
        process = bot.process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "--log-level", "INFO", "serve"],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: _up_or_dead(bot.socket, process), timeout=20, what="the bot connecting")
            if process.poll() is not None:
                raise AssertionError(bot.log.read_text())
            yield
        finally:
            stop([process])
    print("\n".join(line for line in bot.log.read_text().splitlines() if "apscheduler" not in line)[-8000:])


def _up_or_dead(socket: SocketModeStandIn, process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None or any(c.hello_at for c in socket.connections())


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SocketModeBot]:
    with socket_mode_bot(tmp_path_factory.mktemp("socket-mode"), CONFIG) as running:
        yield running


@pytest.fixture
def seeded(bot: SocketModeBot) -> SocketModeBot:
    bot.reset()
    return bot


def test_a_command_is_acknowledged_and_answered(seeded: SocketModeBot) -> None:
    assert seeded.acknowledged(seeded.send_command("/upstream", "status app")) is None  # an empty ack
    call = seeded.said(lambda c: "2 of 2 serving" in c.text, method="chat.postEphemeral")
    assert call.args["user"] == "U1ALICE"


def test_a_command_from_another_channel_is_refused_in_the_acknowledgement(seeded: SocketModeBot) -> None:
    # In Socket Mode the acknowledgement's payload is what Slack shows the person: the refusal itself.
    refusal = seeded.acknowledged(seeded.send_command("/drain", "127.0.0.1:9001", channel="C0ELSEWHERE"))
    assert refusal is not None and refusal.get("response_type") == "ephemeral", refusal
    assert "C0DEPLOY" in str(refusal.get("text")), refusal


def test_a_drain_is_asked_confirmed_by_a_press_and_done(seeded: SocketModeBot) -> None:
    seeded.acknowledged(seeded.send_command("/drain", "127.0.0.1:9001"))
    asked = seeded.said(lambda c: "app: 1 of 2 will be serving" in c.text, method="chat.postEphemeral")
    assert seeded.down("127.0.0.1:9001") == 0
    seeded.acknowledged(seeded.send_press("confirm", confirm_key(asked)))
    posted = seeded.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postMessage")
    assert posted.args["channel"] == "C0DEPLOY" and "1 of 2 now serving" in posted.text
    assert seeded.down("127.0.0.1:9001") == 1
    seeded.said(lambda c: c.args.get("replace_original") and "confirmed by" in c.text, method="response_url")


@pytest.mark.parametrize("how", ["refresh_requested", "warning", "dropped"])
def test_the_bot_reconnects_when_slack_ends_the_connection(seeded: SocketModeBot, how: str) -> None:
    opened = len(seeded.slack.calls("apps.connections.open"))
    old = seeded.socket.drop() if how == "dropped" else seeded.socket.disconnect(how)
    new = seeded.socket.wait_connection(old + 1, timeout=RECONNECT_WITHIN[how] + 3)
    ended = seeded.socket.connections()[old - 1]
    told = ended.closed_at if how == "dropped" else ended.disconnect_at  # when the bot had to act
    assert told is not None and new.hello_at is not None
    took = new.hello_at - told
    assert took < RECONNECT_WITHIN[how], f"connected again {took:.2f} s after the {how}"
    # A new URL, from a new apps.connections.open with the app-level token; and the bot left the old
    # connection itself (Slack counts an app's open connections), without waiting for Slack to close it.
    calls = seeded.slack.calls("apps.connections.open")
    assert len(calls) == opened + 1 and new.ticket in calls[-1].answer["url"]
    assert calls[-1].token == "xapp-test"
    if how != "dropped":
        assert ended.closed_by == "app", ended
    wait_until(lambda: seeded.socket.open_connections() == [new.number], timeout=5, what="one open connection")

    envelope = seeded.send_command("/upstream", "status app")
    assert envelope.connection == new.number
    seeded.acknowledged(envelope)
    seeded.said(lambda c: "2 of 2 serving" in c.text, method="chat.postEphemeral")
    assert seeded.trouble() == []
    assert seeded.socket.unexpected() == []  # nothing but acknowledgements came back


def test_at_shutdown_the_bot_closes_its_connection_and_logs_no_error(tmp_path: Path) -> None:
    with socket_mode_bot(tmp_path, CONFIG) as bot:
        assert bot.process is not None
        stop([bot.process])  # SIGTERM, as systemd or a deploy ends it
        assert bot.process.returncode == 0
        closed = bot.socket.connections()[-1]
        assert closed.closed_by == "app", closed  # a close frame from the bot, not a vanished connection
        assert bot.trouble() == []


def test_an_app_token_slack_refuses_stops_serve_with_exit_2_and_says_why(tmp_path: Path) -> None:
    """A bot token where the app-level token belongs: Slack answers not_allowed_token_type. Without a
    listener nobody would notice a bot that retries for ever, so serve stops at once and says what is wrong."""
    consul = Consul()
    slack = SlackStandIn(socket_mode=lambda: "ws://127.0.0.1:9/never")
    slack_server = ServerThread(slack.app()).start()
    config = tmp_path / "upstream-bot.yml"
    config.write_text(CONFIG)
    environment = {
        **{k: v for k, v in os.environ.items() if k != "SLACK_SIGNING_SECRET"},
        "UPSTREAM_BOT_CONFIG": str(config),
        "CONSUL_HTTP_ADDR": consul.url,
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_APP_TOKEN": "xoxb-test",  # the wrong kind of token
        "SLACK_API_URL": f"{slack_server.url}/api/",
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bot.cli", "serve"], env=environment, capture_output=True, text=True, timeout=30
        )
    finally:
        slack_server.stop()
        consul.stop()
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Slack refused SLACK_APP_TOKEN (apps.connections.open: not_allowed_token_type)" in done.stderr
    assert "Traceback" not in done.stderr and len(slack.calls("apps.connections.open")) == 1  # asked once


def test_slack_down_when_serve_starts_is_waited_out_and_the_bot_then_answers(tmp_path: Path) -> None:
    """Slack's Web API answering 503 at start (auth.test and apps.connections.open alike) is not a refused
    token: serve keeps trying and connects once Slack is back; the first command is then acknowledged."""

    def tried_twice(slack: SlackStandIn) -> bool:
        return len([c for c in slack.calls("apps.connections.open") if c.fault]) >= 2

    with socket_mode_bot(tmp_path, CONFIG, slack_down_until=tried_twice) as bot:
        assert bot.process is not None and bot.process.poll() is None  # still serving, not exited 2
        opened = bot.slack.calls("apps.connections.open")
        assert [c.fault for c in opened[:2]] == ["status 503", "status 503"] and not opened[-1].fault
        bot.reset()
        envelope = bot.send_command("/upstream", "status app")
        bot.acknowledged(envelope)
        bot.said(lambda c: "2 of 2 serving" in c.text, method="chat.postEphemeral")

