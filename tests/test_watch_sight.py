"""The health watch when it cannot see: `serve --http` watching an app through the real nginx's
check module (`health.source: nginx`), the nginx then stopped and started again.

Reproduced before: while nginx's status page could not be read, the open incident of a dead node
resolved ("healthy again") and was alerted again a round later, over and over. Now an unreadable source
is unknown: nothing resolves, and once it lasts the window one alert says the watch cannot see the app
(and why); its recovery goes in that alert's thread. After nginx starts again its check module shows
servers it has not checked yet as "up" (rise and fall 0): that is not a recovery either.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.nginx.status import parse_check_status_json
from bot.processes import free_port, start_sample_service, stop_sample_service
from bot.standins.server_thread import ServerThread
from bot.standins.slack import Call, SlackStandIn
from tests.conftest import Consul
from tests.helpers import wait_until
from tests.nginx_harness import real_nginx
from tests.realnginx import RealNginx
from tests.slack_bot import serve_process

WINDOW = 3.0


def checks(nginx: RealNginx) -> dict[str, str]:
    try:
        text = httpx.get(f"{nginx.url}/upstream_status?format=json", timeout=2, trust_env=False).text
    except httpx.HTTPError:
        return {}
    return parse_check_status_json(text, "app")


def posted(slack: SlackStandIn, *words: str) -> list[Call]:
    return [
        c for c in slack.calls() if c.method == "chat.postMessage" and not c.fault and all(w in c.text for w in words)
    ]


def alerts(slack: SlackStandIn, node: str) -> list[Call]:
    """Alerts (they carry the alert buttons) naming the node."""
    return [c for c in posted(slack, node) if "watch_silence" in json.dumps(c.args.get("blocks"))]


@pytest.fixture
def slack() -> Iterator[tuple[SlackStandIn, str]]:
    standin = SlackStandIn()
    server = ServerThread(standin.app()).start()
    yield standin, server.url
    standin.clear_faults()
    server.stop()


def test_an_unreadable_nginx_never_resolves_an_incident_and_is_alerted_once(
    tmp_path: Path, consul: Consul, slack: tuple[SlackStandIn, str]
) -> None:
    slack_standin, slack_url = slack
    ports = sorted(free_port() for _ in range(2))
    nodes = [f"127.0.0.1:{p}" for p in ports]
    for port in ports:
        start_sample_service(port, state_dir=tmp_path)
        consul.add_server("app", f"127.0.0.1:{port}")
    nginx, link = real_nginx(tmp_path / "nginx", consul.url, dict.fromkeys(nodes, False))
    config = (
        "slack:\n  channel: C0DEPLOY\naccess:\n  operators: [U1ALICE]\n"
        "apps:\n  app:\n    approvers: [U2BOB]\n"
        f"    nginx:\n      status_url: {nginx.url}/upstream_status?format=json\n"
        f"    health:\n      source: nginx\n      interval: 500ms\n      timeout: 500ms\n"
        f"      window: {WINDOW:g}s\n      rise: 2\n"
    )
    try:
        with serve_process(tmp_path, config, consul.url, slack_url):
            wait_until(lambda: checks(nginx) == dict.fromkeys(nodes, "up"), 15, "nginx checks both nodes up")
            dead = nodes[0]
            stop_sample_service(ports[0], tmp_path)
            alert = slack_standin.wait_for(
                lambda c: dead in c.text and "nginx's check" in c.text, timeout=WINDOW + 10, method="chat.postMessage"
            )

            nginx.stop()  # its status page cannot be read now
            blind = slack_standin.wait_for(
                lambda c: "cannot see" in c.text, timeout=WINDOW + 10, method="chat.postMessage"
            )
            assert "app" in blind.text and "unreadable" in blind.text, blind.text
            # A window of unreadable rounds went by: not one said the dead node was healthy again.
            assert posted(slack_standin, "Resolved", dead) == [] and posted(slack_standin, "resolved", dead) == []
            assert len(posted(slack_standin, "cannot see")) == 1

            nginx.start(dict.fromkeys(nodes, False))
            # Its recovery, in the blind alert's thread.
            slack_standin.wait_for(
                lambda c: c.args.get("thread_ts") == blind.answer.get("ts") and "again" in c.text,
                timeout=WINDOW + 10,
                method="chat.postMessage",
            )
            # nginx shows both "up" until it has checked them: the dead node is not resolved for it.
            wait_until(lambda: checks(nginx).get(dead) == "down", 15, "nginx's check finds the node down again")
            revived_at = time.time()
            start_sample_service(ports[0], state_dir=tmp_path)
            resolved = slack_standin.wait_for(
                lambda c: c.args.get("thread_ts") == alert.answer.get("ts") and dead in c.text,
                timeout=WINDOW + 15,
                method="chat.postMessage",
            )
            assert resolved.at >= revived_at, "the node was said healthy before it was started again"
            assert len(alerts(slack_standin, dead)) == 1, "the dead node was alerted more than once"
    finally:
        link.stop()
        nginx.stop()
        for port in ports:
            stop_sample_service(port, tmp_path)


def test_consul_down_for_the_window_is_one_alert_from_two_replicas_and_its_recovery_is_threaded(
    tmp_path: Path, consul: Consul, slack: tuple[SlackStandIn, str]
) -> None:
    """Consul answering 500 to everything: the leader loses the watch lock within the session's TTL and
    nobody can take it; the replica that led says once that the watch cannot see the app, the other
    says nothing; when Consul is back the recovery goes in that alert's thread."""
    slack_standin, slack_url = slack
    port = free_port()
    start_sample_service(port, state_dir=tmp_path)
    consul.add_server("app", f"127.0.0.1:{port}")
    config = (
        "slack:\n  channel: C0DEPLOY\nconsul:\n  session_ttl: 10s\n"
        "apps:\n  app:\n    health:\n      url: http://{host}:{port}/ping\n      interval: 500ms\n"
        f"      timeout: 500ms\n      window: {WINDOW:g}s\n      rise: 2\n"
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    try:
        with (
            serve_process(tmp_path / "a", config, consul.url, slack_url),
            serve_process(tmp_path / "b", config, consul.url, slack_url),
        ):
            wait_until(lambda: consul.value("upstream-bot/locks/watch") is not None, 15, "a replica leads the watch")
            consul.standin.faults.status = 500
            failed_at = time.time()
            blind = slack_standin.wait_for(
                lambda c: "cannot see" in c.text, timeout=WINDOW + 15, method="chat.postMessage"
            )
            assert blind.at - failed_at >= WINDOW - 0.5, "alerted before the window was over"
            assert "Consul" in blind.text and "500" in blind.text, blind.text
            # Past the session's TTL (nobody leads now) and a few windows more: still one alert.
            wait_until(lambda: time.time() - failed_at > 10 + 2 * WINDOW, 30, "the TTL and two windows")
            assert len(posted(slack_standin, "cannot see")) == 1
            consul.standin.faults.status = 0
            slack_standin.wait_for(
                lambda c: c.args.get("thread_ts") == blind.answer.get("ts") and "again" in c.text,
                timeout=WINDOW + 15,
                method="chat.postMessage",
            )
            assert len(posted(slack_standin, "cannot see")) == 1
    finally:
        consul.standin.faults.status = 0
        stop_sample_service(port, tmp_path)
