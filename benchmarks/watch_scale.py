"""The health watch at scale (issue 12): 10,000 nodes (10 apps x 1,000) probed every 10 s.

The fleet (benchmarks/fleet.py) answers `200 pong` on one port of 127.0.0.1 per node (20000-29999,
in several processes); 1 % of the nodes fail (half answer 503, half refuse connections). The Consul
stand-in lists every node. Figures only, each with its ratio to a floor measured in the same run.

Part A, in this process: the watch as `upstream-bot serve` builds it (bot.runtime.service_for: the real
Consul store, prober, nginx reader, election and state in Consul), for `--seconds`, with a 10 ms timer
sampling how late the event loop runs it. Printed: probes/s, CPU as a share of one core and per probe,
rounds and their duration as a ratio to the interval, event-loop lag p50/p99/max, memory per watched
node (RSS growth while the watch ran / nodes), connections the fleet saw, the garbage collector's passes
(a full pass holds the interpreter: the loop waits it out). Floor: a bare asyncio-streams
prober (one kept-alive connection per node, the same concurrency per app, apps at once) over the same
nodes: its CPU per probe; the ratio bot/floor.

Part B, processes: `upstream-bot serve --http` watching the same fleet (and once with no health url:
nothing watched), signed `/upstream alerts` commands at a steady `--rate` over connections opened
beforehand, each timed from its first byte out to the status line back: ack p50/p99/max; the bot's CPU
from /proc, second by second (acks sent in the seconds the bot was busy, against the others) and the
ack p99 in each interval. Floor: a bare aiohttp endpoint that checks the same signature and parses the
same form, under the same requests, alone and while a bare prober process probes the fleet at the same
interval. The CPU of the stand-ins and the fleet is printed too (they share the machine's cores).

Run: .venv/bin/python benchmarks/watch_scale.py [--apps 10] [--nodes 10000] [--seconds 60] [--interval 10]
(about 7 minutes at the defaults; --part a or --part b for one of them)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet import (
    ROOT,
    Acks,
    CommandClient,
    Fleet,
    failing,
    format_ports,
    free_port,
    layout,
    ports_free,
    proc_cpu,
    raise_nofile,
    read_line,
    rss_bytes,
    seed_consul,
    slack_calls,
    start_consul,
    start_slack_floor,
    start_slack_standin,
    stop_all,
    tree_cpu,
    write_config,
)

from bot.config import load_config
from bot.heap import keep_collections_short
from bot.processes import wait_http
from bot.runtime import service_for
from tests.helpers import SIGNING_SECRET

LAG_TICK = 0.010
COMMAND = "alerts"  # `/upstream alerts`: read-only, from the watch's memory (no Consul read, no probe)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


class LagSampler:
    """How late a 10 ms timer fires on this event loop: what a Slack handler would wait for."""

    def __init__(self, limit: float) -> None:
        self.lags: list[float] = []
        self.limit = limit  # seconds at most (bounded)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        started = time.perf_counter()
        for _ in range(int(self.limit / LAG_TICK) + 1):
            before = time.perf_counter()
            await asyncio.sleep(LAG_TICK)
            after = time.perf_counter()
            self.lags.append(max(0.0, after - before - LAG_TICK))
            if after - started > self.limit:
                return

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class LogTally(logging.Handler):
    """The bot's log records while part A runs: counted (level, logger), the first distinct messages
    kept; nothing printed meanwhile (a skipped round is one line per app and interval)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}
        self.samples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.levelname} {record.name}"
        self.counts[key] = self.counts.get(key, 0) + 1
        message = record.getMessage()
        short = message.split(" (trigger:")[0] if "Execution of job" in message else message
        if len(self.samples) < 6 and key + short[:40] not in self.samples:
            self.samples[key + short[:40]] = f"{key}: {message[:200]}"

    def __enter__(self) -> LogTally:
        root = logging.getLogger()
        self._saved = (root.handlers[:], root.level)
        root.handlers[:] = [self]
        root.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.handlers[:], level = self._saved
        root.setLevel(level)


class Others:
    """CPU of the other processes of the run (stand-ins, fleet), as shares of one core since creation."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.started = time.monotonic()
        self.before = {name: sum(tree_cpu(p) for p in pids) for name, pids in groups.items()}

    def shares(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.started, 1e-9)
        return {
            name: round((sum(tree_cpu(p) for p in pids) - self.before[name]) / wall, 2)
            for name, pids in self.groups.items()
        }


class GcTally:
    """The garbage collector's passes while the watch runs: how often a full (generation 2) pass ran and
    how long each held the interpreter (nothing else runs meanwhile, the event loop included)."""

    def __init__(self) -> None:
        self.passes: dict[int, list[float]] = {}
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.passes.setdefault(info["generation"], []).append(time.perf_counter() - self._began)

    def __enter__(self) -> GcTally:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> str:
        return "   ".join(
            f"gen {g}: {len(d)} passes, max {max(d) * 1000:.1f} ms, total {sum(d) * 1000:.0f} ms"
            for g, d in sorted(self.passes.items())
        )


class Count:
    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}

    async def emit(self, event: object) -> None:
        kind = getattr(event, "kind", type(event).__name__)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


def stat_list(stats: object, name: str) -> list[float]:
    value = getattr(stats, name, None)
    return [float(v) for v in value] if value is not None else []


# -- part A: the watch in this process ------------------------------------------------------------------


@dataclass
class WatchFigures:
    prober: str = ""
    wall: float = 0.0
    cpu: float = 0.0
    rounds: int = 0
    rounds_per_app: list[int] = field(default_factory=list)
    probes: int = 0
    durations: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    rss_growth: int = 0
    events: dict[str, int] = field(default_factory=dict)
    incidents: int = 0
    fleet: dict[str, float] = field(default_factory=dict)  # requests, accepted, open at the end
    drained_in: float = 0.0
    started: int = 0  # rounds begun (stats.started, where the watcher counts them)
    others: dict[str, float] = field(default_factory=dict)
    gc: str = ""
    log: LogTally = field(default_factory=LogTally)


async def watch_in_process(config_path: Path, seconds: float, interval: float, fleet: Fleet) -> WatchFigures:
    config = load_config(str(config_path), env={})
    out = WatchFigures()
    gc.collect()
    rss_before = rss_bytes()
    fleet_before = fleet.stats()
    lag = LagSampler(seconds + interval + 120)
    cpu_before, started = cpu_seconds(), time.monotonic()
    lag.start()
    tally = GcTally()
    async with service_for(config, echo=None) as service, contextlib.AsyncExitStack() as stack:
        stack.enter_context(tally)
        watcher: Any = service.watches
        worker = watcher.worker
        out.prober = type(watcher.prober).__name__ + (" in a ProbeWorker process" if worker else "")
        # Count the rounds in flight (to stop between rounds): the scheduler calls `watcher.round`.
        in_flight = [0]
        original = watcher.round

        async def counted(name: str) -> None:
            in_flight[0] += 1
            try:
                await original(name)
            finally:
                in_flight[0] -= 1

        watcher.round = counted
        notifier = Count()
        heap = asyncio.get_running_loop().create_task(keep_collections_short())  # as `serve` runs it
        watcher.start(notifier)
        await asyncio.sleep(seconds)
        heap.cancel()
        # No new round; the ones running finish (bounded), so every probe paid for is counted.
        watcher.scheduler.pause()
        paused = time.monotonic()
        deadline = paused + interval + 60
        for _ in range(int((interval + 60) / 0.05)):
            if not in_flight[0] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        out.drained_in = time.monotonic() - paused
        out.wall = time.monotonic() - started
        out.cpu = cpu_seconds() - cpu_before
        if worker is not None and worker.pid is not None:  # the probes' process is the bot's too
            out.cpu += proc_cpu(worker.pid)
        out.rss_growth = rss_bytes() - rss_before
        await lag.stop()
        fleet_after = fleet.stats()
        out.fleet = {k: fleet_after.get(k, 0) - fleet_before.get(k, 0) for k in ("requests", "accepted")}
        out.fleet["open"] = fleet_after.get("open", 0)
        for name, stats in watcher.stats.items():
            out.rounds += int(stats.rounds)
            out.started += int(getattr(stats, "started", stats.rounds))
            out.rounds_per_app.append(int(stats.rounds))
            out.probes += int(stats.probes)
            out.durations += stat_list(stats, "durations")
            out.lateness += stat_list(stats, "lateness")
            out.incidents += len(watcher.watches[name].incidents())
        out.events = dict(notifier.kinds)
    out.lags = lag.lags
    out.gc = tally.summary()
    return out


# -- the floor: a bare keep-alive prober ----------------------------------------------------------------


class BareProber:
    """One kept-alive asyncio-streams connection per node; a GET, the status, the body by Content-Length."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.links: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self.probes = 0
        self.failed = 0

    async def probe(self, port: int) -> bool:
        self.probes += 1
        link = self.links.pop(port, None)
        try:
            async with asyncio.timeout(self.timeout):
                if link is None:
                    link = await asyncio.open_connection("127.0.0.1", port)
                reader, writer = link
                writer.write(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                at = head.lower().find(b"content-length:")
                if at < 0:
                    raise ValueError("no Content-Length")
                await reader.readexactly(int(head[at + 15 : head.find(b"\r\n", at)]))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            if link is not None:
                link[1].close()
            self.failed += 1
            return False
        self.links[port] = link
        if not 200 <= status < 400:
            self.failed += 1
        return 200 <= status < 400

    async def round(self, apps: dict[str, list[int]], concurrency: int) -> None:
        async def app_round(ports: list[int]) -> None:
            pending = list(ports)

            async def worker() -> None:
                while pending:
                    await self.probe(pending.pop())

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(pending)))))

        await asyncio.gather(*(app_round(p) for p in apps.values()))

    def close(self) -> None:
        for _, writer in self.links.values():
            writer.close()
        self.links.clear()


async def bare_back_to_back(
    apps: dict[str, list[int]], concurrency: int, timeout: float, rounds: int
) -> dict[str, Any]:
    prober = BareProber(timeout)
    durations: list[float] = []
    cpu_before, started = cpu_seconds(), time.monotonic()
    for _ in range(rounds):
        began = time.monotonic()
        await prober.round(apps, concurrency)
        durations.append(time.monotonic() - began)
    out = {
        "cpu": cpu_seconds() - cpu_before,
        "wall": time.monotonic() - started,
        "probes": prober.probes,
        "failed": prober.failed,
        "durations": durations,
    }
    prober.close()
    return out


async def bare_paced(
    apps: dict[str, list[int]], concurrency: int, timeout: float, interval: float, seconds: float
) -> None:
    """The bare prober every `interval` for `seconds` (a process of its own, as background load); prints
    its figures as JSON."""
    prober = BareProber(timeout)
    cpu_before, started = cpu_seconds(), time.monotonic()
    durations: list[float] = []
    for i in range(int(seconds / interval) + 1):
        due = started + i * interval
        if due - started >= seconds:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        began = time.monotonic()
        await prober.round(apps, concurrency)
        durations.append(time.monotonic() - began)
    await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
    wall = time.monotonic() - started
    print(
        json.dumps({"cpu": cpu_seconds() - cpu_before, "wall": wall, "probes": prober.probes, "durations": durations})
    )
    prober.close()


# -- part B: the bot as a process, acks timed from outside -----------------------------------------------


@dataclass
class AckFigures:
    label: str
    acks: Acks
    cpu: float = 0.0
    wall: float = 0.0
    rss: int = 0
    fleet: dict[str, float] = field(default_factory=dict)
    posts: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    background: dict[str, Any] = field(default_factory=dict)
    log_samples: list[str] = field(default_factory=list)
    others: dict[str, float] = field(default_factory=dict)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (perf_counter at the end, CPU s) a second


class CpuTimeline:
    """A process's CPU, second by second, from a thread (bounded by `limit` seconds)."""

    def __init__(self, pid: int, limit: float) -> None:
        self.pid, self.limit = pid, limit
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu timeline", daemon=True)

    def _run(self) -> None:
        before = proc_cpu(self.pid)
        for _ in range(int(self.limit) + 1):
            if self._stop.wait(1.0):
                return
            now = proc_cpu(self.pid)
            self.samples.append((time.perf_counter(), now - before))
            before = now

    def __enter__(self) -> CpuTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def burst_split(figures: AckFigures, busy: float = 0.25) -> str:
    """Acks in the seconds the bot used more than `busy` s of CPU, against the others."""
    if not figures.timeline or not figures.acks.times:
        return ""
    cpu = [c for _, c in figures.timeline]
    busy_ends = [end for end, c in figures.timeline if c > busy]
    inside, outside = [], []
    for at, took in zip(figures.acks.at, figures.acks.times, strict=True):
        sent = figures.acks.origin + at
        (inside if any(end - 1.0 <= sent < end for end in busy_ends) else outside).append(took)
    return (
        f"bot CPU second by second: p50 {statistics.median(cpu):.2f} s   max {max(cpu):.2f} s; "
        f"{len(busy_ends)} of {len(cpu)} seconds over {busy:g} s: acks sent in them {len(inside)}, "
        f"p99 {quantile(inside, 0.99) * 1000:.1f} ms; the other {len(outside)}: "
        f"p99 {quantile(outside, 0.99) * 1000:.1f} ms"
    )


def run_client(port: int, rate: float, seconds: float) -> Acks:
    client = CommandClient("127.0.0.1", port, SIGNING_SECRET, COMMAND)
    return asyncio.run(client.steady(rate, seconds))


def bot_acks(
    label: str,
    config: Path,
    consul: tuple[str, int],
    rate: float,
    seconds: float,
    fleet: Fleet | None,
    log_dir: Path,
) -> AckFigures:
    consul_url, consul_pid = consul
    slack, slack_url = start_slack_standin()
    processes = [slack]
    port = free_port()
    env = {
        **os.environ,
        "UPSTREAM_BOT_CONFIG": str(config),
        "CONSUL_HTTP_ADDR": consul_url,
        "SLACK_BOT_TOKEN": "xoxb-bench",
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": f"{slack_url}/api/",
    }
    log = log_dir / f"bot-{label.replace(' ', '-')}.log"
    try:
        with log.open("wb") as log_file:
            bot = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "serve", "--http", "--port", str(port)],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        processes.insert(0, bot)
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        fleet_before = fleet.stats() if fleet else {}
        others = Others(
            {"Consul stand-in": [consul_pid], "Slack stand-in": [slack.pid]}
            | ({"fleet": [p.pid for p in fleet.processes]} if fleet else {})
        )
        cpu_before, started = tree_cpu(bot.pid), time.monotonic()
        with CpuTimeline(bot.pid, seconds + 30) as timeline:
            acks = run_client(port, rate, seconds)
        out = AckFigures(label, acks, cpu=tree_cpu(bot.pid) - cpu_before, wall=time.monotonic() - started)
        out.timeline = timeline.samples
        out.others = others.shares()
        out.rss = rss_bytes(bot.pid)
        if fleet:
            after = fleet.stats()
            out.fleet = {k: after.get(k, 0) - fleet_before.get(k, 0) for k in ("requests", "accepted")}
            out.fleet["open"] = after.get("open", 0)
        out.posts = slack_calls(slack_url)
    finally:
        stop_all(processes)
    text = log.read_text(errors="replace")
    seen: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(" ", 4)  # date time level logger: message
        if len(parts) == 5 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
            key = parts[2] + parts[3] + parts[4].split(" (trigger:")[0][:40]
            if key not in seen and len(seen) < 5:
                seen[key] = f"{parts[2]} {parts[3]} {parts[4][:200]}"
    out.warnings = {
        "warning lines": sum(" WARNING " in line for line in text.splitlines()),
        "error lines": sum(" ERROR " in line for line in text.splitlines()),
        "rounds skipped (previous still running)": text.count("maximum number of running instances reached"),
        "rounds started late (missed)": text.count("was missed by"),
    }
    out.log_samples = list(seen.values())
    return out


def floor_acks(label: str, rate: float, seconds: float, background: list[str] | None) -> AckFigures:
    process, port = start_slack_floor(SIGNING_SECRET)
    load: subprocess.Popen[bytes] | None = None
    try:
        if background:
            load = subprocess.Popen(background, stdout=subprocess.PIPE, cwd=ROOT)
            time.sleep(1.0)  # its first round under way
        cpu_before, started = tree_cpu(process.pid), time.monotonic()
        acks = run_client(port, rate, seconds)
        out = AckFigures(label, acks, cpu=tree_cpu(process.pid) - cpu_before, wall=time.monotonic() - started)
        if load is not None:
            line = read_line(load, seconds + 60)
            with contextlib.suppress(ValueError):
                out.background = json.loads(line or b"{}")
    finally:
        stop_all([process, *([load] if load else [])])
    return out


@contextlib.contextmanager
def seeded_consul(apps: dict[str, list[int]]) -> Iterator[tuple[str, int]]:
    """A Consul stand-in listing every node: (its URL, its pid)."""
    port = free_port()
    consul = start_consul(port)
    try:
        url = f"http://127.0.0.1:{port}"
        began = time.monotonic()
        count = asyncio.run(seed_consul(url, apps))
        print(f"  (Consul stand-in seeded with {count} nodes in {time.monotonic() - began:.2f} s)", flush=True)
        yield url, consul.pid
    finally:
        stop_all([consul])


# -- printing -------------------------------------------------------------------------------------------


def print_part_a(args: argparse.Namespace, a: WatchFigures, floor: dict[str, Any]) -> None:
    nodes, interval = args.nodes, args.interval
    per_probe = a.cpu / a.probes if a.probes else float("nan")
    floor_per_probe = floor["cpu"] / floor["probes"] if floor["probes"] else float("nan")
    print(
        f"\nA. the watch in process ({a.prober}): {nodes} nodes in {args.apps} apps every {interval:g} s, "
        f"{a.wall:.0f} s"
    )
    print(
        f"  rounds begun {a.started}, done {a.rounds} "
        f"(per app {min(a.rounds_per_app, default=0)}..{max(a.rounds_per_app, default=0)})   "
        f"probes {a.probes}   probes/s {a.probes / a.wall:.0f} (the fleet every interval needs {nodes / interval:.0f})"
    )
    print(f"  bot CPU {a.cpu:.1f} s in {a.wall:.0f} s = {a.cpu / a.wall:.2f} of one core (target < 1.00)")
    print(
        f"  CPU per probe: bot {per_probe * 1e6:.0f} us   floor {floor_per_probe * 1e6:.0f} us   "
        f"ratio bot/floor {ratio(per_probe, floor_per_probe)} (target <= 2)"
    )
    if a.durations:
        print(
            f"  round duration p50 {statistics.median(a.durations):.2f} s   max {max(a.durations):.2f} s   "
            f"ratio to the interval: p50 {statistics.median(a.durations) / interval:.2f}   "
            f"max {max(a.durations) / interval:.2f} (target < 1)"
        )
    else:
        print("  round duration: no round finished")
    if a.lateness:
        print(
            f"  round lateness p50 {statistics.median(a.lateness) * 1000:.0f} ms   max {max(a.lateness) * 1000:.0f} ms"
        )
    print(
        f"  event-loop lag (a {LAG_TICK * 1000:.0f} ms timer): p50 {quantile(a.lags, 0.5) * 1000:.1f} ms   "
        f"p99 {quantile(a.lags, 0.99) * 1000:.1f} ms   max {max(a.lags, default=0) * 1000:.1f} ms   "
        f"({len(a.lags)} samples)"
    )
    print(
        f"  memory per watched node (RSS growth {a.rss_growth / 2**20:.0f} MiB / {nodes}): "
        f"{a.rss_growth / nodes / 1024:.1f} KiB"
    )
    requests = a.fleet.get("requests", 0)
    print(
        f"  the fleet saw {requests:.0f} requests on {a.fleet.get('accepted', 0):.0f} new connections "
        f"({a.fleet.get('accepted', 0) / max(requests, 1):.2f} a request); {a.fleet.get('open', 0):.0f} "
        f"connections open at the end"
    )
    print(
        f"  events {a.events or '{}'}   open incidents at the end {a.incidents}   "
        f"(the last rounds ended {a.drained_in:.1f} s after the stop)"
    )
    if a.gc:
        print(f"  garbage collector while the watch ran: {a.gc}")
    if a.others:
        print(f"  other processes' CPU meanwhile, share of one core: {a.others}")
    if a.log.counts:
        print(f"  bot log records: {a.log.counts}")
        for sample in a.log.samples.values():
            print(f"    e.g. {sample}")
    fd = floor["durations"]
    print(
        f"  floor (bare asyncio keep-alive prober, {len(fd)} rounds back to back): {floor['probes']} probes, "
        f"{floor['failed']} failed, CPU {floor['cpu']:.1f} s, {floor['probes'] / floor['wall']:.0f} probes/s, "
        f"round p50 {statistics.median(fd):.2f} s (first {fd[0]:.2f} s)"
    )


def print_acks(figures: AckFigures, floor: AckFigures | None, target: float) -> None:
    acks = figures.acks
    p50, p99 = acks.quantile(0.5), acks.quantile(0.99)
    line = (
        f"  {figures.label}: {len(acks.times)} acks   p50 {p50 * 1000:.1f} ms   p99 {p99 * 1000:.1f} ms   "
        f"max {max(acks.times, default=float('nan')) * 1000:.1f} ms"
    )
    if floor is not None:
        line += f"   p99 ratio to the floor {ratio(p99, floor.acks.quantile(0.99))} (target <= 2)"
    line += f"   p99 / {target * 1000:.0f} ms: {p99 / target:.2f}"
    print(line)
    extra = f"    CPU {figures.cpu / figures.wall:.2f} of one core"
    if figures.rss:
        extra += f"   RSS {figures.rss / 2**20:.0f} MiB"
    if acks.errors or acks.all_busy:
        extra += f"   errors {len(acks.errors)} {sorted(set(acks.errors))[:3]}"
        extra += f"   sends finding all connections busy {acks.all_busy}"
    if figures.fleet:
        requests = figures.fleet.get("requests", 0)
        extra += (
            f"   fleet: {requests / figures.wall:.0f} requests/s, "
            f"{figures.fleet.get('accepted', 0) / max(requests, 1):.2f} new connections a request, "
            f"{figures.fleet.get('open', 0):.0f} open"
        )
    print(extra)
    if figures.others:
        print(f"    other processes' CPU, share of one core: {figures.others}")
    if figures.posts:
        print(f"    Slack calls {figures.posts}")
    if figures.warnings and any(figures.warnings.values()):
        print(f"    bot log: {figures.warnings}")
        for sample in figures.log_samples:
            print(f"      e.g. {sample}")
    if figures.background:
        bg = figures.background
        print(
            f"    background bare prober: {bg.get('probes', 0)} probes, "
            f"CPU {bg.get('cpu', 0) / max(bg.get('wall', 1), 1e-9):.2f} of one core, "
            f"rounds {[round(d, 2) for d in bg.get('durations', [])]} s"
        )


# -- main -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=10000, help="in all, spread over the apps")
    parser.add_argument("--seconds", type=float, default=60.0, help="the watch runs this long (A and B)")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=3.0, help="health.timeout")
    parser.add_argument("--window", type=float, default=30.0, help="health.window (short: incidents open in the run)")
    parser.add_argument("--concurrency", type=int, default=64, help="watch.concurrency of each app")
    parser.add_argument("--failing", type=float, default=0.01, help="share of nodes failing (503 or refusing)")
    parser.add_argument("--rate", type=float, default=10.0, help="slash commands a second in part B")
    parser.add_argument("--floor-seconds", type=float, default=20.0, help="each ack floor, and B without the watch")
    parser.add_argument("--first-port", type=int, default=20000)
    parser.add_argument("--part", choices=["a", "b", "ab"], default="ab")
    parser.add_argument("--bare-prober-for", type=float, default=0.0, help=argparse.SUPPRESS)  # background load
    args = parser.parse_args()
    raise_nofile()
    apps = layout(args.apps, args.nodes, args.first_port)
    ports = [p for chosen in apps.values() for p in chosen]
    if args.bare_prober_for:
        asyncio.run(bare_paced(apps, args.concurrency, args.timeout, args.interval, args.bare_prober_for))
        return
    busy = ports_free(ports)
    if busy:
        raise SystemExit(f"ports already taken: {format_ports(busy)[:200]} (use --first-port)")
    modes = failing(ports, args.failing)
    print(
        f"watch scale: {args.nodes} nodes ({args.apps} apps), ports {format_ports([ports[0], ports[-1]])}, failing: "
        + ", ".join(f"{len(v)} {k}" for k, v in modes.items()),
        flush=True,
    )
    settings = {
        "interval": args.interval,
        "timeout": args.timeout,
        "window": args.window,
        "concurrency": args.concurrency,
    }
    with tempfile.TemporaryDirectory() as tmp, Fleet(ports, modes) as fleet:
        work = Path(tmp)
        print(f"  (fleet: {len(fleet.processes)} server processes up)", flush=True)
        if "a" in args.part:
            with seeded_consul(apps) as (consul_url, consul_pid):
                config = write_config(work / "watch.yml", apps, consul_url, **settings)
                others = Others({"Consul stand-in": [consul_pid], "fleet": [p.pid for p in fleet.processes]})
                with LogTally() as tally:
                    a = asyncio.run(watch_in_process(config, args.seconds, args.interval, fleet))
                a.log, a.others = tally, others.shares()
            rounds = max(2, min(10, round(statistics.mean(a.rounds_per_app or [2]))))
            floor = asyncio.run(bare_back_to_back(apps, args.concurrency, args.timeout, rounds))
            print_part_a(args, a, floor)
        if "b" in args.part:
            print(
                f"\nB. slash-command acks, /upstream {COMMAND} at {args.rate:g}/s over kept-alive connections:",
                flush=True,
            )
            floor_b = floor_acks("floor: bare aiohttp endpoint", args.rate, args.floor_seconds, None)
            print_acks(floor_b, None, 0.050)
            load = [
                sys.executable, __file__, "--apps", str(args.apps), "--nodes", str(args.nodes),
                "--first-port", str(args.first_port), "--interval", str(args.interval),
                "--timeout", str(args.timeout), "--concurrency", str(args.concurrency),
                "--bare-prober-for", str(args.floor_seconds + 2),
            ]  # fmt: skip
            floor_load = floor_acks(
                "floor, a bare prober probing the fleet meanwhile", args.rate, args.floor_seconds, load
            )
            print_acks(floor_load, floor_b, 0.050)
            with seeded_consul(apps) as (consul_url, consul_pid):
                quiet = write_config(work / "quiet.yml", apps, consul_url, health=False, **settings)
                b_quiet = bot_acks(
                    "bot without the watch", quiet, (consul_url, consul_pid), args.rate, args.floor_seconds, None, work
                )
                print_acks(b_quiet, floor_b, 0.050)
            with seeded_consul(apps) as (consul_url, consul_pid):
                config = write_config(work / "watch.yml", apps, consul_url, **settings)
                b_watch = bot_acks(
                    "bot with the watch", config, (consul_url, consul_pid), args.rate, args.seconds, fleet, work
                )
                print_acks(b_watch, floor_b, 0.050)
                print(f"    {burst_split(b_watch)}")
                windows = b_watch.acks.windows(args.interval)
                print(
                    f"    ack p99 (max) in each {args.interval:g} s of the run: "
                    + "   ".join(f"{p99 * 1000:.0f} ({worst * 1000:.0f}) ms" for _, _, p99, worst in windows)
                )
                print(
                    f"    ratio to the floor measured under probing load: "
                    f"{ratio(b_watch.acks.quantile(0.99), floor_load.acks.quantile(0.99))}   "
                    f"bot CPU share with the watch: {b_watch.cpu / b_watch.wall:.2f} of one core"
                )


if __name__ == "__main__":
    main()
