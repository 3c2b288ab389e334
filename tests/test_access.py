"""Who may change what, and the audit history, through the command service with real parts: the Consul
stand-in over HTTP (the history is stored there), sample services as processes, the real probe client.
The Slack side (channels, buttons, user groups) is tested through the HTTP endpoint in test_slack_access."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from bot.consul.history import ConsulHistory
from bot.consul.store import ConsulStore
from bot.health.prober import HttpProber
from bot.nginx.status import HttpNginxReader
from commands.access import AccessPolicy
from commands.events import Announcement, ConfirmationNeeded, HistoryReport, Problem, StatusReport, WatchOffRequested
from commands.grammar import parse_line
from commands.service import CommandService, Outcome
from commands.settings import AppSettings, HealthSettings, NginxSettings
from tests.conftest import Consul
from tests.fakes import FakeClock
from tests.helpers import RecordingNotifier


class Groups:
    """A directory whose user groups a test can change between a question and its press."""

    def __init__(self, groups: dict[str, set[str]]) -> None:
        self.groups = groups

    async def is_member(self, user: str, ids: tuple[str, ...]) -> bool:
        return user in ids or any(user in self.groups.get(i, set()) for i in ids)


def settings(
    name: str = "app", operators: tuple[str, ...] | None = None, networks: tuple[str, ...] = ()
) -> AppSettings:
    return AppSettings(
        name,
        name,
        NginxSettings(),
        HealthSettings(url="http://{host}:{port}/ping", timeout=2.0),
        operators=operators,
        networks=networks,
    )


Build = Callable[..., tuple[CommandService, io.StringIO]]


@pytest.fixture
async def build(consul: Consul) -> AsyncIterator[Build]:
    async with httpx.AsyncClient(trust_env=False) as client:

        def make(
            *apps: AppSettings, operators: tuple[str, ...] = ("S0OPS",), groups: Groups | None = None, keep: int = 1000
        ) -> tuple[CommandService, io.StringIO]:
            by_name = {a.name: a for a in apps} or {"app": settings()}
            store = ConsulStore((consul.url,))
            policy = AccessPolicy(by_name, operators, None, groups or Groups({"S0OPS": {"U3OPS"}}))
            echo = io.StringIO()
            history = ConsulHistory(store, keep, echo)
            prober, nginx = HttpProber(client), HttpNginxReader(by_name, client)
            return CommandService(by_name, store, prober, nginx, FakeClock(), policy=policy, history=history), echo

        yield make


async def ask(service: CommandService, line: str, user: str) -> tuple[Outcome, RecordingNotifier]:
    notifier = RecordingNotifier()
    return await service.handle(parse_line(line), user, notifier), notifier


def down(consul: Consul, node: str) -> int:
    return int(json.loads(consul.value(f"upstreams/app/{node}") or "{}").get("down", 0))


async def test_only_operators_may_change_an_app_and_everyone_may_read(
    consul: Consul, build: Build, services: list[int]
) -> None:
    a, b = (f"127.0.0.1:{p}" for p in services[:2])
    consul.add_server("app", a)
    consul.add_server("app", b)
    service, _ = build()
    lines = (f"/drain {a}", f"/upstream add app 127.0.0.1:{services[2]}", f"/upstream remove app {a}")
    for line in (*lines, "/upstream watch app off", "/release app --version 2", f"/undrain {a} app"):
        outcome, notifier = await ask(service, line, "U9EVE")
        assert outcome is Outcome.REFUSED, line
        text = notifier.of(Problem)[0].text
        assert "only operators of app" in text and "<!subteam^S0OPS>" in text
    assert down(consul, a) == 0 and consul.value(f"upstreams/app/127.0.0.1:{services[2]}") is None
    outcome, notifier = await ask(service, "/upstream status app", "U9EVE")
    assert outcome is Outcome.DONE and notifier.of(StatusReport)
    outcome, notifier = await ask(service, f"/drain {a}", "U3OPS")  # a member of the operators' group
    assert outcome is Outcome.PENDING and notifier.of(ConfirmationNeeded)


async def test_a_press_is_checked_again_when_it_happens(consul: Consul, build: Build, services: list[int]) -> None:
    a, b = (f"127.0.0.1:{p}" for p in services[:2])
    consul.add_server("app", a)
    consul.add_server("app", b)
    groups = Groups({"S0OPS": {"U3OPS"}})
    service, _ = build(groups=groups)
    _, asked = await ask(service, f"/drain {a}", "U3OPS")
    plan = asked.of(ConfirmationNeeded)[0].plan
    groups.groups["S0OPS"] = set()  # removed from the group after asking
    pressed = RecordingNotifier()
    assert await service.confirm(plan, 1, "U3OPS", pressed) is Outcome.REFUSED
    assert down(consul, a) == 0


async def test_an_app_without_operators_refuses_changes_naming_the_key(
    consul: Consul, build: Build, services: list[int]
) -> None:
    consul.add_server("app", f"127.0.0.1:{services[0]}")
    consul.add_server("app", f"127.0.0.1:{services[1]}")
    service, _ = build(settings(), operators=())
    outcome, notifier = await ask(service, f"/drain 127.0.0.1:{services[0]}", "U3OPS")
    assert outcome is Outcome.REFUSED
    assert "apps.app.operators" in notifier.of(Problem)[0].text and "access.operators" in notifier.of(Problem)[0].text
    outcome, _ = await ask(service, f"/drain 127.0.0.1:{services[0]}", "local:ops")  # the terminal is trusted
    assert outcome is Outcome.PENDING


async def test_an_apps_own_operators_replace_the_global_list(consul: Consul, build: Build, services: list[int]) -> None:
    consul.add_server("app", f"127.0.0.1:{services[0]}")
    consul.add_server("app", f"127.0.0.1:{services[1]}")
    service, _ = build(settings(operators=("U1ALICE",)))
    assert (await ask(service, f"/drain 127.0.0.1:{services[0]}", "U3OPS"))[0] is Outcome.REFUSED
    assert (await ask(service, f"/drain 127.0.0.1:{services[0]}", "U1ALICE"))[0] is Outcome.PENDING


@pytest.fixture
def listener() -> Iterator[tuple[int, list[int]]]:
    """A TCP port that counts the connections made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(timeout=2)
    server.close()


async def test_add_outside_the_apps_networks_is_refused_before_anything_is_sent(
    consul: Consul, build: Build, listener: tuple[int, list[int]]
) -> None:
    port, accepted = listener
    consul.add_server("app", "10.0.0.5:9000")
    service, _ = build(settings(networks=("10.0.0.0/8",)))
    outcome, notifier = await ask(service, f"/upstream add app 127.0.0.1:{port}", "U3OPS")
    assert outcome is Outcome.REFUSED and "outside app's networks (10.0.0.0/8)" in notifier.of(Problem)[0].text
    assert accepted == []  # not even probed: the bot is no port scanner
    service, _ = build(settings())  # no networks: probed before the question (and the listener is no HTTP server)
    outcome, notifier = await ask(service, f"/upstream add app 127.0.0.1:{port}", "U3OPS")
    assert outcome is Outcome.REFUSED and accepted != []


async def test_turning_the_watch_off_is_confirmed_and_announced_naming_who(consul: Consul, build: Build) -> None:
    from commands.watch import WatchControl  # noqa: F401 (the protocol the fake below follows)

    class Watches:
        def __init__(self) -> None:
            self.enabled = True

        def set_enabled(self, app: str, on: bool) -> str:
            self.enabled = on
            return f"watch of {app} {'on' if on else 'off'}"

        def watch(self, app: str) -> None:
            return None

    service, _ = build()
    service.watches = Watches()  # type: ignore[assignment]
    outcome, asked = await ask(service, '/upstream watch app off --reason "noisy during migration"', "U3OPS")
    assert outcome is Outcome.PENDING and asked.of(WatchOffRequested) and service.watches.enabled  # type: ignore[attr-defined]
    done = RecordingNotifier()
    await service.set_watch("app", False, "U3OPS", "noisy during migration", done)
    assert not service.watches.enabled  # type: ignore[attr-defined]
    (said,) = done.of(Announcement)
    assert "turned OFF by <@U3OPS>" in said.text and "noisy during migration" in said.text


async def test_every_change_is_in_the_history_in_consul_and_on_stdout_and_status_says_who_drained(
    consul: Consul, build: Build, services: list[int]
) -> None:
    a, b = (f"127.0.0.1:{p}" for p in services[:2])
    consul.add_server("app", a)
    consul.add_server("app", b)
    service, echo = build()
    _, asked = await ask(service, f'/drain {a} --reason "disk full on sda"', "U3OPS")
    await service.confirm(asked.of(ConfirmationNeeded)[0].plan, 1, "U3OPS", asked)
    assert down(consul, a) == 1

    keys = [k for k in consul.standin.kv if k.startswith("upstream-bot/history/app/")]
    assert len(keys) == 1
    stored = json.loads(consul.value(keys[0]) or "{}")
    assert stored["what"] == "drain" and stored["who"] == "U3OPS" and stored["target"] == a
    assert stored["before"]["down"] == 0 and stored["after"]["down"] == 1 and stored["reason"] == "disk full on sda"
    assert stored["at"].endswith("Z") and stored["where"] == "terminal"
    line = json.loads(echo.getvalue().strip().splitlines()[-1])
    assert line["history"] == stored  # the same JSON, one line, for log shippers

    _, status = await ask(service, "/upstream status app", "U9EVE")
    (report,) = status.of(StatusReport)
    drained = next(s for s in report.servers if str(s.address) == a)
    assert drained.drained_note is not None
    assert "drained by <@U3OPS>" in drained.drained_note and "disk full on sda" in drained.drained_note

    _, asked = await ask(service, f"/undrain {a}", "U3OPS")
    await service.confirm(asked.of(ConfirmationNeeded)[0].plan, 1, "U3OPS", asked)
    _, listed = await ask(service, f"/upstream history app {a} --limit 5", "U9EVE")
    (history,) = listed.of(HistoryReport)
    assert [e.what for e in history.entries] == ["undrain", "drain"]  # newest first


async def test_the_history_keeps_at_most_keep_entries_per_app(
    consul: Consul, build: Build, services: list[int]
) -> None:
    a, b = (f"127.0.0.1:{p}" for p in services[:2])
    consul.add_server("app", a)
    consul.add_server("app", b)
    service, _ = build(keep=10)
    for i in range(12):
        verb = "/drain" if i % 2 == 0 else "/undrain"
        _, asked = await ask(service, f"{verb} {a} --reason r{i}", "U3OPS")
        await service.confirm(asked.of(ConfirmationNeeded)[0].plan, 1, "U3OPS", asked)
    keys = sorted(k for k in consul.standin.kv if k.startswith("upstream-bot/history/app/"))
    assert len(keys) == 10
    kept = [json.loads(consul.value(k) or "{}")["reason"] for k in keys]
    assert kept == [f"r{i}" for i in range(2, 12)]  # the two oldest were pruned


async def test_an_approval_needs_the_requester_to_still_be_an_operator(consul: Consul, build: Build) -> None:
    from commands.release_plan import ReleasePlan

    groups = Groups({"S0OPS": {"U3OPS"}})
    service, _ = build(settings(), groups=groups)
    service.apps["app"] = AppSettings(
        "app", "app", approvers=("U2BOB",), approval="required", operators=("S0OPS",)
    )
    plan = ReleasePlan("app", "U3OPS", "2", "serial", (), ("stop",), approval_required=True)
    groups.groups["S0OPS"] = set()  # the requester left the operators after asking
    notifier = RecordingNotifier()
    assert await service.approve_release(plan, "U2BOB", notifier) is Outcome.REFUSED
    assert "only operators of app" in notifier.of(Problem)[0].text


def test_a_history_entry_that_is_not_what_it_claims_is_refused() -> None:
    from commands.history import HistoryEntry

    good = {"app": "app", "what": "drain", "who": "U1", "where": "C1", "target": "10.0.0.1:9000"}
    assert HistoryEntry.from_json(good).target == "10.0.0.1:9000"
    for bad in ({**good, "target": ["x"]}, {**good, "who": 7}, {**good, "before": "x"}, {**good, "force": "yes"}):
        with pytest.raises(ValueError):
            HistoryEntry.from_json(bad)
