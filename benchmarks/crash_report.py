"""How soon a release whose bot died is told: from the SIGKILL of the replica running it to the
interrupted-release message, as a ratio to the session TTL (target <= 1.2).

Real processes: two `upstream-bot serve --http` replicas on one Consul stand-in and one Slack stand-in,
`consul.session_ttl: 10s` (the shortest Consul takes), three sample services. Each round starts a
release on a replica, holds it in its first node's deploy step (a gate file), SIGKILLs the replica
holding the release lock (the lock's value names it, host:pid) at a point of the session's renewal cycle
that moves from round to round, and times, on the wall clock:

- kill -> lock free: Consul ending the dead session, the floor no bot can beat. The session is renewed
  every TTL/3, so it ends between 2/3 TTL and one TTL after the kill (the stand-in ends it exactly one
  TTL after its last renewal; a real Consul may take up to 2 x TTL).
- kill -> message: when the Slack stand-in received the channel message (its own clock), and its ratio
  to the TTL and to the floor. The difference is the bot's own part: the surviving replica looks at the
  lock keys once a second, reads and marks the journal, and posts.

After each round the release is closed with its Leave button on the survivor, its node put back, and the
killed replica is started again (as its supervisor would). Rounds are bounded (--rounds, default 3; each takes about the
TTL plus a few seconds).

Run: .venv/bin/python benchmarks/crash_report.py [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.interruptions import CHECK_EVERY
from bot.processes import free_port, start_sample_service, stop
from bot.standins.server_thread import ServerThread
from bot.standins.slack import SlackStandIn
from tests.conftest import Consul
from tests.helpers import processes_matching, wait_until
from tests.slack_bot import Bot, served
from tests.test_replicas_crash import interrupted_posts, journal, lock_holder, resume_buttons, start_release

TTL = 10.0
TARGET = 1.2


def config(ports: list[int], hold: Path, marker: str) -> str:
    wait = f"i=0; while [ -e {shlex.quote(str(hold))} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"
    deploy = f"sh -c {shlex.quote(wait)} {marker}"  # held (at most 60 s) while the gate file exists
    return (
        f"consul:\n  session_ttl: {TTL:g}s\nslack:\n  channel: C0DEPLOY\naccess:\n  operators: [U1ALICE]\n"
        "apps:\n  app:\n"
        "    health:\n      url: http://{host}:{port}/ping\n      interval: 300ms\n      timeout: 300ms\n"
        "      window: 10s\n      rise: 1\n"
        "    nginx:\n      upsync_interval: 100ms\n"
        "    release:\n      executor: local\n      drain_wait: 100ms\n"
        f'      steps:\n        stop: "true"\n        deploy: {json.dumps(deploy)}\n        start: "true"\n'
    )


class Replicas:
    """The `serve` processes, by name; a killed one is started again under the same name."""

    def __init__(self, folder: Path, text: str, consul: Consul, slack: SlackStandIn, slack_url: str) -> None:
        self.folder, self.text, self.consul, self.slack, self.slack_url = folder, text, consul, slack, slack_url
        self.running: dict[str, tuple[Bot, object, ExitStack]] = {}
        self.started = 0

    def start(self, name: str) -> Bot:
        self.started += 1
        folder = self.folder / f"{name}-{self.started}"
        folder.mkdir()
        exits = ExitStack()
        process = exits.enter_context(served(folder, self.text, self.consul.url, self.slack_url))
        bot = Bot(process.url, self.consul, self.slack, self.slack_url)
        self.running[name] = (bot, process.process, exits)
        return bot

    def kill_holder(self) -> tuple[str, float]:
        """SIGKILL the replica holding the release lock; its name and the wall-clock time of the kill."""
        holder = lock_holder(self.consul.url)
        assert holder is not None, "nobody holds the release lock"
        pid = int(str(holder["holder"]).rsplit(":", 1)[1])
        (name,) = [n for n, (_, p, _) in self.running.items() if p.pid == pid]  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
        at = time.time()
        self.running[name][1].wait(10)  # type: ignore[attr-defined]
        return name, at

    def restart(self, name: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # a replica prints its log as it stops
            self.running.pop(name)[2].close()
        self.start(name)

    def close(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            for _, _, exits in self.running.values():
                exits.close()


def one_round(replicas: Replicas, hold: Path, marker: str, version: str, offset: float) -> tuple[float, float]:
    """(kill -> lock free, kill -> message), in seconds. The kill comes `offset` seconds after the deploy
    step started: rounds spread over the session's renewal cycle (the worst case is a kill right after a
    renewal: the session then lives a whole TTL)."""
    slack = replicas.slack
    slack.clear()
    hold.touch()
    starter, other = replicas.running["a"][0], "b"
    start_release(starter, version)
    wait_until(lambda: processes_matching(marker), 30, "the deploy step running")
    time.sleep(offset)  # where in the renewal cycle the crash lands (the deploy is held meanwhile)
    killed, at = replicas.kill_holder()
    survivor = replicas.running[other if killed == "a" else "a"][0]
    free = wait_until(lambda: lock_holder(replicas.consul.url) is None and time.time(), 3 * TTL, "the lock freed")
    post = wait_until(lambda: interrupted_posts(slack), 3 * TTL, "the interrupted release told")[0]
    # Closed for the next round: Leave on the survivor (Restore would wait for the dead bot's step deadline,
    # its timeout), then the node put back by hand, as an operator would once the step is gone.
    hold.unlink()
    survivor.press("release_resume", resume_buttons(post)["leave"])
    wait_until(lambda: journal(replicas.consul).get("finished_at") is not None, 60, "the release closed")
    for node in journal(replicas.consul)["nodes"]:
        replicas.consul.add_server("app", node["address"])  # serving again
    wait_until(lambda: lock_holder(replicas.consul.url) is None, 30, "the lock let go")
    replicas.restart(killed)
    wait_until(lambda: not processes_matching(marker), 30, "the orphaned deploy step gone")
    return free - at, post.at - at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, choices=range(1, 11), metavar="N (1..10)")
    args = parser.parse_args()
    consul = Consul()
    slack = SlackStandIn()
    slack_server = ServerThread(slack.app()).start()
    ports = [free_port() for _ in range(3)]
    services = [start_sample_service(p) for p in ports]
    for port in ports:
        consul.add_server("app", f"127.0.0.1:{port}")
    results: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="crash-report-") as tmp:
        folder = Path(tmp)
        hold, marker = folder / "hold-deploy", f"upstream-bot-crash-report-{folder.name}"
        replicas = Replicas(folder, config(ports, hold, marker), consul, slack, slack_server.url)
        try:
            replicas.start("a")
            replicas.start("b")
            for round_ in range(args.rounds):
                offset = round_ * (TTL / 3) / args.rounds  # renewals come every TTL/3
                free, told = one_round(replicas, hold, marker, str(round_ + 2), offset)
                results.append((free, told))
                print(
                    f"round {round_ + 1}: kill -> lock free {free:5.2f} s, kill -> message {told:5.2f} s "
                    f"(ratio to TTL {told / TTL:.3f}; the bot's own part {told - free:.2f} s)",
                    flush=True,
                )
        finally:
            hold.unlink(missing_ok=True)
            replicas.close()
            stop(services)
            slack_server.stop()
            consul.stop()
    told = [t for _, t in results]
    own = [t - f for f, t in results]
    worst = max(told)
    print(
        f"session TTL {TTL:g} s, one look every {CHECK_EVERY:g} s; {len(results)} rounds: kill -> message "
        f"median {statistics.median(told):.2f} s, worst {worst:.2f} s"
    )
    print(f"  the bot's own part (lock free -> message): median {statistics.median(own):.2f} s, worst {max(own):.2f} s")
    print(f"  worst ratio to the TTL: {worst / TTL:.3f} (target <= {TARGET})")
    print(json.dumps({"ratio_to_ttl": round(worst / TTL, 4), "own_seconds": round(max(own), 3)}))


if __name__ == "__main__":
    main()
