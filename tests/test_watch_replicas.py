"""The health watch over several `upstream-bot serve --http` replicas on one Consul and one Slack: one
replica leads (the session lock upstream-bot/locks/watch), one alert per incident, the incidents kept in
Consul, a SIGKILLed leader replaced within the session TTL without a second alert, a restart that does not
re-alert.

The failing node is a FakeNode in the test's process: only the leader probes it, so its probe count is
the leading watch's clock (absence of a second alert is asserted after rounds in which it would have
come, never after a bare sleep)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bot.clock import SystemClock
from bot.consul.election import WATCH_LOCK, WatchElection, lock_delay
from bot.consul.store import ConsulStore
from bot.consul.watch_state import PREFIX, WatchStateKV
from bot.health.scheduler import HealthWatcher
from bot.standins.slack import Call
from commands.events import Event
from commands.settings import AppSettings, HealthSettings
from commands.watch import WatchEvent
from tests.conftest import Consul
from tests.fakes import FakeNginx, FakeProber, FakeStore
from tests.helpers import RecordingNotifier, wait_until
from tests.slack_bot import Bot, FakeNode, confirm_key, replica, running_bot
from tests.test_consul_lock import destroy_session

INTERVAL, WINDOW, TTL = 0.3, 2.0, 10.0
CONFIG = (
    f"consul:\n  session_ttl: {TTL:g}s\n"
    "slack:\n  channel: C0DEPLOY\naccess:\n  operators: [U1ALICE, U2BOB]\n"
    "apps:\n  app:\n    approvers: [U2BOB]\n    health:\n      url: http://{host}:{port}/ping\n"
    f"      interval: {INTERVAL}s\n      timeout: {INTERVAL}s\n      window: {WINDOW}s\n      rise: 2\n"
)
TAKEOVER = TTL + lock_delay(TTL) + 2  # the session expires, its lock-delay passes, a look at the key
INCIDENTS = f"{PREFIX}app/incidents/"



class PostingNotifier(RecordingNotifier):
    """Records events and, as the Slack front end does once Slack took an alert, notes where it went
    (post_ref) and tells the watcher, which keeps it in Consul."""

    watcher: HealthWatcher | None = None

    async def emit(self, event: Event) -> None:
        await super().emit(event)
        if isinstance(event, WatchEvent) and event.kind == "alert" and event.incident is not None:
            event.incident.post_ref = {"channel": "C0DEPLOY", "ts": f"{len(self.events)}.0"}
            if self.watcher is not None:
                self.watcher.posted([event.incident])

def rounds(seconds: float) -> int:
    return math.ceil(seconds / INTERVAL) + 1


def leader_pid(bot: Bot) -> int | None:
    """The pid of the replica holding the watch lock (its value names host:pid), None while free."""
    entry = bot.consul.server.call(lambda: bot.consul.standin.kv.get(WATCH_LOCK))
    if entry is None or not entry.session:
        return None
    return int(json.loads(entry.value)["holder"].rsplit(":", 1)[1])


def alerts(bot: Bot, node: FakeNode) -> list[Call]:
    return [
        c
        for c in bot.slack.calls("chat.postMessage")
        if "watch_silence" in json.dumps(c.args.get("blocks")) and node.address in c.text
    ]


def stored(bot: Bot) -> list[dict[str, object]]:
    return [json.loads(bot.consul.value(k) or "{}") for k in bot.keys(INCIDENTS)]


@contextmanager
def failing_node(tmp_path: Path) -> Iterator[tuple[FakeNode, Path]]:
    """A node that answers 503 while the file exists."""
    broken = tmp_path / "broken"
    with FakeNode(broken_by=broken) as node:
        yield node, broken


def folder(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def test_two_replicas_alert_once_and_a_takeover_neither_re_alerts_nor_forgets(tmp_path: Path) -> None:
    with failing_node(tmp_path) as (node, broken):
        seed = lambda consul: consul.add_server("app", node.address)  # noqa: E731
        with running_bot(folder(tmp_path, "a"), CONFIG, seed=seed) as a, replica(a, folder(tmp_path, "b"), CONFIG) as b:
            first = wait_until(lambda: leader_pid(a), what="a replica leading the watch")
            node.wait_probes(3)
            broken.touch()
            alert = a.said(lambda c: bool(alerts(a, node)), method="chat.postMessage", timeout=WINDOW + 5)
            node.wait_probes(rounds(2 * WINDOW))  # two more windows of failure: no second alert may come
            assert len(alerts(a, node)) == 1
            (incident,) = stored(a)
            assert incident["address"] == node.address and incident["resolved_at"] is None

            # The other replica shows it and takes its button: the acknowledgement reaches Consul.
            follower = b if serving_pid(a) == first else a
            follower.command("/upstream", "alerts")
            follower.said(lambda c: "1 open incident(s)" in c.text, method="chat.postEphemeral")
            follower.press("watch_ack", confirm_key(alert, "watch_ack"), user="U2BOB")
            wait_until(lambda: stored(a)[0].get("acknowledged_by") == "U2BOB", what="the acknowledgement in Consul")

            os.kill(first, signal.SIGKILL)  # the leader dies: nobody renews its session
            killed = time.monotonic()
            second = wait_until(
                lambda: (pid := leader_pid(a)) not in (None, first) and pid, timeout=TAKEOVER, what="a takeover"
            )
            assert time.monotonic() - killed <= TAKEOVER and second != first
            node.wait_probes(rounds(2 * WINDOW))  # the new leader's rounds over the failing node
            assert len(alerts(a, node)) == 1  # not alerted again
            assert stored(a)[0]["id"] == incident["id"] and stored(a)[0]["acknowledged_by"] == "U2BOB"

            broken.unlink()
            resolved = a.said(lambda c: "Resolved" in c.text, method="chat.postMessage", timeout=WINDOW + 5)
            assert node.address in resolved.text
            # The alert's thread, although another replica posted the alert (its place is kept in Consul).
            assert resolved.args.get("thread_ts") == alert.answer["ts"]
            wait_until(lambda: stored(a) == [], what="the resolved incident deleted from Consul")


def serving_pid(bot: Bot) -> int:
    """The pid of the `serve --http --port N` process behind `bot.url` (from /proc's command lines)."""
    marker = f"serve\0--http\0--port\0{bot.url.rsplit(':', 1)[1]}\0".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no process serves {bot.url}")


def test_a_restarted_bot_does_not_re_alert_an_open_incident_and_posts_its_recovery(tmp_path: Path) -> None:
    with failing_node(tmp_path) as (node, broken):
        seed = lambda consul: consul.add_server("app", node.address)  # noqa: E731
        with running_bot(folder(tmp_path, "first"), CONFIG, seed=seed) as a:
            first = wait_until(lambda: leader_pid(a), what="the bot leading the watch")
            broken.touch()
            a.said(lambda c: bool(alerts(a, node)), method="chat.postMessage", timeout=WINDOW + 5)
            wait_until(lambda: len(stored(a)) == 1, what="the incident in Consul")
            os.kill(first, signal.SIGTERM)  # stopped, as by systemd; a new process on the same Consul
            wait_until(lambda: _gone(first), what="the first bot gone")
            # SIGTERM lets the watch's lock go as it stops, not a TTL later.
            assert leader_pid(a) is None
            with replica(a, folder(tmp_path, "second"), CONFIG):
                wait_until(lambda: leader_pid(a) not in (None, first), timeout=TAKEOVER, what="the new bot leading")
                node.wait_probes(rounds(2 * WINDOW))
                assert len(alerts(a, node)) == 1
                broken.unlink()
                a.said(lambda c: "Resolved" in c.text, method="chat.postMessage", timeout=WINDOW + 5)
                wait_until(lambda: stored(a) == [], what="the resolved incident deleted from Consul")


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie until its parent (the fixture) reaps it


async def test_a_deposed_leader_stops_before_another_leads_and_a_follower_s_switch_reaches_the_leader(
    consul: Consul,
) -> None:
    """In one process, two watchers on one Consul stand-in: Consul ends the leader's session (an operator
    destroys it); the leader stops, at no moment do both lead, the incident is not alerted again by
    whichever wins next, and `watch off` on the replica that does not lead stops the leader's alerts."""
    health = HealthSettings(url="http://{host}:{port}/ping", interval=0.1, timeout=0.1, window=0.5, rise=2)
    apps = {"app": AppSettings("app", "app", health=health)}
    upstream = FakeStore("app", ["10.0.0.1:9000", "10.0.0.2:9000"])
    prober = FakeProber()
    prober.default["10.0.0.1:9000"] = False
    notifiers = [PostingNotifier(), PostingNotifier()]
    watchers = [
        HealthWatcher(
            apps, upstream, prober, FakeNginx(upstream, list_view=False), SystemClock(), None,
            WatchStateKV(ConsulStore((consul.url,))),
            WatchElection(ConsulStore((consul.url,)), f"bot-{i}:1", TTL),
        )
        for i in range(2)
    ]

    def alerted(address: str) -> list[WatchEvent]:
        return [e for n in notifiers for e in n.of(WatchEvent) if e.kind == "alert" and str(e.address) == address]

    async def until(condition: Callable[[], object], seconds: float, what: str) -> None:
        for _ in range(int(seconds / 0.05)):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what} not within {seconds} s")

    try:
        for watcher, notifier in zip(watchers, notifiers, strict=True):
            notifier.watcher = watcher
            watcher.start(notifier)
        await until(lambda: alerted("10.0.0.1:9000"), 5, "the alert")
        (first,) = [w for w in watchers if w.leading()]
        await until(lambda: all(w.watches["app"].incidents() for w in watchers), 3, "the other replica's mirror")
        assert election(first)._session is not None
        await destroy_session(consul, election(first)._session.session)
        await until(lambda: not first.leading(), TTL / 5 + 2, "the deposed leader stopping")
        for _ in range(int(TAKEOVER / 0.05)):  # sample the handover: never two leaders
            assert not all(w.leading() for w in watchers)
            if any(w.leading() for w in watchers):
                break
            await asyncio.sleep(0.05)
        (leader,) = [w for w in watchers if w.leading()]  # either may win the new election
        (follower,) = [w for w in watchers if w is not leader]
        polls = len(prober.probes)
        await until(lambda: len(prober.probes) >= polls + 20, 10, "the new leader's rounds")
        assert len(alerted("10.0.0.1:9000")) == 1

        follower.set_enabled("app", False)  # pressed on the replica that does not lead
        await follower.settle()
        prober.default["10.0.0.2:9000"] = False
        await until(lambda: not leader.watches["app"].enabled, 3, "the switch reaching the leader")
        # Rounds still come (and return at once) while it is off: count them, an alert would have come.
        calls = leader.stats["app"].started
        await until(lambda: leader.stats["app"].started >= calls + 20, 10, "two windows of rounds")
        assert alerted("10.0.0.2:9000") == []
        follower.set_enabled("app", True)
        await until(lambda: alerted("10.0.0.2:9000"), 5, "the alert once the watch is on again")
    finally:
        for watcher in watchers:
            await watcher.aclose()


def election(watcher: HealthWatcher) -> WatchElection:
    assert watcher.election is not None
    return watcher.election
