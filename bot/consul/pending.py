"""Pending confirmations and approvals in Consul KV, at `upstream-bot/pending/<id>:<stage>`, so a press
handled by any replica (or after a restart) finds what it confirms.

The value is JSON (never pickle), `{"version": 1, "subject": ..., "stage", "channel", "requester",
"created_at", "expires_at", "used_by", "used_at", "verdict", "message"}`. The subject (a ChangePlan,
ReleasePlan or WatchOffRequested, with the KeyChange, ServerEntry and ServerAddress inside them) is
written by a small explicit codec: each dataclass as an object tagged `"@": "<class name>"`, tuples as
lists; only the classes named in `_TYPES` are ever built back. A press claims an entry with a
check-and-set on its ModifyIndex, so only the first press of any replica wins.

Every call goes through `ConsulStore.call`; its StoreError subclasses reach the caller.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from bot.consul.store import ConsulStore
from commands.addresses import ServerAddress
from commands.events import WatchOffRequested
from commands.plans import ChangePlan, KeyChange
from commands.release_plan import ReleasePlan
from commands.servers import ServerEntry

PREFIX = "upstream-bot/pending/"
VERSION = 1
PRUNE_MAX = 16  # entries deleted per call at most: pruning is bounded work
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}:[0-9]{1,2}$")

_TYPES: dict[str, type] = {
    t.__name__: t for t in (ChangePlan, KeyChange, ServerAddress, ServerEntry, ReleasePlan, WatchOffRequested)
}
_SUBJECTS = (ChangePlan, ReleasePlan, WatchOffRequested)


class PendingFormatError(ValueError):
    """A stored value this version cannot read."""


# -- the codec -------------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _TYPES.get(name) is not type(value):
            raise TypeError(f"{name} is not a type the pending codec knows")
        out: dict[str, Any] = {"@": name}
        for f in dataclasses.fields(value):
            out[f.name] = _encode(getattr(value, f.name))
        return out
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a pending confirmation")


def _decode(value: Any, in_dataclass: bool) -> Any:
    """`in_dataclass`: a list is a dataclass field's tuple (plain JSON inside a dict field stays as is)."""
    if isinstance(value, dict):
        if "@" in value:
            cls = _TYPES.get(str(value["@"]))
            if cls is None:
                raise PendingFormatError(f"unknown type {value['@']!r}")
            names = {f.name for f in dataclasses.fields(cls)}
            args = {k: _decode(v, True) for k, v in value.items() if k != "@"}
            if set(args) - names:
                raise PendingFormatError(f"unknown fields for {cls.__name__}: {sorted(set(args) - names)}")
            return cls(**args)
        return {k: _decode(v, False) for k, v in value.items()}
    if isinstance(value, list):
        items = [_decode(v, in_dataclass) for v in value]
        return tuple(items) if in_dataclass else items
    return value


def encode_subject(subject: ChangePlan | ReleasePlan | WatchOffRequested) -> dict[str, Any]:
    if not isinstance(subject, _SUBJECTS):
        raise TypeError(f"a {type(subject).__name__} cannot wait for a press")
    return dict(_encode(subject))


def decode_subject(data: Any) -> ChangePlan | ReleasePlan | WatchOffRequested:
    try:
        subject = _decode(data, True)
    except TypeError as error:  # a field missing or of the wrong shape
        raise PendingFormatError(str(error)) from None
    if not isinstance(subject, _SUBJECTS):
        raise PendingFormatError("the stored subject is not a plan or a watch-off request")
    return subject


def encode_record(record: dict[str, Any]) -> str:
    """`record`: the fields named in the module's docstring, the subject as the object itself."""
    return json.dumps({**record, "version": VERSION, "subject": encode_subject(record["subject"])}, sort_keys=True)


def decode_record(text: str | bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(text or "")
    except (ValueError, TypeError):
        raise PendingFormatError("not JSON") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise PendingFormatError(f"unknown version {data.get('version') if isinstance(data, dict) else None!r}")
    message = data.get("message")
    return {
        "subject": decode_subject(data.get("subject")),
        "stage": int(data["stage"]),
        "channel": str(data.get("channel") or ""),
        "requester": str(data.get("requester") or ""),
        "created_at": float(data["created_at"]),
        "expires_at": float(data["expires_at"]),
        "used_by": data.get("used_by"),
        "used_at": data.get("used_at"),
        "verdict": data.get("verdict"),
        "message": tuple(message) if isinstance(message, list) and len(message) == 2 else None,
    }


def valid_key(key: str) -> bool:
    """A button's value names the entry; anything else (a forged or foreign value) names none."""
    return bool(_KEY.match(key))


# -- the store -------------------------------------------------------------------------------------


class PendingKV:
    def __init__(self, store: ConsulStore) -> None:
        self.store = store

    async def read(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """The entry and its ModifyIndex; (None, 0) when there is none. A value that cannot be read
        counts as none (it is pruned in time)."""
        path = PREFIX + key
        _index, item = await self.store.call(lambda c: c.kv.get(path), f"reading {path}")
        if not item:
            return None, 0
        try:
            return decode_record(item.get("Value")), int(item["ModifyIndex"])
        except (PendingFormatError, KeyError, ValueError, TypeError):
            return None, 0

    async def write(self, key: str, record: dict[str, Any]) -> None:
        path, value = PREFIX + key, encode_record(record)
        await self.store.call(lambda c: c.kv.put(path, value), f"writing {path}", write=True)

    async def swap(self, key: str, record: dict[str, Any], index: int) -> bool:
        """Check-and-set on `index`: False when the entry changed (or went) since it was read."""
        path, value = PREFIX + key, encode_record(record)
        return bool(await self.store.call(lambda c: c.kv.put(path, value, cas=index), f"claiming {path}", write=True))

    async def delete(self, key: str, index: int) -> bool:
        path = PREFIX + key
        return bool(await self.store.call(lambda c: c.kv.delete(path, cas=index), f"deleting {path}", write=True))

    async def prune(self, forget_before: float) -> int:
        """Delete (with check-and-set) at most PRUNE_MAX entries created before `forget_before`, or that
        cannot be read; the number deleted."""
        _index, items = await self.store.call(lambda c: c.kv.get(PREFIX, recurse=True), f"listing {PREFIX}")
        deleted = 0
        for item in items or []:
            if deleted >= PRUNE_MAX:
                break
            try:
                old = decode_record(item.get("Value"))["created_at"] < forget_before
            except (PendingFormatError, KeyError, ValueError, TypeError):
                old = True
            if old:
                path = str(item["Key"])
                index = int(item["ModifyIndex"])
                delete = lambda c, path=path, index=index: c.kv.delete(path, cas=index)  # noqa: E731
                if await self.store.call(delete, f"deleting {path}", write=True):
                    deleted += 1
        return deleted
