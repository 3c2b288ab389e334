"""The audit history in Consul KV, under `upstream-bot/history/<app>/<time>-<random>`.

Every replica and every `upstream-bot run` sees the same history. Keys sort by time, so the oldest are
pruned first once an app has more than `history.keep`. Each entry is also printed as one JSON line (on
stdout by default) before it is stored, so a log shipper keeps it even while Consul is unreachable.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from typing import TextIO

from bot.consul.store import ConsulStore
from commands.errors import StoreError
from commands.history import HistoryEntry

log = logging.getLogger(__name__)
HISTORY_PREFIX = "upstream-bot/history"
PRUNE_BATCH = 64  # keys deleted per transaction-free round while pruning


def history_folder(app: str) -> str:
    return f"{HISTORY_PREFIX}/{app}/"


class ConsulHistory:
    def __init__(self, store: ConsulStore, keep: int = 1000, echo: TextIO | None = sys.stdout) -> None:
        self.store = store
        self.keep = keep
        self.echo = echo

    async def record(self, entry: HistoryEntry) -> None:
        line = json.dumps({"history": entry.to_json()}, separators=(",", ":"), sort_keys=True)
        if self.echo is not None:
            print(line, file=self.echo, flush=True)
        key = f"{history_folder(entry.app)}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        value = json.dumps(entry.to_json(), separators=(",", ":"))
        try:
            await self.store.call(lambda c: c.kv.put(key, value, cas=0), f"writing {key}", write=True)
            await self._prune(entry.app)
        except StoreError as error:
            log.error("history entry not stored in Consul (%s): %s", error.message, line)

    async def _prune(self, app: str) -> None:
        folder = history_folder(app)
        _, keys = await self.store.call(lambda c: c.kv.get(folder, keys=True), f"listing {folder}")
        excess = sorted(keys or [])[: max(0, len(keys or []) - self.keep)]
        for key in excess[:PRUNE_BATCH]:  # a burst prunes over the next few writes, never all at once
            await self.store.call(lambda c, k=key: c.kv.delete(k), f"pruning {key}", write=True)

    async def entries(self, app: str, target: str | None = None, limit: int = 20) -> list[HistoryEntry]:
        folder = history_folder(app)
        _, items = await self.store.call(lambda c: c.kv.get(folder, recurse=True), f"reading {folder}")
        found: list[HistoryEntry] = []
        for item in sorted(items or [], key=lambda i: str(i["Key"]), reverse=True):
            try:
                entry = HistoryEntry.from_json(json.loads(item.get("Value") or b"{}"))
            except (ValueError, TypeError):
                continue  # not ours, or damaged: skipped rather than failing the whole listing
            if target is None or entry.target == target:
                found.append(entry)
            if len(found) >= limit:
                break
        return found
