"""The Consul adapter against the Consul stand-in, over HTTP, as it talks to a real Consul."""

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import pytest

from bot.consul import store as consul_store
from bot.consul.store import ConsulStore
from bot.processes import free_port
from commands.addresses import ServerAddress
from commands.errors import StoreForbidden, StoreNotFound, StoreRejected, StoreUnavailable, StoreUncertain
from tests.conftest import Consul

A = ServerAddress("127.0.0.1", 9001)


async def test_read_lists_servers_with_their_modify_index_and_skips_bad_keys(consul: Consul) -> None:
    index = consul.add_server("app", "127.0.0.1:9001")
    consul.add_server("app", "127.0.0.1:9002", down=1)
    consul.put("upstreams/app/web-1:9003", "{}")
    consul.put("upstreams/application/127.0.0.1:9999", "{}")  # another upstream sharing the name prefix
    upstream = await ConsulStore((consul.url,)).read("app")
    assert [str(s.address) for s in upstream.servers] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert upstream.servers[0].modify_index == index
    assert [s.drained for s in upstream.servers] == [False, True]
    assert upstream.skipped_keys == ("upstreams/app/web-1:9003",)


async def test_an_empty_upstream_reads_as_no_servers(consul: Consul) -> None:
    assert (await ConsulStore((consul.url,)).read("nothing")).servers == ()


async def test_writes_are_check_and_set_and_keep_unknown_fields(consul: Consul) -> None:
    consul.put("upstreams/app/127.0.0.1:9001", '{"weight":2,"down":0,"zone":"eu"}')
    store = ConsulStore((consul.url,))
    entry = (await store.read("app")).servers[0]
    assert await store.write("app", A, entry.with_down(True), entry.modify_index)
    assert json.loads(consul.value("upstreams/app/127.0.0.1:9001") or "") == {"weight": 2, "down": 1, "zone": "eu"}
    # The same index again is stale now: nothing is written.
    assert not await store.write("app", A, entry.with_down(False), entry.modify_index)
    assert json.loads(consul.value("upstreams/app/127.0.0.1:9001") or "")["down"] == 1
    assert not await store.write("app", A, {"weight": 1}, 0)  # cas=0 only creates


async def test_failover_to_the_next_address_when_the_first_is_down(consul: Consul) -> None:
    consul.add_server("app", "127.0.0.1:9001")
    dead = f"http://127.0.0.1:{free_port()}"
    store = ConsulStore((dead, consul.url), timeout=2)
    assert len((await store.read("app")).servers) == 1


async def test_unreachable_consul_names_every_address_tried() -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with pytest.raises(StoreUnavailable) as error:
        await ConsulStore(tuple(dead), timeout=1).read("app")
    assert all(f"{d}: connection refused" in error.value.message for d in dead)


async def test_no_cluster_leader_is_retried_then_the_next_address_is_used(consul: Consul) -> None:
    leaderless = Consul()
    try:
        leaderless.standin.faults.leaderless = True
        consul.add_server("app", "127.0.0.1:9001")
        store = ConsulStore((leaderless.url, consul.url))
        assert len((await store.read("app")).servers) == 1
    finally:
        leaderless.stop()


async def test_a_refused_token_says_so() -> None:
    guarded = Consul(token="right")
    try:
        with pytest.raises(StoreForbidden, match="CONSUL_HTTP_TOKEN"):
            await ConsulStore((guarded.url,), token="wrong").read("app")
        with pytest.raises(StoreForbidden, match="403"):
            await ConsulStore((guarded.url,)).read("app")
        assert (await ConsulStore((guarded.url,), token="right").read("app")).servers == ()
    finally:
        guarded.stop()


async def test_consul_http_addr_in_the_environment_does_not_confuse_the_library(
    consul: Consul, monkeypatch: pytest.MonkeyPatch
) -> None:
    # python-consul2 would parse this itself and fail on the comma; the adapter passes addresses explicitly.
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"{consul.url},http://127.0.0.1:1")
    consul.add_server("app", "127.0.0.1:9001")
    assert len((await ConsulStore((consul.url,)).read("app")).servers) == 1


# -- what a failure means: 4xx answered as such, 5xx and transport errors fail over ---------------


@pytest.fixture
def other() -> Iterator[Consul]:
    """A second, healthy Consul that would answer anything: it must not be asked."""
    c = Consul()
    c.add_server("app", "127.0.0.1:9001")
    yield c
    c.stop()


async def test_a_bad_request_is_rejected_with_its_status_and_not_failed_over(consul: Consul, other: Consul) -> None:
    store = ConsulStore((consul.url, other.url))
    with pytest.raises(StoreRejected) as error:
        await store.call(lambda c: c.kv.get("upstreams/app/", index="not-a-number"), "reading with a bad index")
    assert error.value.status == 400
    assert "Invalid index or wait" in error.value.message  # Consul's own text says what was wrong
    assert other.standin.requests == 0


async def test_a_gone_session_is_not_found_and_not_failed_over(consul: Consul, other: Consul) -> None:
    store = ConsulStore((consul.url, other.url))
    with pytest.raises(StoreNotFound) as error:
        await store.call(lambda c: c.session.renew("0b7e5d3a-0000-0000-0000-000000000000"), "renewing")
    assert error.value.status == 404
    assert other.standin.requests == 0


async def test_a_value_too_large_is_rejected_413_and_not_written_elsewhere(consul: Consul, other: Consul) -> None:
    store = ConsulStore((consul.url, other.url))
    big = "x" * (600 * 1024)  # over Consul's 512 KiB value limit
    with pytest.raises(StoreRejected) as error:
        await store.call(lambda c: c.kv.put("upstreams/app/big", big), "writing a big value", write=True)
    assert error.value.status == 413
    assert "too large" in error.value.message
    assert other.standin.requests == 0 and consul.value("upstreams/app/big") is None


async def test_rate_limiting_429_is_rejected_not_failed_over(consul: Consul, other: Consul) -> None:
    consul.standin.faults.status, consul.standin.faults.body = 429, "rate limit exceeded"
    store = ConsulStore((consul.url, other.url))
    with pytest.raises(StoreRejected, match="429: rate limit exceeded") as error:
        await store.read("app")
    assert error.value.status == 429
    assert other.standin.requests == 0


async def test_a_server_error_makes_a_write_uncertain_but_a_read_fails_over(consul: Consul, other: Consul) -> None:
    consul.standin.faults.status, consul.standin.faults.body = 503, "rpc error: timed out enqueuing operation"
    store = ConsulStore((consul.url, other.url))
    with pytest.raises(StoreUncertain, match="503"):
        await store.write("app", A, {"down": 1}, 0)
    # The write may have been applied by the first Consul: it is not sent anywhere else.
    assert other.standin.requests == 0
    assert len((await store.read("app")).servers) == 1  # a read is answered by the other address
    assert other.standin.requests == 1


# -- "No cluster leader": an election takes seconds ------------------------------------------------


async def test_a_read_waits_out_an_election_of_a_few_seconds(consul: Consul) -> None:
    consul.add_server("app", "127.0.0.1:9001")
    consul.standin.faults.leaderless = True
    election = threading.Timer(3.0, lambda: consul.server.call(setattr, consul.standin.faults, "leaderless", False))
    election.start()
    try:
        started = time.monotonic()
        upstream = await ConsulStore((consul.url,)).read("app")
        waited = time.monotonic() - started
    finally:
        election.cancel()
    assert len(upstream.servers) == 1
    assert waited >= 2.5  # it really was refused until the election ended...
    assert consul.standin.requests >= 4  # ...and asked again, with pauses, meanwhile


async def test_a_leaderless_consul_beyond_the_budget_is_unavailable(
    consul: Consul, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consul_store, "LEADERLESS_BUDGET", 1.0)
    consul.standin.faults.leaderless = True
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="No cluster leader"):
        await ConsulStore((consul.url,)).read("app")
    assert time.monotonic() - started < 3.0
    assert consul.standin.requests >= 3  # 0.25 + 0.5 s of pauses: three attempts fit in one second


# -- writes whose answer is lost are never resent ---------------------------------------------------


def _same_consul_twice(consul: Consul) -> tuple[str, str]:
    """Two addresses of one Consul: a resent write would show as a second write request."""
    return consul.url, f"http://localhost:{consul.server.port}"


async def test_a_write_answered_too_late_is_uncertain_and_not_resent(consul: Consul) -> None:
    consul.add_server("app", "127.0.0.1:9001")
    store = ConsulStore(_same_consul_twice(consul), timeout=0.5)
    entry = (await store.read("app")).servers[0]
    consul.standin.faults.late_writes = 2.0  # committed at once, answered after the client gave up
    with pytest.raises(StoreUncertain, match=r"no answer within 0\.5 s"):
        await store.write("app", A, entry.with_down(True), entry.modify_index)
    assert json.loads(consul.value("upstreams/app/127.0.0.1:9001") or "")["down"] == 1
    assert consul.standin.write_requests == 1
    consul.standin.faults.late_writes = 0
    assert (await store.read("app")).servers[0].drained  # what the writer does next: read it back


async def test_a_connection_dropped_after_a_delete_is_uncertain_and_not_resent(consul: Consul) -> None:
    index = consul.add_server("app", "127.0.0.1:9001")
    store = ConsulStore(_same_consul_twice(consul), timeout=2)
    consul.standin.faults.drop_writes = True
    with pytest.raises(StoreUncertain, match="connection dropped"):
        await store.delete("app", A, index)
    assert consul.value("upstreams/app/127.0.0.1:9001") is None
    assert consul.standin.write_requests == 1


async def test_a_write_that_was_never_sent_goes_to_the_next_address(consul: Consul) -> None:
    index = consul.add_server("app", "127.0.0.1:9001")
    store = ConsulStore((f"http://127.0.0.1:{free_port()}", consul.url), timeout=2)
    assert await store.write("app", A, {"down": 1}, index)
    assert consul.standin.write_requests == 1


# -- guarded writes: one transaction with the witnesses' ModifyIndex --------------------------------

B = ServerAddress("127.0.0.1", 9002)
C = ServerAddress("127.0.0.1", 9003)


async def test_a_guarded_write_lands_when_its_witnesses_are_unchanged(consul: Consul) -> None:
    consul.add_server("app", str(A))
    consul.add_server("app", str(B))
    store = ConsulStore((consul.url,))
    upstream = await store.read("app")
    a, b = upstream.servers
    # C does not exist: index 0 witnesses that it still does not.
    assert await store.write("app", A, a.with_down(True), a.modify_index, {B: b.modify_index, C: 0})
    after = await store.read("app")
    assert [s.drained for s in after.servers] == [True, False]
    assert after.servers[1].modify_index == b.modify_index  # a witness is checked, not written


async def test_a_guarded_write_writes_nothing_when_a_witness_changed(consul: Consul) -> None:
    consul.add_server("app", str(A))
    consul.add_server("app", str(B))
    store = ConsulStore((consul.url,))
    a, b = (await store.read("app")).servers
    consul.add_server("app", str(B), down=1)  # someone drained B since we read it
    assert not await store.write("app", A, a.with_down(True), a.modify_index, {B: b.modify_index})
    after = (await store.read("app")).servers[0]
    assert (after.drained, after.modify_index) == (False, a.modify_index)  # not even the main key
    consul.add_server("app", str(C))  # a witness that should not exist, but does
    assert not await store.write("app", A, a.with_down(True), a.modify_index, {C: 0})
    assert not (await store.read("app")).servers[0].drained


async def test_two_guarded_drains_naming_each_other_exactly_one_lands(consul: Consul) -> None:
    stores = ConsulStore((consul.url,)), ConsulStore((consul.url,))  # two bot replicas
    for round_ in range(5):
        consul.add_server("app", str(A))
        consul.add_server("app", str(B))
        a, b = (await stores[0].read("app")).servers
        landed = await asyncio.gather(
            stores[0].write("app", A, a.with_down(True), a.modify_index, {B: b.modify_index}),
            stores[1].write("app", B, b.with_down(True), b.modify_index, {A: a.modify_index}),
        )
        drained = [s.drained for s in (await stores[0].read("app")).servers]
        assert sorted(landed) == [False, True], f"round {round_}: {landed}"
        assert drained == landed, f"round {round_}: KV says {drained}, the writers said {landed}"
