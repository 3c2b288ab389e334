"""/readyz under a burst: one Consul question at a time, its answer shared for a second."""

from __future__ import annotations

import asyncio

from bot.slack.http_server import SharedAnswer


async def test_a_burst_of_readiness_checks_asks_consul_once_and_a_later_one_asks_again() -> None:
    asked: list[float] = []
    release = asyncio.Event()

    async def unready() -> str | None:
        asked.append(asyncio.get_running_loop().time())
        await release.wait()  # Consul slow to answer: every caller arrives while the first one waits
        return "Consul did not answer within 2 s"

    ready = SharedAnswer(unready, fresh_for=0.2)
    burst = [asyncio.create_task(ready()) for _ in range(50)]
    await asyncio.sleep(0)  # one turn of the loop: every task has run up to its first wait
    assert len(asked) == 1  # the other 49 wait for the first one's answer, not for Consul
    release.set()
    answers = await asyncio.wait_for(asyncio.gather(*burst), 5)
    assert answers == ["Consul did not answer within 2 s"] * 50 and len(asked) == 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(asked) == 1 and loop.time() < deadline:  # bounded: once the answer is stale it is asked anew
        await ready()
        await asyncio.sleep(0.05)
    assert len(asked) == 2 and asked[1] - asked[0] >= 0.2


async def test_a_readiness_check_that_breaks_is_unready_and_shared_like_any_answer() -> None:
    calls = 0

    async def broken() -> str | None:
        nonlocal calls
        calls += 1
        raise ValueError("Expecting value: line 1 column 1 (char 0)")  # HTML where Consul's JSON was due

    ready = SharedAnswer(broken, fresh_for=60)
    answers = await asyncio.wait_for(asyncio.gather(*(ready() for _ in range(10))), 5)
    assert answers[0] == "the readiness check failed: ValueError: Expecting value: line 1 column 1 (char 0)"
    assert set(answers) == {answers[0]} and calls == 1  # one call, not one per request
