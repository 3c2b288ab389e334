"""Acknowledgement latency of `upstream-bot serve --http` while Consul is slow.

50 signed `/upstream status app` commands in flight at once; the Consul stand-in answers every
request after 2 s. Slack wants the ack within 3 s; the target here is p99 < 50 ms, i.e. the ack
never waits for Consul. Prints p50/p99/max and the ratio to the target. Floor, measured in the same
run under the same 50 requests: a bare aiohttp endpoint (benchmarks/fleet.py `slack-floor`, its own
process) that checks the same Slack signature, parses the form and answers 200; the bot's p99 ratio
to it is printed too. No assertion: figures only.

Run: .venv/bin/python benchmarks/ack_latency.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet import signed_command, start_slack_floor, stop_all

from bot.processes import free_port, stop, wait_http
from bot.standins.server_thread import ServerThread
from bot.standins.slack import SlackStandIn
from tests.helpers import SIGNING_SECRET

COMMANDS = 50
CONSUL_DELAY = 2.0
TARGET_P99 = 0.050


def signed_request(host: str, i: int) -> bytes:
    return signed_command(host, "status app", i, SIGNING_SECRET, keep_alive=False)


def quantiles(times: list[float]) -> tuple[float, float, float]:
    """p50, p99, max of sorted `times`."""
    return statistics.median(times), times[min(len(times) - 1, round(0.99 * len(times)) - 1)], times[-1]


async def fire(url: str) -> list[float]:
    """Send the commands over connections opened beforehand (as Slack's keep-alive pool would) and time
    each from its first byte out to the status line back. A minimal client: an HTTP library in this
    same 2-core machine would add its own per-request cost to the figure (seen: ~5x)."""
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    requests = [signed_request(f"{host}:{port}", i) for i in range(COMMANDS + 1)]
    connections = [await asyncio.open_connection(host, port) for _ in range(COMMANDS + 1)]

    async def one(i: int) -> float:
        reader, writer = connections[i]
        started = time.perf_counter()
        writer.write(requests[i])
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), timeout=10)
        elapsed = time.perf_counter() - started
        writer.close()
        if b" 200 " not in status:
            raise RuntimeError(f"the bot answered {status!r}")
        return elapsed

    await one(COMMANDS)  # warm-up
    return list(await asyncio.gather(*(one(i) for i in range(COMMANDS))))


def main() -> None:
    consul_port, bot_port = free_port(), free_port()
    consul = subprocess.Popen(
        [sys.executable, "-m", "bot.standins.consul", "--port", str(consul_port), "--delay", str(CONSUL_DELAY)],
        stdout=subprocess.DEVNULL,
    )
    slack = SlackStandIn()
    slack_server = ServerThread(slack.app()).start()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "upstream-bot.yml"
        config.write_text("apps:\n  app: {}\n")
        env = {
            **os.environ,
            "UPSTREAM_BOT_CONFIG": str(config),
            "CONSUL_HTTP_ADDR": f"http://127.0.0.1:{consul_port}",
            "SLACK_BOT_TOKEN": "xoxb-bench",
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": f"{slack_server.url}/api/",
        }
        bot = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", "--http", "--port", str(bot_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_http(f"http://127.0.0.1:{consul_port}/_standin/ready", timeout=20)
            wait_http(f"http://127.0.0.1:{bot_port}/healthz", timeout=20)
            times = sorted(asyncio.run(fire(f"http://127.0.0.1:{bot_port}")))
            # The answers come after Consul's 2 s; wait for them (bounded) to show the work did happen.
            deadline = time.monotonic() + 30
            while len(slack.calls("chat.postEphemeral")) < COMMANDS + 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop([bot, consul])
            slack_server.stop()
    floor, floor_port = start_slack_floor(SIGNING_SECRET)
    try:
        floor_times = sorted(asyncio.run(fire(f"http://127.0.0.1:{floor_port}")))
    finally:
        stop_all([floor])
    p50, p99, worst = quantiles(times)
    f50, f99, fmax = quantiles(floor_times)
    print(f"ack latency, {COMMANDS} commands in flight, Consul answering after {CONSUL_DELAY:g} s:")
    print(f"  bot:   p50 {p50 * 1000:.1f} ms   p99 {p99 * 1000:.1f} ms   max {worst * 1000:.1f} ms")
    print(
        f"  floor (bare aiohttp endpoint, same signed requests): p50 {f50 * 1000:.1f} ms   p99 {f99 * 1000:.1f} ms   "
        f"max {fmax * 1000:.1f} ms"
    )
    print(f"  ratio bot/floor: p50 {p50 / f50:.2f}   p99 {p99 / f99:.2f} (target <= 2)")
    print(f"  p99 / target ({TARGET_P99 * 1000:.0f} ms): {p99 / TARGET_P99:.2f}")
    print(f"  p99 / Consul delay: {p99 / CONSUL_DELAY:.3f}")
    print(f"  answers posted after the acks: {len(slack.calls('chat.postEphemeral'))} of {COMMANDS + 1}")


if __name__ == "__main__":
    main()
