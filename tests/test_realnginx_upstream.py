"""`/upstream add`, `/upstream remove` and `/upstream status` against the production stack: nginx built with
nginx-upsync-module and nginx_upstream_check_module (tests/realnginx.py, 2 workers), its upstream read
live from the Consul stand-in, under constant load without keep-alive and with `proxy_next_upstream off`
(wrk's short POSTs and slow uploads that stay in flight at a backend for about a second).

- add and remove fail no request (remove drains, waits for nginx, then deletes);
- `/upstream status` reads the real upstream_show and check_status (JSON and CSV), including the JSON's
  trailing comma after a peer is deleted, and flags a node that is stopped but still serving in Consul.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.nginx.status import parse_check_status_csv, parse_check_status_json, parse_upstream_show
from bot.processes import free_port, start_sample_service, stop_sample_service
from tests.conftest import Consul
from tests.helpers import wait_until
from tests.nginx_harness import real_nginx
from tests.test_release_e2e import Load, Stack

FORMATS = ("json", "csv")


@pytest.fixture
def stack(tmp_path: Path, consul: Consul) -> Iterator[Stack]:
    ports = sorted(free_port() for _ in range(4))  # three in the upstream, one to add
    for port in ports:
        start_sample_service(port, state_dir=tmp_path)
    for port in ports[:3]:
        consul.add_server("app", f"127.0.0.1:{port}")
    try:
        nginx, link = real_nginx(tmp_path / "nginx", consul.url, {f"127.0.0.1:{p}": False for p in ports[:3]})
    except BaseException:
        for port in ports:
            stop_sample_service(port, tmp_path)
        raise
    try:
        yield Stack(tmp_path, consul, nginx, link, ports)
    finally:
        link.stop()
        nginx.stop()
        for port in ports:
            stop_sample_service(port, tmp_path)


def config(stack: Stack, fmt: str = "json") -> Path:
    path = stack.folder / f"upstream-bot-{fmt}.yml"
    path.write_text(
        "apps:\n  app:\n"
        f"    nginx:\n      list_url: {stack.nginx.url}/upstream_list\n"
        f"      status_url: {stack.nginx.url}/upstream_status?format={fmt}\n      upsync_interval: 500ms\n"
        "    health:\n      url: http://{host}:{port}/ping\n      interval: 500ms\n      timeout: 500ms\n"
        "      window: 15s\n      rise: 2\n"
        "    release:\n      drain_wait: 1s\n"
    )
    return path


def run(stack: Stack, line: str, fmt: str = "json") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UPSTREAM_BOT_CONFIG": str(config(stack, fmt)), "CONSUL_HTTP_ADDR": stack.consul.url}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "run", line, "--yes"], capture_output=True, text=True, env=env, timeout=60
    )


def routed(stack: Stack) -> dict[str, bool]:
    """address -> routed (not `down`) in upstream_show, as the worker that answered has it."""
    text = httpx.get(f"{stack.nginx.url}/upstream_list?app", timeout=5, trust_env=False).text
    return {a: not down for a, down in parse_upstream_show(text, "app").items()}


def every_worker_routes(stack: Stack, expected: dict[str, bool]) -> bool:
    """upstream_show answers from one worker a request: several looks in a row, each as expected."""
    return all(routed(stack) == expected for _ in range(6))


def test_upstream_add_and_remove_under_load_fail_no_request(stack: Stack) -> None:
    old = [f"127.0.0.1:{p}" for p in stack.ports[:3]]
    new = f"127.0.0.1:{stack.ports[3]}"
    load = Load(stack)
    time.sleep(1)  # steady load first
    added = run(stack, f"/upstream add app {new}")
    assert added.returncode == 0, added.stdout + added.stderr
    wait_until(lambda: every_worker_routes(stack, {**{a: True for a in old}, new: True}), 10, "nginx routing to it")
    removed = run(stack, f"/upstream remove app {old[0]}")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    wait_until(lambda: old[0] not in routed(stack), 10, "nginx no longer listing the removed server")
    # The removed node is stopped at once: a request nginx still sent it would fail.
    stop_sample_service(stack.ports[0], stack.folder)
    time.sleep(1)  # load on the servers left
    counts = load.finish()
    print(f"add and remove: {counts}")
    assert stack.consul.value(f"upstreams/app/{old[0]}") is None
    assert json.loads(stack.consul.value(f"upstreams/app/{new}") or "{}").get("down") == 0
    assert counts.requests > 1000 and counts.slow_requests > 50, counts
    assert counts.failures == 0 and counts.slow_failures == 0, counts


def check_json(stack: Stack, query: str = "") -> str:
    return httpx.get(f"{stack.nginx.url}/upstream_status?format=json{query}", timeout=5, trust_env=False).text


def check_csv(stack: Stack) -> str:
    return httpx.get(f"{stack.nginx.url}/upstream_status?format=csv", timeout=5, trust_env=False).text


def test_the_real_reports_parse_with_the_trailing_comma_a_deleted_last_peer_leaves(stack: Stack) -> None:
    nodes = [f"127.0.0.1:{p}" for p in stack.ports[:3]]
    wait_until(lambda: parse_check_status_csv(check_csv(stack), "app") == dict.fromkeys(nodes, "up"), 10, "all up")
    text = check_json(stack)
    assert parse_check_status_json(text, "app") == dict.fromkeys(nodes, "up")
    json.loads(text)  # well-formed while no peer was deleted
    # Delete the peer in the check module's last slot: the JSON then ends in `},\n  ]` (the module skips
    # deleted slots after writing the comma), which json.loads rejects and the parser must take.
    last = max(json.loads(text)["servers"]["server"], key=lambda s: s["index"])["name"]
    left = [n for n in nodes if n != last]
    assert httpx.delete(f"{stack.consul.url}/v1/kv/upstreams/app/{last}", trust_env=False).json() is True
    wait_until(lambda: every_worker_routes(stack, dict.fromkeys(left, True)), 10, "the peer deleted in upstream_show")
    # The check module drops the slot a moment later, each worker from its shared table: several looks.
    wait_until(
        lambda: all(last not in check_json(stack) and last not in check_csv(stack) for _ in range(6)),
        10,
        "the peer gone from check_status",
    )
    text = check_json(stack)
    print(text)
    assert text.replace(" ", "").replace("\n", "").endswith("},]}}"), text
    with pytest.raises(ValueError):
        json.loads(text)
    assert parse_check_status_json(text, "app") == dict.fromkeys(left, "up")
    assert parse_check_status_csv(check_csv(stack), "app") == dict.fromkeys(left, "up")


@pytest.mark.parametrize("fmt", FORMATS)
def test_status_flags_a_stopped_node_consul_still_serves(stack: Stack, fmt: str) -> None:
    nodes = [f"127.0.0.1:{p}" for p in stack.ports[:3]]
    status = f"{stack.nginx.url}/upstream_status?format={fmt}"
    parse = parse_check_status_json if fmt == "json" else parse_check_status_csv
    wait_until(lambda: parse(httpx.get(status).text, "app") == dict.fromkeys(nodes, "up"), 10, "every node up")
    healthy = run(stack, "/upstream status app", fmt)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    print(healthy.stdout)
    assert "3 of 3 serving" in healthy.stdout and "nginx check: down" not in healthy.stdout
    stop_sample_service(stack.ports[1], stack.folder)  # stopped without a drain: Consul still serves it
    wait_until(lambda: parse(httpx.get(status).text, "app").get(nodes[1]) == "down", 10, "nginx's check down")
    report = run(stack, "/upstream status app", fmt)
    print(report.stdout)
    assert "down in nginx's check" in report.stdout, report.stdout
    assert "Consul: serving, nginx check: down" in report.stdout, report.stdout


# Values whose reading is a surprise, each written as text (some are not what json.dumps would write).
ODD_VALUES = [
    '{"down":"true"}',
    '{"down":"1.0"}',
    '{"down":2}',
    '{"down":-1}',
    '{"down":true}',
    '{"down":"01"}',
    '{"down":1.7}',
    '{"weight":"2.7","down":0}',
    '{"weight":2.7,"down":0}',
    '{"max_fails":-3,"fail_timeout":"30s","down":0}',
    '{"weight":1,"down":0,"down":1}',
    '{"DOWN":1,"down":0}',
    '{"down":1,"x":NaN}',
    '{"down":1} trailing words',
]


def shown(stack: Stack, address: str) -> str | None:
    """The server's line in upstream_show, from the worker that answered: `weight=.. max_fails=.. ...`."""
    text = httpx.get(f"{stack.nginx.url}/upstream_list?app", timeout=5, trust_env=False).text
    line = next((line for line in text.splitlines() if f"server {address} " in line), None)
    return None if line is None else line.strip().removeprefix(f"server {address} ").rstrip(";")


def test_the_bot_reads_every_value_as_nginx_does(stack: Stack) -> None:
    """Issue 11: measured on the real module, the bot's reading (weight, max_fails, fail_timeout, down) of
    each odd value is what nginx shows for it in upstream_show."""
    from commands.addresses import ServerAddress
    from commands.servers import ServerEntry

    address = f"127.0.0.1:{stack.ports[3]}"  # not in the upstream yet: each value adds or changes it
    for value in ODD_VALUES:
        entry = ServerEntry.from_kv(ServerAddress.parse(address), value.encode(), 1)
        expected = (
            f"weight={entry.weight} max_fails={entry.max_fails} fail_timeout={entry.fail_timeout}s"
            + (" down" if entry.drained else "")
        )
        # Over HTTP, as any Consul client writes (the blocking queries upsync waits in are answered).
        written = httpx.put(f"{stack.consul.url}/v1/kv/upstreams/app/{address}", content=value, trust_env=False)
        assert written.json() is True
        # Several looks in a row (one worker answers each): every worker shows what the bot reads.
        def agreed(expected: str = expected) -> bool:
            return all(shown(stack, address) == expected for _ in range(6))

        try:
            wait_until(agreed, 5, f"nginx showing {expected!r} for {value}")
        except AssertionError:
            actual = shown(stack, address)
            raise AssertionError(f"{value}: the bot reads {expected!r}, nginx shows {actual!r}") from None
