"""The Consul stand-in's transactions and faults over HTTP, and the release lock when Consul goes away."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx
import pytest

import bot.consul.lock as lock_module
from bot.consul.lock import ConsulLockManager
from bot.consul.store import ConsulStore
from commands.interfaces import LockInfo
from tests.conftest import Consul


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kv(verb: str, key: str, **fields: Any) -> dict[str, Any]:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


async def txn(consul: Consul, ops: list[Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.put(f"{consul.url}/v1/txn", json=ops)


async def modify_index(consul: Consul, key: str) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{consul.url}/v1/kv/{key}")
    assert answer.status_code == 200, answer.text
    return int(answer.json()[0]["ModifyIndex"])


async def test_a_failed_transaction_changes_nothing_and_names_each_failed_operation(consul: Consul) -> None:
    consul.put("t/a", "1")
    before = consul.standin.index
    answer = await txn(
        consul,
        [kv("set", "t/b", Value=b64("2")), kv("cas", "t/a", Value=b64("3"), Index=1), kv("check-not-exists", "t/a")],
    )
    assert answer.status_code == 409
    assert answer.json() == {
        "Results": None,
        "Errors": [
            {"OpIndex": 1, "What": 'failed to set key "t/a", index is stale'},
            {"OpIndex": 2, "What": 'key "t/a" exists'},
        ],
    }
    assert consul.value("t/b") is None and consul.value("t/a") == "1"  # the set before them was rolled back
    assert consul.standin.index == before


async def test_a_transaction_writes_with_one_index_and_wakes_a_blocking_query(consul: Consul) -> None:
    a = consul.put("t/a", "1")
    consul.put("t/gone", "x")

    async def blocking_read() -> httpx.Response:
        async with httpx.AsyncClient(timeout=15) as client:
            return await client.get(f"{consul.url}/v1/kv/t/", params={"recurse": "", "index": consul.standin.index})

    watcher = asyncio.create_task(blocking_read())
    for _ in range(100):  # until the blocking query has arrived (at most 5 s)
        if consul.standin.requests >= 1:
            break
        await asyncio.sleep(0.05)
    answer = await txn(
        consul,
        [kv("cas", "t/a", Value=b64("2"), Index=a), kv("set", "t/b", Value=b64("3")), kv("delete", "t/gone")],
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["Results"]
    assert [r["KV"]["Key"] for r in results] == ["t/a", "t/b"]  # deletes have no result
    assert all(r["KV"]["Value"] is None for r in results)  # values only come back from gets
    index = results[0]["KV"]["ModifyIndex"]
    assert results[1]["KV"]["ModifyIndex"] == index == consul.standin.index
    woken = await asyncio.wait_for(watcher, timeout=5)
    assert int(woken.headers["X-Consul-Index"]) == index
    assert sorted(item["Key"] for item in woken.json()) == ["t/a", "t/b"]


async def test_transaction_reads_checks_and_deletes(consul: Consul) -> None:
    a = consul.put("t/a", "one")
    consul.put("t/sub/x", "x")
    got = await txn(
        consul,
        [kv("get", "t/a"), kv("get-or-empty", "t/none"), kv("get-tree", "t/sub/"), kv("check-index", "t/a", Index=a)],
    )
    assert got.status_code == 200, got.text
    values = [(r["KV"]["Key"], r["KV"]["Value"]) for r in got.json()["Results"]]
    assert values == [("t/a", b64("one")), ("t/none", None), ("t/sub/x", b64("x")), ("t/a", None)]
    assert "X-Consul-KnownLeader" in got.headers  # a read-only transaction is answered like a read

    stale = await txn(consul, [kv("check-index", "t/a", Index=a + 100), kv("check-index", "t/none", Index=1)])
    assert stale.status_code == 409
    assert [e["What"] for e in stale.json()["Errors"]] == [
        f'failed index check for key "t/a", current modify index {a} != {a + 100}',
        'failed to check index, key "t/none" doesn\'t exist',
    ]

    deleted = await txn(
        consul,
        [kv("delete-cas", "t/a", Index=a), kv("delete-cas", "t/never", Index=5), kv("delete-tree", "t/sub/")],
    )
    assert deleted.status_code == 200, deleted.text  # Consul counts a key already gone as deleted
    assert consul.value("t/a") is None and consul.value("t/sub/x") is None


async def test_transaction_locks_need_a_live_session(consul: Consul) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        session = (await client.put(f"{consul.url}/v1/session/create", json={"TTL": "30s"})).json()["ID"]
    locked = await txn(consul, [kv("lock", "t/lock", Value=b64("me"), Session=session)])
    assert locked.status_code == 200, locked.text
    assert locked.json()["Results"][0]["KV"]["Session"] == session
    assert (await txn(consul, [kv("check-session", "t/lock", Session=session)])).status_code == 200
    other = await txn(consul, [kv("lock", "t/lock", Value=b64("you"), Session="no-such-session")])
    assert other.json()["Errors"][0]["What"] == 'invalid session "no-such-session"'
    unlocked = await txn(consul, [kv("unlock", "t/lock", Value=b64(""), Session=session)])
    assert unlocked.status_code == 200, unlocked.text
    assert "Session" not in unlocked.json()["Results"][0]["KV"]


async def test_malformed_or_oversized_transactions_are_refused(consul: Consul) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        garbled = await client.put(f"{consul.url}/v1/txn", content=b"not json")
    assert garbled.status_code == 400 and garbled.text.startswith("Failed to parse body")
    too_many = await txn(consul, [kv("check-not-exists", f"t/{i}") for i in range(129)])
    assert (too_many.status_code, too_many.text) == (413, "Transaction contains too many operations (129 > 128)")
    too_big = await txn(consul, [kv("set", "t/big", Value=b64("x" * (600 * 1024)))])
    assert too_big.status_code == 413
    assert consul.value("t/big") is None


async def test_faults_are_settable_over_http(consul: Consul) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.put(f"{consul.url}/_standin/faults", json={"late_writes": 1.5, "drop_writes": True})
    assert answer.json()["late_writes"] == 1.5 and answer.json()["drop_writes"] is True
    assert consul.standin.faults.late_writes == 1.5 and consul.standin.faults.drop_writes


async def test_a_stopped_consul_loses_the_lock_within_the_ttl(consul: Consul, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_module, "SESSION_TTL", 10)  # the shortest TTL Consul takes
    locks = ConsulLockManager(ConsulStore((consul.url,), timeout=1))
    lock = await locks.acquire(LockInfo("app", "r1", "U1ALICE", "bot-a:1", time.time()))
    waiter = asyncio.create_task(lock.wait_lost())
    consul.stop()  # connection refused from now on
    stopped = time.monotonic()
    await asyncio.wait_for(waiter, timeout=10 + 3)
    lost_at = time.monotonic()
    assert lock.lost
    assert lost_at >= lock.renewed_at + 10  # refused renewals alone do not lose it: only the TTL does
    assert lost_at <= stopped + 10 + 2
    await asyncio.wait_for(lock.release(), timeout=10)  # best effort against a dead Consul: no exception
