"""The health watch's window and rise logic with a fake clock: failing, flapping, recovering, silenced,
reminders, drained nodes, disagreements, nodes under release."""

from __future__ import annotations

from bot.consul.watch_state import decode, encode
from commands.addresses import ServerAddress
from commands.interfaces import NginxView, ProbeResult
from commands.servers import ServerEntry, Upstream
from commands.settings import AppSettings, HealthSettings, NginxSettings, WatchSettings
from commands.watch import AppWatch, WatchEvent

A, B = ServerAddress("10.0.0.1", 9000), ServerAddress("10.0.0.2", 9000)
OK, DOWN = ProbeResult(True, "200 OK"), ProbeResult(False, "connection refused")


def watch(status_url: str | None = None) -> AppWatch:
    return AppWatch(
        AppSettings(
            "app",
            "app",
            nginx=NginxSettings(status_url=status_url),
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


STATUS = "http://127.0.0.1:8080/status?format=json"


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


def test_a_few_failures_between_passes_do_not_alert() -> None:
    assert run(watch(), [DOWN, OK, OK, DOWN, OK, OK, OK, DOWN, DOWN, OK] * 5) == []


def test_a_node_failing_most_probes_of_its_window_is_alerted_once_as_flapping() -> None:
    # Never failing for the whole window (passes between the failures), but failing most of the time.
    w = watch()
    events = run(w, [DOWN, DOWN, DOWN, OK, DOWN, DOWN, DOWN, DOWN, OK] * 5)
    assert kinds(events) == ["alert"]
    incident = events[0].incident
    assert incident is not None and incident.reason.startswith("flapping: failed 5 of its last 6 probes")
    assert incident.last_error == "connection refused"
    # Two passes in a row (t=440, 450) do not end it while most of its window failed; a third does.
    assert run(w, [OK], start=450) == []
    assert kinds(run(w, [OK], start=460)) == ["recovered"]


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
    w = watch(STATUS)
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


def nginx_only(**health: object) -> AppWatch:
    return AppWatch(
        AppSettings(
            "app",
            "app",
            nginx=NginxSettings(status_url=STATUS),
            health=HealthSettings(interval=10, window=60, rise=2, source="nginx", **health),  # type: ignore[arg-type]
            watch=WatchSettings(reminder=3600),
        )
    )


DOWN_VIEW = NginxView(checks={str(A): "down", str(B): "up"})
UP_VIEW = NginxView(checks={str(A): "up", str(B): "up"})
UNREADABLE = NginxView(errors=("nginx check status (http://127.0.0.1:8080/status) unreadable: connection refused",))


def rounds(w: AppWatch, views: list[NginxView], start: float) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    for i, view in enumerate(views):
        events += w.observe(start + i * 10, upstream(), {}, view)
    return events


def test_an_unreadable_status_page_never_resolves_an_incident_and_is_alerted_once_it_lasts() -> None:
    w = nginx_only()
    assert kinds(rounds(w, [DOWN_VIEW] * 7, 0)) == ["alert"]
    # The status page cannot be read for 5 minutes: nothing is known about the node, nothing resolves,
    # nothing re-alerts; after the window, one alert says the watch cannot see the app, and why.
    events = rounds(w, [UNREADABLE] * 30, 70)
    assert kinds(events) == ["blind"]
    blind = events[0].incident
    assert blind is not None and blind.address is None and "connection refused" in blind.last_error
    assert blind.failing_since == 70 and blind.opened_at == 130
    assert [i.address for i in w.incidents()] == [None, A]
    # Readable again, the node still down: the blindness ends (in its thread), the node's incident stays.
    events = rounds(w, [DOWN_VIEW] * 3, 370)
    assert kinds(events) == ["recovered"] and events[0].incident is blind
    assert [i.address for i in w.incidents()] == [A]
    # It recovers only when nginx is read and says up.
    assert kinds(rounds(w, [UNREADABLE, UP_VIEW], 400)) == ["recovered"]


def test_a_short_blindness_says_nothing() -> None:
    w = nginx_only()
    assert rounds(w, [UP_VIEW, UNREADABLE, UNREADABLE, UP_VIEW, UNREADABLE, UP_VIEW], 0) == []


def test_consul_unreadable_for_the_window_is_one_alert_and_its_reminder_follows_the_reminder_rule() -> None:
    w = nginx_only()
    events: list[WatchEvent] = []
    for i in range(400):  # 4000 s without Consul
        events += w.unseen(i * 10.0, "Consul unreachable: connection refused")
    assert kinds(events) == ["blind", "reminder"]  # the alert at 60 s, one reminder an hour later
    assert events[0].incident is not None and events[0].incident.last_error.startswith("Consul unreachable")
    assert kinds(w.seen(4000)) == ["recovered"] and w.incidents() == []


def test_many_nodes_failing_in_one_round_are_one_grouped_alert_and_one_grouped_recovery() -> None:
    w = nginx_only()
    nodes = [ServerAddress("10.0.1.1", 9000 + i) for i in range(40)]
    up = Upstream("app", tuple(ServerEntry(a, {"down": 0}, 1) for a in nodes))
    down = NginxView(checks={str(a): "down" for a in nodes})
    events: list[WatchEvent] = []
    for i in range(8):
        events += w.observe(i * 10.0, up, {}, down)
    assert kinds(events) == ["group_alert"]
    group = events[0].incidents
    assert len(group) == 40 and len({i.group for i in group}) == 1 and group[0].group
    assert sorted(i.address for i in group) == sorted(nodes)  # type: ignore[type-var]
    assert w.silence_group(group[0].group or "", 5000.0) == list(group)
    healthy = NginxView(checks={str(a): "up" for a in nodes})
    events = w.observe(100, up, {}, healthy)
    assert kinds(events) == ["group_recovered"] and len(events[0].incidents) == 40
    # Two at once stay two messages.
    two = NginxView(checks={**{str(a): "up" for a in nodes}, str(nodes[0]): "down", str(nodes[1]): "down"})
    events = []
    for i in range(8):
        events += w.observe(6000 + i * 10.0, up, {}, two)
    assert kinds(events) == ["alert", "alert"]


def test_per_node_state_stays_small_and_maps_are_pruned() -> None:
    w = watch()
    for i in range(300):
        w.observe(i * 10.0, upstream(), {A: DOWN if i % 2 else OK, B: OK}, NginxView())
    node = w.nodes[A]
    assert not hasattr(node, "__dict__")  # slots: no per-node dict
    assert node.recent < (1 << w.span)  # the window's results only
    w.silenced[A] = 100.0
    w.record_drain(B, "U2BOB")
    w.observe(4000.0, upstream(), {A: OK, B: OK}, NginxView())
    assert A not in w.silenced and B not in w.drained_by  # a silence over, a node serving again


def test_a_taken_over_incident_whose_alert_was_never_posted_is_announced_once() -> None:
    w = watch()
    run(w, [DOWN] * 10)
    (incident,) = w.incidents()
    posted = decode(encode(incident))
    assert posted is not None
    posted.post_ref = {"channel": "C1", "ts": "1.0"}
    unposted = decode(encode(incident))  # its alert was still queued for Slack when its leader went
    taken = watch()
    taken.adopt([posted])  # type: ignore[list-item]
    assert run(taken, [DOWN, DOWN], start=200) == []
    taken = watch()
    taken.adopt([unposted])  # type: ignore[list-item]
    events = run(taken, [DOWN, DOWN], start=200)
    assert kinds(events) == ["alert"] and events[0].incident is not None and events[0].incident.id == incident.id


def long_window() -> AppWatch:
    # The README's defaults: window 120 s, interval 10 s: a window of 12 probes.
    return AppWatch(
        AppSettings(
            "app", "app", health=HealthSettings(url="http://{host}:{port}/ping", interval=10, window=120, rise=2)
        )
    )


def test_a_recovered_node_is_not_alerted_again_as_flapping_by_the_failures_that_made_its_incident() -> None:
    w = long_window()
    events = run(w, [DOWN] * 20 + [OK] * 30)
    assert kinds(events) == ["alert", "recovered"]


def test_a_node_going_down_after_one_blip_is_a_failure_after_the_window_not_flapping() -> None:
    w = watch()  # window 60 s: 6 probes
    events = run(w, [OK] * 6 + [DOWN, OK] + [DOWN] * 8)
    assert kinds(events) == ["alert"]
    assert events[0].incident is not None and events[0].incident.reason == "failing its health probe"


def test_with_both_sources_a_node_nginx_does_not_check_recovers_on_its_probes() -> None:
    w = watch(STATUS)  # probe and nginx's check both used
    page_without_it = NginxView(checks={str(B): "up"})  # no `check` covers A
    events = run(w, [DOWN] * 8 + [OK] * 3, view=page_without_it)
    assert kinds(events) == ["alert", "recovered"]
    # ...while a node nginx lists but has not checked yet is unknown: not recovered on probes alone.
    w = watch(STATUS)
    unchecked = NginxView(checks={str(A): "unchecked", str(B): "up"})
    assert kinds(run(w, [DOWN] * 8 + [OK] * 3, view=unchecked)) == ["alert"]


def test_a_probe_only_app_does_not_go_blind_when_nginx_s_check_page_is_unreadable() -> None:
    w = AppWatch(
        AppSettings(
            "app",
            "app",
            nginx=NginxSettings(status_url=STATUS),
            health=HealthSettings(url="http://{host}:{port}/ping", interval=10, window=60, rise=2, source="probe"),
        )
    )
    error = "nginx check status (x) unreadable: timeout"
    view = NginxView(errors=(error,), checks_error=error)
    assert run(w, [OK] * 20, view=view) == []


def test_a_follower_mirroring_a_blind_incident_drops_it_once_the_leader_resolved_it() -> None:
    leader = nginx_only()
    rounds(leader, [UNREADABLE] * 8, 0)
    (blind,) = leader.incidents()
    follower = nginx_only()
    follower.adopt([decode(encode(blind))])  # type: ignore[list-item]
    assert [i.address for i in follower.incidents()] == [None]
    follower.adopt([])  # the leader resolved and deleted it
    assert follower.incidents() == []


def test_an_unannounced_incident_that_ends_in_the_takeover_round_is_only_recovered() -> None:
    w = watch()
    run(w, [DOWN] * 10)
    (incident,) = w.incidents()
    taken = watch()
    taken.adopt([decode(encode(incident))])  # type: ignore[list-item]
    events = run(taken, [OK], start=200, up=upstream({A}))  # drained meanwhile: resolved at once
    assert kinds(events) == ["recovered"]
