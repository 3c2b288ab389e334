"""The health watch's window and rise logic with a fake clock: failing, flapping, recovering, silenced,
reminders, drained nodes, disagreements, nodes under release."""

from __future__ import annotations

from bot.consul.watch_state import decode, encode
from commands.addresses import ServerAddress
from commands.interfaces import NginxView, ProbeResult
from commands.servers import ServerEntry, Upstream
from commands.settings import AppSettings, HealthSettings, WatchSettings
from commands.watch import AppWatch, WatchEvent

A, B = ServerAddress("10.0.0.1", 9000), ServerAddress("10.0.0.2", 9000)
OK, DOWN = ProbeResult(True, "200 OK"), ProbeResult(False, "connection refused")


def watch() -> AppWatch:
    return AppWatch(
        AppSettings(
            "app",
            "app",
            health=HealthSettings(url="http://{host}:{port}/ping", interval=10, window=60, rise=2),
            watch=WatchSettings(reminder=3600, drained_reminder=86400),
        )
    )


def upstream(drained: set[ServerAddress] = frozenset()) -> Upstream:  # type: ignore[assignment]
    return Upstream("app", tuple(ServerEntry(a, {"down": int(a in drained)}, 1) for a in (A, B)))


def run(
    w: AppWatch, rounds: list[ProbeResult], start: float = 0.0, step: float = 10.0, **kw: object
) -> list[WatchEvent]:
    events = []
    for i, result in enumerate(rounds):
        events += w.observe(
            start + i * step,
            kw.get("up", upstream()),
            {A: result, B: OK},  # type: ignore[arg-type]
            kw.get("view", NginxView()),
            kw.get("releasing"),
        )  # type: ignore[arg-type]
    return events


def kinds(events: list[WatchEvent]) -> list[str]:
    return [e.kind for e in events]


def test_a_node_failing_for_the_whole_window_raises_exactly_one_alert() -> None:
    w = watch()
    events = run(w, [DOWN] * 6)  # t=0..50: failing for 50 s, shorter than the 60 s window
    assert events == []
    events = run(w, [DOWN] * 20, start=60)  # failing on, for 200 s more
    assert kinds(events) == ["alert"]
    (alert,) = events
    assert (
        alert.incident is not None
        and alert.incident.failing_since == 0
        and alert.incident.last_error == "connection refused"
    )
    assert alert.incident.consul_serving


def test_flaps_shorter_than_the_window_do_not_alert() -> None:
    assert run(watch(), [DOWN, DOWN, DOWN, OK, DOWN, DOWN, DOWN, DOWN, OK] * 5) == []


def test_recovery_after_rise_passes_resolves_the_incident() -> None:
    w = watch()
    events = run(w, [DOWN] * 8 + [OK] + [DOWN] * 8 + [OK, OK])
    assert kinds(events) == ["alert", "recovered"]
    recovered = events[-1].incident
    assert recovered is not None and recovered.resolved_at == 180 and recovered.resolution == "healthy again"
    assert w.incidents() == []


def test_reminders_come_after_the_interval_and_stop_when_acknowledged_or_silenced() -> None:
    w = watch()
    events = run(w, [DOWN] * 800)  # 8000 s of failure
    assert kinds(events) == ["alert", "reminder", "reminder"]
    w = watch()
    events = run(w, [DOWN] * 10)
    (incident,) = w.incidents()
    w.acknowledge(incident.id, "U2BOB")
    assert run(w, [DOWN] * 800, start=100) == [] and incident.acknowledged_by == "U2BOB"
    w = watch()
    run(w, [DOWN] * 10)
    (incident,) = w.incidents()
    w.silence(incident.id, until=100 + 3600)
    assert run(w, [DOWN] * 300, start=100) == []  # silenced for the hour
    assert kinds(run(w, [DOWN] * 400, start=3100)) == ["reminder"]  # ... then reminded again


def test_nodes_drained_on_purpose_are_not_alerted_but_reminded_once_after_a_day() -> None:
    w = watch()
    w.record_drain(A, "U1ALICE")
    events = run(w, [DOWN] * 9000, up=upstream({A}))  # 90,000 s drained and dead
    assert kinds(events) == ["drained_reminder"]
    assert events[0].since == 0 and events[0].by == "U1ALICE"


def test_draining_an_alerted_node_resolves_its_incident() -> None:
    w = watch()
    run(w, [DOWN] * 10)
    w.record_drain(A, "U2BOB")
    events = run(w, [DOWN], start=100, up=upstream({A}))
    assert kinds(events) == ["recovered"] and events[0].incident.resolution == "drained by U2BOB"  # type: ignore[union-attr]


def test_consul_serving_but_nginx_check_down_for_the_window_is_a_disagreement_alert() -> None:
    w = watch()
    view = NginxView(checks={str(A): "down", str(B): "up"})
    events = run(w, [OK] * 10, view=view)  # the probe from the bot passes, nginx says down
    assert kinds(events) == ["alert"] and "nginx's check" in events[0].incident.reason  # type: ignore[union-attr]
    assert events[0].incident.nginx_check == "down"  # type: ignore[union-attr]


def test_nginx_routing_to_a_drained_node_is_alerted_and_resolved() -> None:
    w = watch()
    stale = NginxView(listed_down={str(A): False, str(B): False})
    events = run(w, [OK] * 10, up=upstream({A}), view=stale)
    assert kinds(events) == ["alert"] and not events[0].incident.consul_serving  # type: ignore[union-attr]
    applied = NginxView(listed_down={str(A): True, str(B): False})
    events = run(w, [OK], start=100, up=upstream({A}), view=applied)
    assert kinds(events) == ["recovered"]


def test_nodes_under_release_are_left_to_the_release_engine() -> None:
    w = watch()
    assert run(w, [DOWN] * 30, releasing={A}) == []
    assert run(w, [DOWN] * 5, start=300) == []  # after the release the window starts afresh


def test_a_watch_that_takes_over_an_open_incident_neither_re_alerts_nor_forgets_it() -> None:
    w = watch()
    run(w, [DOWN] * 10)
    (incident,) = w.incidents()
    incident.post_ref = {"channel": "C0DEPLOY", "ts": "1.2"}
    stored = decode(encode(incident))  # as Consul keeps it
    assert stored == incident
    taken = watch()  # another replica, or this one restarted: no probe history at all
    taken.adopt([stored])  # type: ignore[list-item]
    assert run(taken, [DOWN] * 20, start=100) == []  # still failing: no second alert
    events = run(taken, [OK, OK], start=300)
    assert kinds(events) == ["recovered"] and events[0].incident is stored
    assert stored.post_ref == {"channel": "C0DEPLOY", "ts": "1.2"}  # where to answer in its thread


def test_a_silence_outlives_a_takeover_and_marks_pressed_elsewhere_are_merged() -> None:
    w = watch()
    run(w, [DOWN] * 10)
    (incident,) = w.incidents()
    elsewhere = decode(encode(incident))
    assert elsewhere is not None
    elsewhere.acknowledged_by, elsewhere.silenced_until = "U2BOB", 5000.0
    w.merge([elsewhere])  # the leader reads what another replica's buttons stored
    assert incident.acknowledged_by == "U2BOB" and w.silenced[A] == 5000.0
    run(w, [OK, OK], start=100)  # resolved, but silenced until 5000
    resolved = decode(encode(incident))
    taken = watch()
    taken.adopt([resolved])  # type: ignore[list-item]
    assert taken.incidents() == []
    assert run(taken, [DOWN] * 100, start=200) == []  # fails again within the silence: not alerted
