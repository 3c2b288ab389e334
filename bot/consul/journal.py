"""The release journal in Consul KV at `upstream-bot/releases/<app>` (see commands/journal.py).

Each write is one transaction: a check-and-set on the journal key (on the index this bot last wrote or
read, so two writers never interleave silently) and, for a running release, `check-session` on its lock
(a bot that lost its lock cannot write the journal either)."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import asdict
from typing import Any

from bot.consul.pending import PendingFormatError, decode_subject, encode_subject
from bot.consul.store import ConsulStore
from commands.errors import StoreError, StoreRejected
from commands.interfaces import HeldLock
from commands.journal import JournalEntry, JournalNode
from commands.release_plan import ReleasePlan
from commands.release_state import ReleaseState

log = logging.getLogger(__name__)
PREFIX = "upstream-bot/releases/"
FORMAT = 1


def journal_key(app: str) -> str:
    return PREFIX + app


class ConsulJournal:
    def __init__(self, store: ConsulStore, holder: str) -> None:
        self.store = store
        self.holder = holder
        self._index: dict[str, int] = {}  # app -> the ModifyIndex this bot last wrote or read

    async def write(self, state: ReleaseState, held: HeldLock | None) -> None:
        app = state.plan.app
        entry = JournalEntry.of(state, self.holder, encode_subject(state.plan))
        value = json.dumps({"format": FORMAT, **asdict(entry)}, separators=(",", ":"))
        key = journal_key(app)
        if app not in self._index:
            self._index[app] = await self._current_index(key)
        encoded = base64.b64encode(value.encode()).decode()
        ops: list[dict[str, Any]] = [{"KV": {"Verb": "cas", "Key": key, "Value": encoded, "Index": self._index[app]}}]
        if held is not None:
            ops.append({"KV": {"Verb": "check-session", "Key": held.key, "Session": held.session}})
        try:
            answer = await self.store.call(lambda c: c.txn.put(ops), f"writing the release journal {key}", write=True)
        except StoreRejected as error:
            if error.status == 409:
                self._index.pop(app, None)  # read afresh next time
                raise StoreError(
                    f"the release journal {key} was changed by someone else, or the release lock is gone"
                ) from None
            raise
        results = (answer or {}).get("Results") or []
        self._index[app] = int(results[0]["KV"]["ModifyIndex"]) if results else await self._current_index(key)

    async def _current_index(self, key: str) -> int:
        _, item = await self.store.call(lambda c: c.kv.get(key), f"reading {key}")
        return int(item["ModifyIndex"]) if item else 0

    async def read(self, app: str) -> JournalEntry | None:
        key = journal_key(app)
        try:
            _, item = await self.store.call(lambda c: c.kv.get(key), f"reading {key}")
        except StoreError as error:
            log.warning("cannot read the release journal %s: %s", key, error.message)
            return None
        if not item:
            return None
        try:
            data = json.loads(item.get("Value") or b"{}")
            nodes = tuple(JournalNode(**n) for n in data.pop("nodes"))
            data.pop("format", None)
            entry = JournalEntry(nodes=nodes, **data)
            if not isinstance(decode_subject(entry.plan), ReleasePlan):
                raise PendingFormatError("not a release plan")
            return entry
        except (ValueError, TypeError, KeyError) as error:
            log.warning("the release journal %s cannot be read (%s)", key, error)
            return None
