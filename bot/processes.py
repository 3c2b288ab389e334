"""Start and stop the sample services (demo, tests, benchmarks) as real processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 10.0) -> None:
    """Poll `url` until it answers, or raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0, trust_env=False)
            return
        except httpx.HTTPError as error:
            last = error
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s ({last})")


def start_sample_service(port: int, host: str = "127.0.0.1", state_dir: Path | None = None) -> subprocess.Popen[bytes]:
    """A sample service process; with `state_dir` it writes a pid file that its `stop` action uses."""
    where = ["--state-dir", str(state_dir)] if state_dir is not None else []
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.sample_service", "serve", "--host", host, "--port", str(port), *where],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://{host}:{port}/ping")
    except RuntimeError:
        process.kill()
        raise
    return process


def stop_sample_service(port: int, state_dir: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "bot.sample_service", "stop", "--port", str(port), "--state-dir", str(state_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
