"""The health watch's shared state in Consul KV, so any replica can take the watch over (see election.py)
and any replica can answer `/upstream alerts` and the alert buttons:

- `upstream-bot/watch/<app>/incidents/<id>`: one JSON value per open incident (and a resolved one
  while its silence lasts, so a takeover still honours it); deleted when resolved.
- `upstream-bot/watch/<app>/switch`: `{"enabled": false}` once the app's watch was turned off
  (`/upstream watch <app> off`), `true` once turned on again; absent: `watch.enabled` in the config.

One key per incident, not one per app: an incident is written when it opens or changes, and a press
(silence, acknowledge) on another replica is a check-and-set on that one key, so it never conflicts
with the leader's writes of other incidents, and a flood of incidents (a whole upstream down) never
meets Consul's 512 KiB value limit. One recursive read per app and round gets them all.

The leader's writes carry `check-session` on the watch lock in the same transaction: a replica that
lost the watch cannot write over its successor's incidents.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from bot.consul.store import ConsulStore
from commands.addresses import ServerAddress
from commands.errors import StoreRejected
from commands.interfaces import HeldLock
from commands.watch import Incident

log = logging.getLogger(__name__)
PREFIX = "upstream-bot/watch/"
FORMAT = 1
MARK_TRIES = 5  # a press racing the leader's write of the same incident: read again, at most this often


def incident_key(app: str, incident_id: str) -> str:
    return f"{PREFIX}{app}/incidents/{incident_id}"


def switch_key(app: str) -> str:
    return f"{PREFIX}{app}/switch"


def encode(incident: Incident) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "id": incident.id,
            "app": incident.app,
            "address": "" if incident.address is None else str(incident.address),  # "": the app itself
            "reason": incident.reason,
            "failing_since": incident.failing_since,
            "last_error": incident.last_error,
            "nginx_check": incident.nginx_check,
            "consul_serving": incident.consul_serving,
            "opened_at": incident.opened_at,
            "reminded_at": incident.reminded_at,
            "silenced_until": incident.silenced_until,
            "acknowledged_by": incident.acknowledged_by,
            "resolved_at": incident.resolved_at,
            "resolution": incident.resolution,
            "post_ref": incident.post_ref,
            "group": incident.group,
        },
        sort_keys=True,
    )


def decode(raw: bytes | str | None) -> Incident | None:
    """None for a value this version cannot read (logged): it is left alone, never alerted again."""
    try:
        d = json.loads(raw or b"null")
        post_ref = d.get("post_ref")
        return Incident(
            app=str(d["app"]),
            address=ServerAddress.parse(str(d["address"])) if d["address"] else None,
            reason=str(d["reason"]),
            failing_since=float(d["failing_since"]),
            last_error=str(d.get("last_error") or ""),
            nginx_check=d.get("nginx_check"),
            consul_serving=bool(d.get("consul_serving", True)),
            opened_at=float(d["opened_at"]),
            id=str(d["id"]),
            reminded_at=_number(d.get("reminded_at")),
            silenced_until=_number(d.get("silenced_until")),
            acknowledged_by=d.get("acknowledged_by"),
            resolved_at=_number(d.get("resolved_at")),
            resolution=str(d.get("resolution") or ""),
            post_ref={str(k): str(v) for k, v in post_ref.items()} if isinstance(post_ref, dict) else None,
            group=str(d["group"]) if d.get("group") else None,
        )
    except Exception as error:  # a hand-edited or newer value: say so, do not crash the watch
        log.warning("unreadable incident in Consul (%r): %.200r", error, raw)
        return None


def _switch(raw: bytes | str | None) -> bool | None:
    try:
        enabled = json.loads(raw or b"null")["enabled"]
    except (ValueError, KeyError, TypeError):
        return None
    return enabled if isinstance(enabled, bool) else None


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class AppState:
    incidents: dict[str, tuple[Incident, int]] = field(default_factory=dict)  # id -> (incident, ModifyIndex)
    enabled: bool | None = None  # None: never switched, the config decides


class WatchStateKV:
    def __init__(self, store: ConsulStore) -> None:
        self.store = store

    async def read(self, app: str) -> AppState:
        folder = f"{PREFIX}{app}/"
        _, items = await self.store.call(lambda c: c.kv.get(folder, recurse=True), f"reading {folder}")
        return _states(items).get(app, AppState())

    async def read_all(self) -> dict[str, AppState]:
        _, items = await self.store.call(lambda c: c.kv.get(PREFIX, recurse=True), f"reading {PREFIX}")
        return _states(items)

    async def save(self, incident: Incident, index: int, held: HeldLock | None) -> int | None:
        """Check-and-set on `index` (0: must not exist yet), under `held`; the new ModifyIndex, or None
        when the incident changed meanwhile (a press elsewhere) or the lock is no longer ours."""
        key = incident_key(incident.app, incident.id)
        value = base64.b64encode(encode(incident).encode()).decode()
        ops: list[dict[str, Any]] = [{"KV": {"Verb": "cas", "Key": key, "Value": value, "Index": index}}]
        answer = await self._txn(ops, held, f"writing {key}")
        if answer is None:
            return None
        results = answer.get("Results") or [{}]
        return int((results[0].get("KV") or {}).get("ModifyIndex") or 0) or None

    async def remove(self, incident: Incident, index: int, held: HeldLock | None) -> bool:
        key = incident_key(incident.app, incident.id)
        ops: list[dict[str, Any]] = [{"KV": {"Verb": "delete-cas", "Key": key, "Index": index}}]
        return await self._txn(ops, held, f"deleting {key}") is not None

    async def _txn(self, ops: list[dict[str, Any]], held: HeldLock | None, what: str) -> dict[str, Any] | None:
        if held is not None:
            ops.append({"KV": {"Verb": "check-session", "Key": held.key, "Session": held.session}})
        try:
            answer = await self.store.call(lambda c: c.txn.put(ops), what, write=True)
        except StoreRejected as error:
            if error.status == 409:  # rolled back: the index moved on, or the lock is not ours
                return None
            raise
        return answer if isinstance(answer, dict) else {}

    async def mark(
        self, app: str, incident_id: str, silenced_until: float | None, acknowledged_by: str | None
    ) -> Incident | None:
        """A press on any replica: add the silence or acknowledgement to the stored incident (marks only
        grow: the later silence wins, the first acknowledgement stays). None when it is not stored."""
        key = incident_key(app, incident_id)
        for _ in range(MARK_TRIES):
            _, item = await self.store.call(lambda c: c.kv.get(key), f"reading {key}")
            incident = decode(item.get("Value")) if item else None
            if incident is None or item is None:
                return None
            if silenced_until is not None:
                incident.silenced_until = max(incident.silenced_until or 0.0, silenced_until)
            if acknowledged_by is not None and incident.acknowledged_by is None:
                incident.acknowledged_by = acknowledged_by
            if await self._cas(key, encode(incident), int(item["ModifyIndex"])):
                return incident
        log.warning("could not mark incident %s of %s after %d tries: it kept changing", incident_id, app, MARK_TRIES)
        return None

    async def _cas(self, key: str, value: str, index: int) -> bool:
        return bool(await self.store.call(lambda c: c.kv.put(key, value, cas=index), f"writing {key}", write=True))

    async def set_enabled(self, app: str, on: bool) -> None:
        key, value = switch_key(app), json.dumps({"enabled": on})
        await self.store.call(lambda c: c.kv.put(key, value), f"writing {key}", write=True)


def _states(items: list[dict[str, Any]] | None) -> dict[str, AppState]:
    states: dict[str, AppState] = {}
    for item in items or []:
        app, _, rest = str(item["Key"])[len(PREFIX) :].partition("/")
        state = states.setdefault(app, AppState())
        if rest == "switch":
            state.enabled = _switch(item.get("Value"))
        elif rest.startswith("incidents/"):
            incident = decode(item.get("Value"))
            if incident is not None and incident.app == app:
                state.incidents[incident.id] = (incident, int(item["ModifyIndex"]))
    return states
