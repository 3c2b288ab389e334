"""`upstream-bot serve --http` as a real process, with the Consul and Slack stand-ins, for Slack tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bot.processes import free_port, stop
from bot.standins.server_thread import ServerThread
from bot.standins.slack import Call, SlackStandIn
from tests.conftest import Consul
from tests.helpers import SIGNING_SECRET, action_body, command_body, sign, wait_until


class Bot:
    def __init__(self, url: str, consul: Consul, slack: SlackStandIn, slack_url: str) -> None:
        self.url = url
        self.consul = consul
        self.slack = slack
        self.slack_url = slack_url

    def post(self, body: str, headers: dict[str, str] | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded", **(sign(body) if headers is None else headers)}
        return httpx.post(f"{self.url}/slack/events", content=body, headers=headers, timeout=10)

    def command(self, command: str, text: str, user: str = "U1ALICE", **kw: str) -> httpx.Response:
        url = f"{self.slack_url}/response/{time.monotonic_ns()}"
        return self.post(command_body(command, text, user=user, response_url=url, **kw))

    def press(self, action_id: str, value: str, user: str = "U1ALICE") -> httpx.Response:
        return self.post(action_body(action_id, value, user=user, response_url=f"{self.slack_url}/response/press"))

    def said(self, predicate, method: str | None = None, timeout: float = 10.0) -> Call:  # type: ignore[no-untyped-def]
        return self.slack.wait_for(predicate, timeout=timeout, method=method)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_bot(folder: Path, config_text: str, env: dict[str, str] | None = None) -> Iterator[Bot]:
    """The bot as a process; `env` adds to its environment (SLACK_API_TIMEOUT, say)."""
    consul = Consul()
    slack = SlackStandIn(usergroups={"S0OPS": ["U3OPS"]})
    slack_server = ServerThread(slack.app()).start()
    config = folder / "upstream-bot.yml"
    config.write_text(config_text)
    port = free_port()
    env = {
        **os.environ,
        "UPSTREAM_BOT_CONFIG": str(config),
        "CONSUL_HTTP_ADDR": consul.url,
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": f"{slack_server.url}/api/",
        **(env or {}),
    }
    log_path = folder / "bot.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "--log-level", "INFO", "serve", "--http", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: process.poll() is not None or answers(f"http://127.0.0.1:{port}/healthz"),
            timeout=20,
            what="the bot answering /healthz",
        )
        if process.poll() is not None:
            raise AssertionError(log_path.read_text())
        yield Bot(f"http://127.0.0.1:{port}", consul, slack, slack_server.url)
    finally:
        stop([process])  # type: ignore[list-item]
        log.close()
        # Shown by pytest when a test failed; the health watch's scheduler lines are only noise there.
        lines = [line for line in log_path.read_text().splitlines() if "apscheduler" not in line]
        print("\n".join(lines)[-8000:])
        slack.clear_faults()  # ends any request hanging in the stand-in, so its server stops at once
        slack_server.stop()
        consul.stop()


def confirm_key(call: Call, action_id: str = "confirm") -> str:
    for block in call.args["blocks"]:
        for element in block.get("elements", []):
            if element.get("action_id") == action_id:
                return str(element["value"])
    raise AssertionError(f"no {action_id} button in {call.args}")
