"""Wires a `CommandService` to the real adapters for a config (shared by serve, run and demo)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from bot.clock import SystemClock
from bot.config import Config
from bot.consul_store import ConsulStore
from bot.nginx_status import HttpNginxReader
from bot.prober import HttpProber
from commands.service import CommandService

HTTP_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16)


@contextlib.asynccontextmanager
async def service_for(config: Config) -> AsyncIterator[CommandService]:
    store = ConsulStore(config.consul.addresses, config.consul.prefix, config.consul.token, config.consul.timeout)
    # Probes go straight to the nodes: no proxy from the environment, no cookies kept.
    async with httpx.AsyncClient(limits=HTTP_LIMITS, trust_env=False) as client:
        yield CommandService(
            config.apps, store, HttpProber(client), HttpNginxReader(config.apps, client), SystemClock()
        )
