"""Fixtures with real parts: the Consul and Slack stand-ins on loopback, sample services as processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from bot.processes import free_port, start_sample_service, stop
from bot.standins.consul import ConsulStandIn
from bot.standins.server_thread import ServerThread
from bot.standins.slack import SlackStandIn
from commands.servers import DEFAULTS, encode


class Consul:
    """A running Consul stand-in and helpers to seed and read it from the test's thread."""

    def __init__(self, token: str | None = None) -> None:
        self.standin = ConsulStandIn(token=token)
        self.server = ServerThread(self.standin.app()).start()
        self.url = self.server.url

    def put(self, key: str, value: str) -> int:
        return int(self.server.call(self.standin.put_value, key, value))

    def add_server(self, upstream: str, address: str, **fields: object) -> int:
        return self.put(f"upstreams/{upstream}/{address}", encode({**DEFAULTS, **fields}))

    def value(self, key: str) -> str | None:
        raw = self.server.call(self.standin.get_value, key)
        return None if raw is None else raw.decode()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def consul() -> Iterator[Consul]:
    c = Consul()
    yield c
    c.stop()


@pytest.fixture
def slack() -> Iterator[tuple[SlackStandIn, str]]:
    standin = SlackStandIn(usergroups={"S0OPS": ["U3OPS"]})
    server = ServerThread(standin.app()).start()
    yield standin, server.url
    server.stop()


@pytest.fixture(scope="session")
def services() -> Iterator[list[int]]:
    """Three sample services, real processes on free loopback ports."""
    ports = [free_port() for _ in range(3)]
    processes: list[subprocess.Popen[bytes]] = [start_sample_service(p) for p in ports]
    yield ports
    stop(processes)
