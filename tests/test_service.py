"""Command logic with real parts: the Consul stand-in over HTTP, sample services as processes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest
from aiohttp import web

from bot.consul.store import ConsulStore
from bot.health.prober import HttpProber
from bot.nginx.status import HttpNginxReader
from bot.processes import free_port
from bot.standins.server_thread import ServerThread
from bot.terminal.render import server_line
from commands.access import AccessPolicy
from commands.events import ChangeApplied, ConfirmationNeeded, Notice, Problem, StatusReport
from commands.grammar import parse_line
from commands.history import MemoryHistory
from commands.service import CommandService, Outcome
from commands.settings import AppSettings, HealthSettings, NginxSettings
from tests.conftest import Consul
from tests.fakes import FakeClock, FakeNginx, FakeProber, FakeStore
from tests.helpers import RecordingNotifier


def app_settings(name: str = "app", upstream: str | None = None, nginx: NginxSettings | None = None) -> AppSettings:
    return AppSettings(
        name, upstream or name, nginx or NginxSettings(), HealthSettings(url="http://{host}:{port}/ping", timeout=2.0)
    )


@pytest.fixture
async def make_service(consul: Consul) -> AsyncIterator:
    async with httpx.AsyncClient(trust_env=False) as client:

        def build(*apps: AppSettings) -> CommandService:
            settings = {a.name: a for a in apps} or {"app": app_settings()}
            return CommandService(
                settings,
                ConsulStore((consul.url,)),
                HttpProber(client),
                HttpNginxReader(settings, client),
                FakeClock(),
                policy=AccessPolicy(settings, operators=("U1ALICE",)),
                history=MemoryHistory(),
            )

        yield build


def down(consul: Consul, address: str, upstream: str = "app") -> int:
    return json.loads(consul.value(f"upstreams/{upstream}/{address}") or "{}").get("down", 0)


async def run(service: CommandService, line: str, user: str = "U1ALICE") -> tuple[Outcome, RecordingNotifier]:
    notifier = RecordingNotifier()
    return await service.handle(parse_line(line), user, notifier), notifier


async def test_drain_asks_first_and_only_the_confirmation_writes(consul: Consul, make_service, services) -> None:
    for port in services[:2]:
        consul.add_server("app", f"127.0.0.1:{port}")
    service = make_service()
    target = f"127.0.0.1:{services[0]}"
    outcome, notifier = await run(service, f"/drain {target}")
    assert outcome is Outcome.PENDING
    (asked,) = notifier.of(ConfirmationNeeded)
    assert asked.plan.impact == ("app: 1 of 2 will be serving",)
    assert down(consul, target) == 0  # nothing written before the confirmation
    assert await service.confirm(asked.plan, 1, "U1ALICE", notifier) is Outcome.DONE
    assert down(consul, target) == 1
    (done,) = notifier.of(ChangeApplied)
    assert done.actor == "U1ALICE" and "1 of 2 now serving" in done.results[0].detail


async def test_a_second_press_after_the_change_writes_nothing_and_says_what_changed(
    consul: Consul, make_service, services
) -> None:
    for port in services[:2]:
        consul.add_server("app", f"127.0.0.1:{port}")
    service = make_service()
    _, first = await run(service, f"/drain 127.0.0.1:{services[0]}")
    plan = first.of(ConfirmationNeeded)[0].plan
    assert await service.confirm(plan, 1, "U1ALICE", first) is Outcome.DONE
    again = RecordingNotifier()
    assert await service.confirm(plan, 1, "U1ALICE", again) is Outcome.FAILED
    (result,) = again.of(ChangeApplied)[0].results
    assert "changed since you asked (down 0 -> 1)" in result.detail


async def test_the_guard_is_checked_again_at_write_time(consul: Consul, make_service, services) -> None:
    a, b = (f"127.0.0.1:{p}" for p in services[:2])
    consul.add_server("app", a)
    consul.add_server("app", b)
    service = make_service()
    _, one = await run(service, f"/drain {a}")
    _, two = await run(service, f"/drain {b}")
    assert await service.confirm(one.of(ConfirmationNeeded)[0].plan, 1, "U1ALICE", one) is Outcome.DONE
    # b's confirmation was shown while a was serving; a is drained now, so b must not be.
    assert await service.confirm(two.of(ConfirmationNeeded)[0].plan, 1, "U1ALICE", two) is Outcome.FAILED
    assert down(consul, b) == 0
    assert "would leave none serving" in two.of(ChangeApplied)[0].results[0].detail


async def test_draining_the_last_serving_server_needs_force_and_two_confirmations(
    consul: Consul, make_service, services
) -> None:
    only = f"127.0.0.1:{services[0]}"
    consul.add_server("app", only)
    consul.add_server("app", f"127.0.0.1:{services[1]}", down=1)
    service = make_service()
    outcome, refused = await run(service, f"/drain {only}")
    assert outcome is Outcome.REFUSED and "no serving server" in refused.of(Problem)[0].text
    outcome, forced = await run(service, f"/drain {only} --force")
    plan = forced.of(ConfirmationNeeded)[0].plan
    assert await service.confirm(plan, 1, "U1ALICE", forced) is Outcome.PENDING
    assert forced.of(ConfirmationNeeded)[-1].stage == 2 and down(consul, only) == 0
    assert await service.confirm(plan, 2, "U1ALICE", forced) is Outcome.DONE
    assert down(consul, only) == 1


async def test_drain_without_app_finds_every_upstream_listing_the_server(
    consul: Consul, make_service, services
) -> None:
    shared = f"127.0.0.1:{services[0]}"
    for upstream in ("app", "api"):
        consul.add_server(upstream, shared)
        consul.add_server(upstream, f"127.0.0.1:{services[1]}")
    service = make_service(app_settings("app"), app_settings("api"))
    _, notifier = await run(service, f"/drain {shared}")
    plan = notifier.of(ConfirmationNeeded)[0].plan
    assert sorted(plan.impact) == ["api: 1 of 2 will be serving", "app: 1 of 2 will be serving"]
    await service.confirm(plan, 1, "U1ALICE", notifier)
    assert down(consul, shared, "app") == down(consul, shared, "api") == 1


async def confirmed(service: CommandService, line: str, user: str = "U1ALICE") -> tuple[Outcome, RecordingNotifier]:
    """Ask, then press Confirm as `user` (the way Slack and the terminal do)."""
    outcome, notifier = await run(service, line, user)
    if outcome is not Outcome.PENDING:
        return outcome, notifier
    plan = notifier.of(ConfirmationNeeded)[0].plan
    return await service.confirm(plan, 1, user, notifier), notifier


async def test_undrain_asks_first_probes_at_the_press_and_force_skips_the_probe(
    consul: Consul, make_service, services
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    consul.add_server("app", f"127.0.0.1:{services[0]}")
    consul.add_server("app", dead, down=1)
    consul.add_server("app", f"127.0.0.1:{services[1]}", down=1)
    service = make_service()
    outcome, notifier = await run(service, f"/undrain 127.0.0.1:{services[1]}")
    assert outcome is Outcome.PENDING and down(consul, f"127.0.0.1:{services[1]}") == 1  # asked, nothing written
    outcome, notifier = await confirmed(service, f"/undrain {dead}")
    assert outcome is Outcome.REFUSED and "connection refused" in notifier.of(Problem)[0].text
    assert down(consul, dead) == 1
    outcome, notifier = await confirmed(service, f"/undrain 127.0.0.1:{services[1]}")
    assert outcome is Outcome.DONE and down(consul, f"127.0.0.1:{services[1]}") == 0
    outcome, notifier = await confirmed(service, f"/undrain {dead} --force")
    assert down(consul, dead) == 0
    assert any("probe skipped" in n.text for n in notifier.of(Notice))


async def test_add_probes_before_asking_then_creates_and_remove_drains_then_deletes(
    consul: Consul, make_service, services
) -> None:
    consul.add_server("app", f"127.0.0.1:{services[0]}")
    service = make_service()
    new = f"127.0.0.1:{services[1]}"
    _, notifier = await run(service, f"/upstream add app {new} weight=3")
    assert "probe: passed" in " ".join(notifier.of(ConfirmationNeeded)[0].plan.warnings)  # the question shows it
    assert "added with weight 3" in notifier.of(ConfirmationNeeded)[0].plan.impact[0]  # and the weight asked for
    await service.confirm(notifier.of(ConfirmationNeeded)[0].plan, 1, "U1ALICE", notifier)
    assert json.loads(consul.value(f"upstreams/app/{new}") or "") == {
        "weight": 3,
        "max_fails": 2,
        "fail_timeout": 10,
        "down": 0,
    }
    outcome, notifier = await run(service, f"/upstream add app 127.0.0.1:{free_port()}")
    assert outcome is Outcome.REFUSED and "connection refused" in notifier.of(Problem)[0].text  # before the question
    assert not notifier.of(ConfirmationNeeded)

    _, notifier = await run(service, f"/upstream remove app {new}")
    await service.confirm(notifier.of(ConfirmationNeeded)[0].plan, 1, "U1ALICE", notifier)
    assert consul.value(f"upstreams/app/{new}") is None
    assert service.clock.slept == [0.5 + 1.0 + 2.0]  # upsync interval + 1 s jitter + drain_wait
    outcome, notifier = await run(service, f"/upstream remove app 127.0.0.1:{services[0]}")
    assert outcome is Outcome.REFUSED and "only server" in notifier.of(Problem)[0].text


async def test_unknown_app_and_unknown_server_list_what_exists(consul: Consul, make_service, services) -> None:
    consul.add_server("app", f"127.0.0.1:{services[0]}")
    service = make_service()
    _, notifier = await run(service, "/upstream status nope")
    assert "unknown app `nope`; known apps: `app`" in notifier.of(Problem)[0].text
    _, notifier = await run(service, "/drain 127.0.0.1:1 app")
    assert f"no server 127.0.0.1:1 in app (its servers: 127.0.0.1:{services[0]})" in notifier.of(Problem)[0].text


async def test_status_joins_consul_nginx_and_probes_and_flags_disagreements(
    consul: Consul, make_service, services
) -> None:
    a, b, c = (f"127.0.0.1:{p}" for p in services)
    consul.add_server("app", a)
    consul.add_server("app", b)
    consul.add_server("app", c, down=1)
    checks = {
        "servers": {
            "server": [
                {"upstream": "app", "name": a, "status": "up"},
                {"upstream": "app", "name": b, "status": "down"},
                {"upstream": "app", "name": c, "status": "up"},
            ]
        }
    }
    show = (
        f"Upstream name: app; Backend server count: 3\n        server {a} weight=1;\n"
        f"        server {b} weight=1;\n        server {c} weight=1;\n"
    )

    async def status_page(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(checks))

    async def list_page(request: web.Request) -> web.Response:
        return web.Response(text=show)

    nginx = web.Application()
    nginx.router.add_get("/status", status_page)
    nginx.router.add_get("/list", list_page)
    server = ServerThread(nginx).start()
    try:
        settings = app_settings(
            nginx=NginxSettings(status_url=f"{server.url}/status?format=json", list_url=f"{server.url}/list")
        )
        _, notifier = await run(make_service(settings), "/upstream status app")
    finally:
        server.stop()
    (report,) = notifier.of(StatusReport)
    assert report.summary.startswith("app: 2 of 3 serving, 1 down in nginx's check")
    by = {str(s.address): s for s in report.servers}
    assert by[a].disagreement is None and by[a].probe is not None and by[a].probe.healthy
    assert by[b].disagreement == "Consul: serving, nginx check: down"
    assert by[c].disagreement == "Consul: drained, nginx lists it serving"


async def test_status_shows_the_version_each_node_says_it_runs(consul: Consul, make_service, services) -> None:
    """`health.version_header` names the probe's response header that carries the deployed version (the
    sample services answer X-App-Version: 1); a node that does not answer shows none."""
    for port in services[:2]:
        consul.add_server("app", f"127.0.0.1:{port}")
    gone = f"127.0.0.1:{free_port()}"
    consul.add_server("app", gone)
    with_header = replace(app_settings(), health=replace(app_settings().health, version_header="X-App-Version"))
    _, notifier = await run(make_service(with_header), "/upstream status app")
    (report,) = notifier.of(StatusReport)
    lines = {str(s.address): server_line(s) for s in report.servers}
    for port in services[:2]:
        assert "version: 1" in lines[f"127.0.0.1:{port}"]
    assert "version:" not in lines[gone] and "probe: FAIL (connection refused)" in lines[gone]
    _, notifier = await run(make_service(app_settings()), "/upstream status app")
    (plain,) = notifier.of(StatusReport)
    assert not any("version:" in server_line(s) for s in plain.servers)  # not configured: not shown


async def test_consul_unreachable_is_a_clear_answer_that_changes_nothing(make_service, services) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with httpx.AsyncClient() as client:
        settings = {"app": app_settings()}
        service = CommandService(
            settings,
            ConsulStore((dead,), timeout=1),
            HttpProber(client),
            HttpNginxReader(settings, client),
            FakeClock(),
        )
        outcome, notifier = await run(service, f"/drain 127.0.0.1:{services[0]}")
        read_outcome, read_notifier = await run(service, "/upstream status app")
    assert outcome is Outcome.FAILED
    assert f"Consul unreachable for reading upstreams/app/: {dead}: connection refused" in notifier.of(Problem)[0].text
    assert notifier.of(Problem)[0].text.startswith("Nothing was changed")
    # A read says what could not be read, not that nothing was changed.
    assert read_outcome is Outcome.FAILED
    assert read_notifier.of(Problem)[0].text.startswith("Could not read Consul: Consul unreachable")


async def test_a_down_value_nginx_finds_invalid_is_shown_as_serving_and_released_as_serving(
    consul: Consul, make_service, services
) -> None:
    """Measured on the real module: `"down":"true"` is logged invalid and the server serves. The bot says
    so, and a release does not skip it as "drained before the release" (it would keep the old version)."""
    import dataclasses

    from commands.release_plan import plan_release
    from commands.requests import ReleaseRequest
    from commands.settings import ReleaseSettings, StepSpec

    odd, *rest = [f"127.0.0.1:{p}" for p in services]
    consul.put(f"upstreams/app/{odd}", '{"weight":"2.7","max_fails":2,"fail_timeout":10,"down":"true"}')
    for address in rest:
        consul.add_server("app", address)
    service = make_service()
    _, notifier = await run(service, "/upstream status app")
    (report,) = notifier.of(StatusReport)
    status = next(s for s in report.servers if str(s.address) == odd)
    assert not status.drained and status.weight == 1
    assert any(f'{odd}: down="true" is invalid: nginx reads this as serving' in n for n in report.notes)
    assert any(f'{odd}: weight="2.7" is read by nginx-upsync-module as 1' in n for n in report.notes)
    upstream, view = await service.store.read("app"), await service.nginx.read("app")
    app = dataclasses.replace(service.apps["app"], release=ReleaseSettings(steps={"stop": StepSpec("true")}))
    plan = plan_release(app, ReleaseRequest("app", dry_run=True), "U1ALICE", upstream, {}, view)
    assert odd in {str(a) for a in plan.nodes} and not plan.skipped


async def test_alerts_are_acknowledged_and_silenced_by_command_where_there_are_no_buttons() -> None:
    from commands.addresses import ServerAddress
    from commands.interfaces import NginxView, ProbeResult
    from commands.servers import ServerEntry, Upstream
    from commands.watch import AppWatch

    app = app_settings()
    watch = AppWatch(app)
    node = ServerAddress.parse("10.0.0.1:9000")
    up = Upstream("app", (ServerEntry(node, {"down": 0}, 1),))
    for i in range(20):  # failing for longer than the window: one open incident
        watch.observe(i * 10.0, up, {node: ProbeResult(False, "connection refused")}, NginxView())
    (incident,) = watch.incidents()

    class Watches:
        def watch(self, name: str) -> AppWatch | None:
            return watch if name == "app" else None

        def set_enabled(self, name: str, on: bool) -> str:
            return ""

    store = FakeStore("app", [str(node)])
    service = CommandService(
        {"app": app},
        store,
        FakeProber(),
        FakeNginx(store),
        FakeClock(),
        watches=Watches(),
        policy=AccessPolicy({"app": app}, operators=("U1ALICE",)),
        history=MemoryHistory(),
    )
    outcome, notifier = await run(service, "/upstream silence app 10.0.0.1:9000", "U2MALLORY")
    assert outcome is Outcome.REFUSED and incident.silenced_until is None  # operators only, as the buttons
    outcome, notifier = await run(service, "/upstream silence app 10.0.0.1:9000")
    assert outcome is Outcome.DONE and incident.silenced_until is not None
    assert "Silenced for 1 h" in notifier.of(Notice)[0].text
    outcome, notifier = await run(service, "/upstream ack app 10.0.0.1:9000")
    assert outcome is Outcome.DONE and incident.acknowledged_by == "U1ALICE"
    recorded = len(service.history.kept)  # type: ignore[attr-defined]
    outcome, notifier = await run(service, "/upstream ack app 10.0.0.1:9000")  # typed twice
    assert outcome is Outcome.DONE and "was already acknowledged by <@U1ALICE>" in notifier.of(Notice)[0].text
    assert len(service.history.kept) == recorded  # type: ignore[attr-defined]  # nothing new to audit
    outcome, notifier = await run(service, "/upstream ack app 10.0.0.2:9000")
    assert outcome is Outcome.REFUSED and "No open incident for 10.0.0.2:9000" in notifier.of(Notice)[0].text
    outcome, notifier = await run(service, "/upstream ack app 10.0.0.2:9000", "U2MALLORY")
    assert outcome is Outcome.REFUSED and not notifier.of(Notice)  # refused, not told what is open
