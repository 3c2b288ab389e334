"""Writes whose answer is lost, through the command service and the real Consul adapter: the key is read
back and the person is told what Consul holds, never "nothing was changed" when it was, never "someone
else changed it" when the change was ours. The Consul stand-in commits and then answers late (or not at
all); the adapter has two addresses for the same Consul, so a blind retry on the second would show."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from bot.consul.store import ConsulStore
from bot.health.prober import HttpProber
from bot.nginx.status import HttpNginxReader
from commands.access import AccessPolicy
from commands.events import ChangeApplied, ConfirmationNeeded
from commands.grammar import parse_line
from commands.history import MemoryHistory
from commands.service import CommandService, Outcome
from commands.settings import AppSettings, HealthSettings, NginxSettings
from tests.conftest import Consul
from tests.fakes import FakeClock
from tests.helpers import RecordingNotifier

Build = Callable[..., CommandService]


def app(name: str) -> AppSettings:
    return AppSettings(name, name, NginxSettings(), HealthSettings(url="http://{host}:{port}/ping", timeout=2.0))


@pytest.fixture
async def service_for(consul: Consul) -> AsyncIterator[Build]:
    port = consul.url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(trust_env=False) as client:

        def build(*names: str) -> CommandService:
            apps = {n: app(n) for n in names or ("app",)}
            store = ConsulStore((f"http://127.0.0.1:{port}", f"http://localhost:{port}"), timeout=0.5)
            return CommandService(
                apps,
                store,
                HttpProber(client),
                HttpNginxReader(apps, client),
                FakeClock(),
                policy=AccessPolicy(apps, operators=("U1ALICE",)),
                history=MemoryHistory(),
            )

        yield build


def down(consul: Consul, node: str, upstream: str = "app") -> int:
    return int(json.loads(consul.value(f"upstreams/{upstream}/{node}") or "{}").get("down", 0))


async def confirmed(service: CommandService, line: str) -> ChangeApplied:
    asked = RecordingNotifier()
    assert await service.handle(parse_line(line), "U1ALICE", asked) is Outcome.PENDING
    (question,) = asked.of(ConfirmationNeeded)
    done = RecordingNotifier()
    await service.confirm(question.plan, 1, "U1ALICE", done)
    (applied,) = done.of(ChangeApplied)
    return applied


async def test_an_undrain_committed_but_answered_late_is_reported_applied(
    consul: Consul, service_for: Build, services: list[int]
) -> None:
    a, b = (f"127.0.0.1:{p}" for p in services[:2])
    consul.add_server("app", a, down=1)
    consul.add_server("app", b)
    service = service_for()
    notifier = RecordingNotifier()
    assert await service.handle(parse_line(f"/undrain {a}"), "U1ALICE", notifier) is Outcome.PENDING
    consul.standin.faults.late_writes = 2.0  # commits, then answers after the client gave up (0.5 s)
    try:
        outcome = await service.confirm(notifier.of(ConfirmationNeeded)[0].plan, 1, "U1ALICE", notifier)
    finally:
        consul.standin.faults.late_writes = 0.0
    (applied,) = notifier.of(ChangeApplied)
    assert outcome is Outcome.DONE and applied.ok
    assert "answer was lost" in applied.results[0].detail
    assert "changed since you asked" not in applied.results[0].detail
    assert down(consul, a) == 0
    assert consul.standin.write_requests == 1  # one write over HTTP: no retry on the other address


async def test_a_drain_whose_connection_drops_after_the_commit_is_reported_applied(
    consul: Consul, service_for: Build, services: list[int]
) -> None:
    a, b = (f"127.0.0.1:{p}" for p in services[:2])
    consul.add_server("app", a)
    consul.add_server("app", b)
    service = service_for()
    asked = RecordingNotifier()
    await service.handle(parse_line(f"/drain {a}"), "U1ALICE", asked)
    (question,) = asked.of(ConfirmationNeeded)
    consul.standin.faults.drop_writes = True
    try:
        done = RecordingNotifier()
        await service.confirm(question.plan, 1, "U1ALICE", done)
    finally:
        consul.standin.faults.drop_writes = False
    (applied,) = done.of(ChangeApplied)
    assert applied.ok and "answer was lost" in applied.results[0].detail
    assert down(consul, a) == 1


async def test_a_drain_over_two_upstreams_that_fails_part_way_says_which_changed(
    consul: Consul, service_for: Build, services: list[int]
) -> None:
    a, b = (f"127.0.0.1:{p}" for p in services[:2])
    for upstream in ("app", "web"):
        consul.add_server(upstream, a)
        consul.add_server(upstream, b)
    service = service_for("app", "web")
    asked = RecordingNotifier()
    await service.handle(parse_line(f"/drain {a}"), "U1ALICE", asked)
    (question,) = asked.of(ConfirmationNeeded)
    # The first upstream's write lands; then Consul refuses everything (as a 500 with no leader would,
    # past the retry budget): the second upstream is not changed, and the answer says so for each.
    original_write = service.store.write
    calls = {"n": 0}

    async def write_then_fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            consul.standin.faults.status = 429
            consul.standin.faults.body = "Too Many Requests"
        return await original_write(*args, **kwargs)

    service.store.write = write_then_fail  # type: ignore[method-assign]
    try:
        done = RecordingNotifier()
        await service.confirm(question.plan, 1, "U1ALICE", done)
    finally:
        consul.standin.faults.status = 0
    (applied,) = done.of(ChangeApplied)
    by_app = {r.change.app: r for r in applied.results}
    assert by_app["app"].ok and down(consul, a, "app") == 1
    assert not by_app["web"].ok and down(consul, a, "web") == 0
    assert "429" in by_app["web"].detail
    assert not applied.ok
