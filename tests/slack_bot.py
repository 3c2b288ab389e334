"""`upstream-bot serve --http` as a real process, with the Consul and Slack stand-ins, for Slack tests;
and `FakeNode`, a node for it to probe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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

    def reset(self, *servers: str) -> Bot:
        """A clean slate for a test on a shared bot: no recorded Slack calls, an empty KV, and `servers`
        (default two) serving in app."""
        self.slack.clear()
        for key in list(self.consul.standin.kv):
            self.consul.server.call(self.consul.standin.kv.pop, key)
        for server in servers or ("127.0.0.1:9001", "127.0.0.1:9002"):
            self.consul.add_server("app", server)
        return self

    def down(self, address: str, upstream: str = "app") -> int:
        """The server's `down` as Consul holds it (0 when absent)."""
        return int(json.loads(self.consul.value(f"upstreams/{upstream}/{address}") or "{}").get("down", 0))

    def post(self, body: str, headers: dict[str, str] | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded", **(sign(body) if headers is None else headers)}
        return httpx.post(f"{self.url}/slack/events", content=body, headers=headers, timeout=10)

    def command(self, command: str, text: str, user: str = "U1ALICE", **kw: str) -> httpx.Response:
        url = f"{self.slack_url}/response/{time.monotonic_ns()}"
        return self.post(command_body(command, text, user=user, response_url=url, **kw))

    def press(self, action_id: str, value: str, user: str = "U1ALICE", channel: str = "C0DEPLOY") -> httpx.Response:
        url = f"{self.slack_url}/response/press"
        return self.post(action_body(action_id, value, user=user, channel=channel, response_url=url))

    def submit(self, view: dict[str, Any], values: dict[str, str], user: str = "U1ALICE") -> httpx.Response:
        """Submit a modal the bot opened (`view` as it was sent to views.open), with `values` typed into
        its inputs (block_id -> text), as Slack's view_submission payload."""
        state = {
            block["block_id"]: {block["element"]["action_id"]: {"type": "plain_text_input", "value": text}}
            for block in view["blocks"]
            if block["type"] == "input"
            for text in [values.get(block["block_id"])]
        }
        payload = {
            "type": "view_submission",
            "team": {"id": "T0STANDIN", "domain": "standin"},
            "user": {"id": user, "username": user.lower(), "team_id": "T0STANDIN"},
            "api_app_id": "A0BOT",
            "token": "legacy",
            "trigger_id": f"trigger-{time.monotonic_ns()}",
            "view": {**view, "id": "V0STANDIN", "state": {"values": state}},
        }
        return self.post(urlencode({"payload": json.dumps(payload)}))

    def keys(self, prefix: str = "") -> list[str]:
        """The Consul stand-in's keys under `prefix`, read on its own loop (no race with its writes)."""
        return sorted(k for k in self.consul.server.call(lambda: list(self.consul.standin.kv)) if k.startswith(prefix))

    def history(self, app: str) -> list[dict[str, Any]]:
        """The audit entries the bot stored in Consul for `app`, oldest first (their keys sort by time)."""
        return [json.loads(self.consul.value(k) or "{}") for k in self.keys(f"upstream-bot/history/{app}/")]

    def said(self, predicate: Callable[[Call], object], method: str | None = None, timeout: float = 10.0) -> Call:
        return self.slack.wait_for(predicate, timeout=timeout, method=method)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_bot(
    folder: Path,
    config_text: str,
    env: dict[str, str] | None = None,
    seed: Callable[[Consul], object] | None = None,
) -> Iterator[Bot]:
    """The bot as a process; `env` adds to its environment (SLACK_API_TIMEOUT, say); `seed` fills Consul
    before the bot starts (what its first health-watch round must see)."""
    consul = Consul()
    if seed is not None:
        seed(consul)
    slack = SlackStandIn(usergroups={"S0OPS": ["U3OPS"]})
    slack_server = ServerThread(slack.app()).start()
    try:
        with serve_process(folder, config_text, consul.url, slack_server.url, env) as url:
            yield Bot(url, consul, slack, slack_server.url)
    finally:
        slack.clear_faults()  # ends any request hanging in the stand-in, so its server stops at once
        slack_server.stop()
        consul.stop()


@contextmanager
def serve_process(
    folder: Path, config_text: str, consul_url: str, slack_url: str, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`upstream-bot serve --http` as a process on a free port, with the stand-ins' addresses; its URL.
    Its log (less the scheduler's lines) is printed at the end: pytest shows it when a test failed."""
    with served(folder, config_text, consul_url, slack_url, env) as running:
        yield running.url


@dataclass(frozen=True)
class Served:
    url: str
    process: subprocess.Popen[bytes]  # for a test that kills it (SIGKILL) as a crash would


@contextmanager
def served(
    folder: Path, config_text: str, consul_url: str, slack_url: str, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """`serve_process`, also giving the process itself."""
    config = folder / "upstream-bot.yml"
    config.write_text(config_text)
    port = free_port()
    environment = {
        **os.environ,
        "UPSTREAM_BOT_CONFIG": str(config),
        "CONSUL_HTTP_ADDR": consul_url,
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": f"{slack_url}/api/",
        **(env or {}),
    }
    log_path = folder / "bot.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "--log-level", "INFO", "serve", "--http", "--port", str(port)],
        env=environment,
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
        yield Served(f"http://127.0.0.1:{port}", process)
    finally:
        stop([process])  # type: ignore[list-item]
        log.close()
        lines = [line for line in log_path.read_text().splitlines() if "apscheduler" not in line]
        print("\n".join(lines)[-8000:])


def confirm_key(call: Call, action_id: str = "confirm") -> str:
    for block in call.args["blocks"]:
        for element in block.get("elements", []):
            if element.get("action_id") == action_id:
                return str(element["value"])
    raise AssertionError(f"no {action_id} button in {call.args}")


class FakeNode:
    """A node the bot probes, served from the test's own process.

    It counts the probes it gets: the health watch probes every serving node once a round, so the count
    is the watch's clock, a positive signal that rounds happened (instead of sleeping). It answers with
    the status and reason phrase it is given (Python's http.server sends any reason phrase, hostile ones
    too), or with `broken` once the file `broken_by` exists (a release step can create it).
    """

    def __init__(
        self,
        status: int = 200,
        reason: str = "OK",
        broken_by: Path | None = None,
        broken: tuple[int, str] = (503, "Service Unavailable"),
    ) -> None:
        self.answer = (status, reason)
        self.broken_by = broken_by
        self.broken = broken
        self._probes = 0
        self._lock = threading.Lock()
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with node._lock:
                    node._probes += 1
                status, reason = node.broken if node.broken_by and node.broken_by.exists() else node.answer
                self.send_response(status, reason)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test's output is for its failures

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-node", daemon=True)

    def __enter__(self) -> FakeNode:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def probes(self) -> int:
        with self._lock:
            return self._probes

    def wait_probes(self, more: int, timeout: float = 30.0) -> None:
        """Until `more` probes have come in from now (bounded by `timeout`)."""
        target = self.probes + more
        wait_until(lambda: self.probes >= target, timeout=timeout, what=f"{more} more probes of {self.address}")


@contextmanager
def replica(first: Bot, folder: Path, config_text: str, env: dict[str, str] | None = None) -> Iterator[Bot]:
    """A second `upstream-bot serve --http` process beside `first` (started by `running_bot`), on the same
    Consul and Slack stand-ins: another replica, as several are run behind one Slack app."""
    with serve_process(folder, config_text, first.consul.url, first.slack_url, env) as url:
        yield Bot(url, first.consul, first.slack, first.slack_url)
