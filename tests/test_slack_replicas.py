"""Two `upstream-bot serve --http` replicas on one Consul and one Slack: a question asked through one is
answered by a press that reaches the other, exactly once (the pending confirmations live in Consul)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bot.consul.pending import PREFIX, PRUNE_MAX, PendingKV, decode_record
from bot.consul.store import ConsulStore
from bot.slack.pending import ClaimRefused, Confirmations
from bot.standins.consul import Faults
from commands.events import WatchOffRequested
from tests.conftest import Consul
from tests.helpers import wait_until
from tests.slack_bot import Bot, confirm_key, replica, running_bot
from tests.test_slack_release import app_config


def config(services: list[int]) -> str:
    return (
        "slack:\n  channel: C0DEPLOY\naccess:\n  operators: [U1ALICE, U2BOB]\napps:\n  app:\n    approvers: [U2BOB]\n"
        + app_config("web")
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, services: list[int]) -> Iterator[tuple[Bot, Bot]]:
    with running_bot(tmp_path_factory.mktemp("replica-a"), config(services)) as a:
        with replica(a, tmp_path_factory.mktemp("replica-b"), config(services)) as b:
            yield a, b


@pytest.fixture
def seeded(pair: tuple[Bot, Bot], services: list[int]) -> tuple[Bot, Bot]:
    a, _b = pair
    consul_faults(a, Faults())
    a.slack.clear()
    for key in list(a.consul.standin.kv):
        a.consul.server.call(a.consul.standin.kv.pop, key)
    a.consul.add_server("app", "127.0.0.1:9001")
    a.consul.add_server("app", "127.0.0.1:9002")
    for port in services[:2]:
        a.consul.add_server("web", f"127.0.0.1:{port}")
    return pair


def consul_faults(bot: Bot, faults: Faults) -> None:
    bot.consul.server.call(setattr, bot.consul.standin, "faults", faults)


def down(bot: Bot, app: str, address: str) -> int:
    return json.loads(bot.consul.value(f"upstreams/{app}/{address}") or "{}").get("down", 0)


def test_a_drain_asked_on_one_replica_is_confirmed_on_the_other_once(seeded: tuple[Bot, Bot]) -> None:
    a, b = seeded
    a.command("/drain", "127.0.0.1:9001")
    key = confirm_key(a.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postEphemeral"))
    # It waits in Consul, as JSON that names what the press will do.
    stored = decode_record(a.consul.value(PREFIX + key))
    assert stored["subject"].action == "drain" and stored["channel"] and stored["requester"] == "U1ALICE"
    assert stored["used_by"] is None and stored["expires_at"] > stored["created_at"]
    assert down(a, "app", "127.0.0.1:9001") == 0

    assert b.press("confirm", key).status_code == 200
    b.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postMessage")
    wait_until(lambda: down(a, "app", "127.0.0.1:9001") == 1, what="the drain in Consul")
    assert decode_record(a.consul.value(PREFIX + key))["used_by"] == "U1ALICE"

    # The same press again, now reaching the replica that asked: refused, nothing more done.
    assert a.press("confirm", key).status_code == 200
    a.said(lambda c: "Already confirmed by <@U1ALICE>" in c.text)
    drains = wait_until(lambda: [e for e in a.history("app") if e["what"] == "drain"], what="the drain recorded")
    assert len(drains) == 1
    assert len([c for c in a.slack.calls("chat.postMessage") if "Drain 127.0.0.1:9001" in c.text]) == 1


def test_a_release_started_on_one_replica_is_started_once(seeded: tuple[Bot, Bot], services: list[int]) -> None:
    a, b = seeded
    a.command("/release", "web --version 2")
    plan = a.said(lambda c: "release_start" in json.dumps(c.args.get("blocks")), method="chat.postEphemeral")
    key = confirm_key(plan, "release_start")
    assert b.press("release_start", key).status_code == 200
    assert a.press("release_start", key).status_code == 200  # a double press, through the other replica
    a.said(lambda c: "Already started by <@U1ALICE>" in c.text)
    a.said(lambda c: "succeeded" in c.text, method="chat.update", timeout=60)
    posts = [c for c in a.slack.calls("chat.postMessage") if "Release web 2" in c.text and "thread_ts" not in c.args]
    assert len(posts) == 1
    wait_until(lambda: "release.finish" in json.dumps(a.history("web")), what="the release recorded")
    assert len([e for e in a.history("web") if e["what"] == "release.start"]) == 1
    assert all(down(a, "web", f"127.0.0.1:{p}") == 0 for p in services[:2])


def test_a_button_nobody_stored_is_refused_on_every_replica(seeded: tuple[Bot, Bot]) -> None:
    for bot in seeded:
        bot.slack.clear()
        assert bot.press("confirm", "0123456789ab:1").status_code == 200
        bot.said(lambda c: "expired" in c.text)
        assert bot.press("confirm", "../../upstreams/app:1").status_code == 200  # not a pending key at all
        bot.said(lambda c: "expired" in c.text)
    assert down(seeded[0], "app", "127.0.0.1:9001") == 0


def test_a_press_while_consul_is_unreachable_is_refused_and_changes_nothing(seeded: tuple[Bot, Bot]) -> None:
    a, b = seeded
    a.command("/drain", "127.0.0.1:9001")
    key = confirm_key(a.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postEphemeral"))
    consul_faults(a, Faults(status=503, body="consul is down"))
    assert b.press("confirm", key).status_code == 200
    refused = b.said(lambda c: "Consul did not answer" in c.text)
    assert "Nothing was changed" in refused.text
    consul_faults(a, Faults())
    assert down(a, "app", "127.0.0.1:9001") == 0
    assert decode_record(a.consul.value(PREFIX + key))["used_by"] is None  # the button still works
    assert b.press("confirm", key).status_code == 200
    b.said(lambda c: "Drain 127.0.0.1:9001" in c.text, method="chat.postMessage")
    wait_until(lambda: down(a, "app", "127.0.0.1:9001") == 1, what="the drain in Consul")


async def test_an_expired_entry_is_refused_and_old_ones_are_pruned_a_bounded_number_at_a_time(consul: Consul) -> None:
    kv = PendingKV(ConsulStore((consul.url,)))
    old = Confirmations(ttl=-1.0, kv=kv)  # everything it keeps has expired already
    first = await old.add(WatchOffRequested("app", "U1ALICE"), 1, "C0DEPLOY")
    with pytest.raises(ClaimRefused, match="expired"):
        await old.check(first.key)
    with pytest.raises(ClaimRefused, match="expired"):
        await old.claim(first.key, "U1ALICE", "confirmed")
    assert consul.value(PREFIX + first.key) is None  # refused and pruned at once
    fresh = Confirmations(kv=kv)
    for _ in range(PRUNE_MAX + 5):  # none of them old for `fresh`: none is pruned
        await fresh.add(WatchOffRequested("app", "U1ALICE"), 1, "C0DEPLOY")
    await old.add(WatchOffRequested("app", "U1ALICE"), 1, "C0DEPLOY")  # for `old`, all are: it prunes PRUNE_MAX
    left = [k for k in consul.server.call(lambda: list(consul.standin.kv)) if k.startswith(PREFIX)]
    assert len(left) == PRUNE_MAX + 6 - PRUNE_MAX
    kept = await fresh.add(WatchOffRequested("app", "U1ALICE"), 1, "C0DEPLOY")
    assert (await fresh.claim(kept.key, "U2BOB", "confirmed")).used_by == "U2BOB"
    with pytest.raises(ClaimRefused, match="Already confirmed by <@U2BOB>"):
        await fresh.claim(kept.key, "U1ALICE", "confirmed")
