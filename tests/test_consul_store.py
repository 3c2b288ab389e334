"""The Consul adapter against the Consul stand-in, over HTTP, as it talks to a real Consul."""

import json

import pytest

from bot.consul_store import ConsulStore
from bot.processes import free_port
from commands.addresses import ServerAddress
from commands.errors import StoreForbidden, StoreUnavailable
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
