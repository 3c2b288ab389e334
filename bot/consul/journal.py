"""The release journal in Consul KV at `upstream-bot/releases/<app>` (see commands/journal.py).

Each write is one transaction: a check-and-set on the journal key (on the index this bot last wrote or
read, so two writers never interleave silently) and, for a running release, `check-session` on its lock
(a bot that lost its lock cannot write the journal either)."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import asdict, fields, replace
from typing import Any

from bot.consul.pending import PendingFormatError, decode_subject, encode_subject
from bot.consul.store import ConsulStore
from commands.errors import StoreError, StoreRejected, StoreUncertain
from commands.interfaces import HeldLock
from commands.journal import JournalEntry, JournalNode
from commands.release_plan import ReleasePlan
from commands.release_state import ReleaseState

log = logging.getLogger(__name__)
PREFIX = "upstream-bot/releases/"
ABORTS = "upstream-bot/aborts/"  # `/release abort` from a replica that does not run the release
FORMAT = 1
FIRST_WRITE_TRIES = 3


def journal_key(app: str) -> str:
    return PREFIX + app


class ConsulJournal:
    def __init__(self, store: ConsulStore, holder: str) -> None:
        self.store = store
        self.holder = holder
        self._index: dict[str, int] = {}  # app -> the ModifyIndex this bot last wrote or read

    async def write(self, state: ReleaseState, held: HeldLock | None, first: bool = False) -> None:
        app = state.plan.app
        entry = JournalEntry.of(state, self.holder, encode_subject(state.plan))
        key = journal_key(app)
        # A first write may meet a replica marking the previous state "interrupted" between its read and
        # its write (the only other writer while the lock is held): read again and retry, a few times.
        if first:
            self._index.pop(app, None)  # whatever this bot wrote before belongs to another release
        for attempt in range(FIRST_WRITE_TRIES if first else 1):
            if first or app not in self._index:
                # Read afresh, and never over another release that has not ended.
                self._index[app] = await self._first_index(key, state.plan.id)
            try:
                self._index[app] = await self._put(entry, self._index[app], held)
                return
            except StoreRejected as error:
                if error.status != 409:
                    raise
                self._index.pop(app, None)  # read afresh next time
                if attempt + 1 < (FIRST_WRITE_TRIES if first else 1):
                    continue
                raise StoreError(
                    f"the release journal {key} was changed by someone else, or the release lock is gone"
                ) from None

    def plan_of(self, entry: JournalEntry) -> ReleasePlan:
        plan = decode_subject(entry.plan)
        assert isinstance(plan, ReleasePlan)  # read() returns only entries whose plan decodes
        return plan

    async def request_abort(self, app: str, release_id: str, by: str) -> None:
        value = json.dumps({"release_id": release_id, "by": by})
        key = ABORTS + app
        # Idempotent (the same value again changes nothing that matters): a lost answer may be resent.
        await self.store.call(lambda c: c.kv.put(key, value), f"writing {key}")

    async def abort_requested(self, app: str, release_id: str) -> str | None:
        key = ABORTS + app
        _, item = await self.store.call(lambda c: c.kv.get(key), f"reading {key}")
        try:
            data = json.loads((item or {}).get("Value") or b"{}")
        except ValueError:
            return None
        return str(data.get("by") or "another replica") if data.get("release_id") == release_id else None

    async def clear_abort(self, app: str, release_id: str) -> None:
        key = ABORTS + app
        _, item = await self.store.call(lambda c: c.kv.get(key), f"reading {key}")
        if not item:
            return
        try:
            named = json.loads(item.get("Value") or b"{}").get("release_id")
        except (ValueError, AttributeError):
            named = None
        if named == release_id:
            modify = int(item["ModifyIndex"])
            await self.store.call(lambda c: c.kv.delete(key, cas=modify), f"deleting {key}", write=True)

    async def mark_interrupted(self, entry: JournalEntry, at: float) -> bool:
        if not entry.index or not entry.running:
            return False
        try:
            await self._put(replace(entry, interrupted_at=at), entry.index, None)
        except StoreRejected as error:
            if error.status == 409:
                return False  # another replica marked it first, or a resume took it over
            raise
        except StoreUncertain:
            # Committed or not, the answer was lost: read it back. Ours (this very mark) means this replica
            # tells it; taking it for "not ours" would leave it marked and never told.
            now = await self.read(entry.app, strict=True)
            return now is not None and now.release_id == entry.release_id and now.interrupted_at == at
        return True

    async def _put(self, entry: JournalEntry, index: int, held: HeldLock | None) -> int:
        """Check-and-set `entry` on `index` (and the lock's session, when held): the new ModifyIndex."""
        key = journal_key(entry.app)
        data = asdict(entry)
        data.pop("index")
        value = json.dumps({"format": FORMAT, **data}, separators=(",", ":"))
        encoded = base64.b64encode(value.encode()).decode()
        ops: list[dict[str, Any]] = [{"KV": {"Verb": "cas", "Key": key, "Value": encoded, "Index": index}}]
        if held is not None:
            ops.append({"KV": {"Verb": "check-session", "Key": held.key, "Session": held.session}})
        answer = await self.store.call(lambda c: c.txn.put(ops), f"writing the release journal {key}", write=True)
        results = (answer or {}).get("Results") or []
        return int(results[0]["KV"]["ModifyIndex"]) if results else await self._current_index(key)

    async def _first_index(self, key: str, release_id: str) -> int:
        """The index a release's first write replaces: the app's last release when it ended, or this very
        release (taken up after its bot died). Never another release still running: its journal is what
        tells people what it left drained. An entry that cannot be read is replaced (and logged): read()
        ignores it too, so nothing could take it up or close it."""
        _, item = await self.store.call(lambda c: c.kv.get(key), f"reading {key}")
        if not item:
            return 0
        current = _parse(item, key)
        if current is not None and current.running and current.release_id != release_id:
            raise StoreError(
                f"the release journal {key} holds release {current.release_id}, which has not ended "
                "(its bot died?): `/release resume` takes it up or closes it first"
            )
        return int(item["ModifyIndex"])

    async def _current_index(self, key: str) -> int:
        _, item = await self.store.call(lambda c: c.kv.get(key), f"reading {key}")
        return int(item["ModifyIndex"]) if item else 0

    async def read(self, app: str, strict: bool = False) -> JournalEntry | None:
        key = journal_key(app)
        try:
            _, item = await self.store.call(lambda c: c.kv.get(key), f"reading {key}")
        except StoreError as error:
            if strict:
                raise
            log.warning("cannot read the release journal %s: %s", key, error.message)
            return None
        return _parse(item, key) if item else None


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The fields `cls` has: a journal written by a newer bot (more fields) is still read."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _parse(item: dict[str, Any], key: str) -> JournalEntry | None:
    try:
        data = json.loads(item.get("Value") or b"{}")
        nodes = tuple(JournalNode(**_known(JournalNode, n)) for n in data.pop("nodes"))
        data = {k: v for k, v in _known(JournalEntry, data).items() if k not in ("nodes", "index")}
        entry = JournalEntry(nodes=nodes, index=int(item["ModifyIndex"]), **data)
        if not isinstance(decode_subject(entry.plan), ReleasePlan):
            raise PendingFormatError("not a release plan")
        return entry
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        log.warning("the release journal %s cannot be read (%s)", key, error)
        return None
