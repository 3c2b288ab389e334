"""Wires a `CommandService` to the real adapters for a config (shared by serve, run and demo)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from typing import TextIO

import httpx

from bot.clock import SystemClock
from bot.config import Config
from bot.consul.election import WatchElection
from bot.consul.history import ConsulHistory
from bot.consul.journal import ConsulJournal
from bot.consul.lock import ConsulLockManager
from bot.consul.store import ConsulStore
from bot.consul.watch_state import WatchStateKV
from bot.executors.factory import executor_for
from bot.health.lean_prober import LeanProber
from bot.health.probe_worker import ProbeWorker
from bot.health.prober import HttpProber
from bot.health.scheduler import HealthWatcher
from bot.nginx.status import HttpNginxReader
from commands.access import AccessPolicy, Directory, ListedOnly
from commands.interfaces import Executor
from commands.releases import Releases
from commands.service import CommandService
from commands.settings import AppSettings

HTTP_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16)


def holder_name() -> str:
    """This bot instance, as the release lock names it."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.asynccontextmanager
async def service_for(
    config: Config, directory: Directory | None = None, echo: TextIO | None = sys.stdout
) -> AsyncIterator[CommandService]:
    """`directory` resolves Slack user groups for the access policy (serve); `echo` gets each history
    entry as a JSON line (None: not printed, as in the demo's terminal)."""
    store = ConsulStore(config.consul.addresses, config.consul.prefix, config.consul.token, config.consul.timeout)
    policy = AccessPolicy(config.apps, config.access.operators, config.slack.channels, directory or ListedOnly())
    history = ConsulHistory(store, config.history.keep, echo)
    # Probes go straight to the nodes: no proxy from the environment, no cookies kept.
    async with httpx.AsyncClient(limits=HTTP_LIMITS, trust_env=False) as client:
        # Health probes on the lean asyncio path (keep-alive per node, about 30 µs of CPU a probe against
        # httpx's 1-2 ms: the watch probes thousands of nodes on the loop that answers Slack); https
        # and anything unusual go through httpx.
        prober = LeanProber(HttpProber(client))
        nginx, clock = HttpNginxReader(config.apps, client), SystemClock()

        def executors(app: AppSettings) -> Executor:
            return executor_for(app, config)

        holder = holder_name()
        releases = Releases(
            config.apps, store, prober, nginx, clock, ConsulLockManager(store, config.consul.session_ttl),
            executors, holder, ConsulJournal(store, holder),
        )
        # The watch runs on the replica holding upstream-bot/locks/watch; its incidents are kept in Consul.
        election = WatchElection(store, holder, config.consul.session_ttl)
        # The watch's own nginx reader: each nginx's check_status page is read once per round for all its
        # apps (commands and releases read theirs fresh).
        intervals = [app.health.interval for app in config.apps.values()]
        watch_nginx = HttpNginxReader(config.apps, client, max_age=min(intervals, default=10.0) / 2)
        # The watch's probes in a process of their own (started at its first round): off the Slack loop.
        worker = ProbeWorker()
        watcher = HealthWatcher(
            config.apps, store, prober, watch_nginx, clock, releases, WatchStateKV(store), election, worker
        )
        service = CommandService(config.apps, store, prober, nginx, clock, releases, watcher, policy, history)
        try:
            yield service
        finally:
            await service.settle()  # audit entries still being written (e.g. a decision's)
            await watcher.aclose()  # frees the watch lock at once: another replica need not wait for its TTL
            await prober.aclose()
            await worker.aclose()
