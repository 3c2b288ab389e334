"""`/upstream status` of a big app through `upstream-bot run`, as an operator would type it.

A fleet of 500 simulated nodes (benchmarks/fleet.py, keep-alive HTTP on 500 ports of 127.0.0.1), the
Consul stand-in listing them, and `upstream-bot run "/upstream status app0"` timed from start to exit,
probing every node live. Floor, in the same run: `upstream-bot run "/upstream help"` (the same process
start, config and imports, no Consul read and no probe). Target: the status answers within 1 s.

Run: .venv/bin/python benchmarks/status_latency.py [--nodes 500] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fleet import Fleet, free_port, ports_free, seed_consul, start_consul, stop_all, write_config  # noqa: E402

FIRST_PORT = 12000  # away from watch_scale's fleet (20000+) and below the ephemeral range
TARGET = 1.0


def timed(line: str, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run", line], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{line} exited {done.returncode}: {done.stdout[-500:]} {done.stderr[-2000:]}")
    return elapsed, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    ports = list(range(FIRST_PORT, FIRST_PORT + args.nodes))
    busy = ports_free(ports)
    if busy:
        raise SystemExit(f"ports in use: {busy[:5]}...")
    consul_port = free_port()
    consul = start_consul(consul_port)
    try:
        with Fleet(ports), tempfile.TemporaryDirectory() as tmp:
            consul_url = f"http://127.0.0.1:{consul_port}"
            asyncio.run(seed_consul(consul_url, {"app0": ports}))
            config = write_config(Path(tmp) / "upstream-bot.yml", ["app0"], consul_url)
            env = {**os.environ, "UPSTREAM_BOT_CONFIG": str(config), "CONSUL_HTTP_ADDR": consul_url}
            timed("/upstream help", env)  # warm the file cache
            floors = [timed("/upstream help", env)[0] for _ in range(args.runs)]
            statuses = []
            for _ in range(args.runs):
                elapsed, out = timed("/upstream status app0", env)
                if f"{args.nodes} of {args.nodes} serving" not in out:
                    raise RuntimeError(f"unexpected status: {out[:500]}")
                statuses.append(elapsed)
    finally:
        stop_all([consul])
    floor, status = statistics.median(floors), statistics.median(statuses)
    print(f"/upstream status of {args.nodes} nodes through `upstream-bot run` ({args.runs} runs, medians):")
    print(f"  status {status:.2f} s (max {max(statuses):.2f} s)")
    print(f"  floor (`/upstream help`: the same start, no I/O) {floor:.2f} s")
    print(f"  status - floor (Consul read, {args.nodes} live probes, rendering): {status - floor:.2f} s")
    print(f"  ratio to the floor: {status / floor:.2f}   ratio to the 1 s target: {max(statuses) / TARGET:.2f}")


if __name__ == "__main__":
    main()
