"""A Consul HTTP API stand-in, written from Consul's API docs: the parts upstream-bot and
nginx-upsync-module use.

- KV: GET (one key, `recurse`, `keys` with `separator`, blocking `index`/`wait`), PUT (`cas`,
  `flags`, `acquire`, `release`; answers `true`/`false`), DELETE (`recurse`, `cas`). Values are
  base64 in JSON answers; `X-Consul-Index` on every KV answer; 404 for a missing key or empty prefix.
- Sessions: create (TTL 10s..86400s, Behavior release|delete, LockDelay), renew, destroy, info,
  list; an expired or destroyed session releases (or deletes) its locks, and, as Consul does, each of
  those keys then refuses `?acquire=` (answers false) for the session's LockDelay. An explicit
  `?release=` sets no lock-delay.
- Transactions (`PUT /v1/txn`): every KV verb (set, cas, lock, unlock, get, get-or-empty, get-tree,
  check-index, check-session, check-not-exists, delete, delete-tree, delete-cas), all or nothing,
  one index for all its writes; 200 {"Results", "Errors": null} or 409 {"Results": null, "Errors":
  [{"OpIndex", "What"}]} with Consul's texts; 413 over 128 operations or a value over 512 KiB; 400 for
  a body that does not parse. Node/Service/Check operations are not modelled (400).
- status/leader and status/peers.
- ACL: when `token` is set, a request without it gets 403 `Permission denied`, with another token
  403 `ACL not found` (header `X-Consul-Token` or `?token=`).
- Faults for tests and benchmarks, settable in process (`standin.faults`) or with
  `PUT /_standin/faults` {"delay": 2}:
  `delay` seconds before every answer (lowering it releases requests already waiting);
  `leaderless`: 500 `No cluster leader`, nothing applied;
  `late_writes` seconds to wait AFTER applying a KV PUT/DELETE or a txn, before answering (an answer
  lost after the write was committed, once the client's timeout is shorter);
  `drop_writes`: apply a KV PUT/DELETE or txn, then close the connection without an answer;
  `status` (with `body`): answer every request with that status, nothing applied (e.g. 429).
- `write_requests` counts the KV PUT/DELETE and txn requests that arrived (whatever the faults did).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import dataclasses
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0
KV_MAX_VALUE_SIZE = 512 * 1024  # Consul's default kv_max_value_size (and txn_max_req_len)
TXN_MAX_OPS = 128
FAULT_STEP = 0.05  # how often a fault's wait looks at the fault again (so it can be lowered)
FAULT_MAX_WAIT = 3600.0
TXN_WRITE_VERBS = frozenset({"set", "cas", "lock", "unlock", "delete", "delete-tree", "delete-cas"})


@dataclass
class _Entry:
    value: bytes
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0
    session: str | None = None


@dataclass
class _Session:
    id: str
    name: str
    ttl: float | None
    behavior: str
    lock_delay: float
    create_index: int
    expires_at: float | None = None
    node: str = "standin"
    node_checks: tuple[str, ...] = ("serfHealth",)  # Consul's default; `"checks": []` asks for none


@dataclass
class Faults:
    delay: float = 0.0
    leaderless: bool = False
    late_writes: float = 0.0
    drop_writes: bool = False
    status: int = 0
    body: str = ""


class _TxnFailed(Exception):
    """One transaction operation failed; its text is Consul's `What`."""


class _TooLarge(Exception):
    """A transaction value over the size limit (413)."""


def _json_list(raw: bytes) -> list[object]:
    body = json.loads(raw or b"null")  # a JSONDecodeError is a ValueError: 400, as Consul
    if not isinstance(body, list):
        raise ValueError("the body is not a JSON array of operations")
    return body


def _go_quote(text: str) -> str:
    return json.dumps(text)  # close enough to Go's %q for the keys and ids used here


def _duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)?", text.strip())
    if not match:
        raise ValueError(text)
    unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
    return float(match.group(1)) * unit


def _is_write(request: web.Request) -> bool:
    if request.path == "/v1/txn":
        return request.method == "PUT"
    return request.path.startswith("/v1/kv/") and request.method in ("PUT", "DELETE")


@dataclass
class ConsulStandIn:
    token: str | None = None
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.kv: dict[str, _Entry] = {}
        self.tombstones: dict[str, int] = {}
        self.sessions: dict[str, _Session] = {}
        self.lock_delays: dict[str, float] = {}  # key -> time.monotonic() until which `acquire` is refused
        self.index = 1
        self.requests = 0
        self.write_requests = 0
        self._changed: asyncio.Condition | None = None

    # -- state -----------------------------------------------------------------------------------

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _bump(self) -> int:
        self.index += 1
        return self.index

    async def _notify(self) -> None:
        async with self._condition():
            self._condition().notify_all()

    def put_value(self, key: str, value: str | bytes, flags: int = 0) -> int:
        """Write directly (seeding, tests). Returns the new ModifyIndex. Wakes no waiter by itself."""
        raw = value.encode() if isinstance(value, str) else value
        index = self._bump()
        entry = self.kv.get(key)
        if entry is None:
            self.kv[key] = _Entry(raw, flags, index, index)
        else:
            entry.value, entry.flags, entry.modify_index = raw, flags, index
        self.tombstones.pop(key, None)
        if self._changed is not None:
            asyncio.get_running_loop().create_task(self._notify())
        return index

    def get_value(self, key: str) -> bytes | None:
        entry = self.kv.get(key)
        return None if entry is None else entry.value

    def _prefix_index(self, prefix: str, recurse: bool) -> int:
        indexes = [e.modify_index for k, e in self.kv.items() if (k.startswith(prefix) if recurse else k == prefix)]
        indexes += [i for k, i in self.tombstones.items() if (k.startswith(prefix) if recurse else k == prefix)]
        return max(indexes) if indexes else self.index

    def _expire_sessions(self) -> bool:
        now = time.monotonic()
        expired = [s for s in self.sessions.values() if s.expires_at is not None and s.expires_at <= now]
        for session in expired:
            self._destroy(session.id)
        return bool(expired)

    def _destroy(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        for key, entry in list(self.kv.items()):
            if entry.session == session_id:
                if session.lock_delay > 0:  # Consul's lock-delay (state/session.go deleteSessionTxn)
                    self.lock_delays[key] = time.monotonic() + min(session.lock_delay, 60.0)
                if session.behavior == "delete":
                    del self.kv[key]
                    self.tombstones[key] = self._bump()
                else:
                    entry.session = None
                    entry.modify_index = self._bump()

    # -- HTTP --------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/v1/kv/{key:.*}", self._kv)
        app.router.add_put("/v1/txn", self._txn)
        app.router.add_put("/v1/session/create", self._session_create)
        app.router.add_put("/v1/session/destroy/{id}", self._session_destroy)
        app.router.add_put("/v1/session/renew/{id}", self._session_renew)
        app.router.add_get("/v1/session/info/{id}", self._session_info)
        app.router.add_get("/v1/session/list", self._session_list)
        app.router.add_get("/v1/status/leader", self._leader)
        app.router.add_get("/v1/status/peers", self._peers)
        app.router.add_put("/_standin/faults", self._set_faults)
        app.router.add_get("/_standin/ready", self._ready)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        self.requests += 1
        if request.path.startswith("/_standin/"):
            return await handler(request)
        writes = _is_write(request)
        if writes:
            self.write_requests += 1
        if self.faults.delay:
            await self._wait_fault(lambda: self.faults.delay)
        if self.faults.leaderless:
            return web.Response(status=500, text="No cluster leader")
        if self.faults.status:
            return web.Response(status=self.faults.status, text=self.faults.body)
        if self.token is not None:
            given = request.headers.get("X-Consul-Token") or request.query.get("token")
            if not given:
                return web.Response(status=403, text="Permission denied")
            if given != self.token:
                return web.Response(status=403, text="ACL not found")
        if self._expire_sessions():
            await self._notify()
        response = await handler(request)
        if writes and self.faults.drop_writes:
            # Applied, and the answer never leaves: the client sees the connection close.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if writes and self.faults.late_writes:
            await self._wait_fault(lambda: self.faults.late_writes)
        return response

    async def _wait_fault(self, seconds: Callable[[], float]) -> None:
        """Wait as long as the fault says, looking again every step: lowering it ends the wait."""
        started = time.monotonic()
        for _ in range(int(FAULT_MAX_WAIT / FAULT_STEP)):
            left = min(seconds(), FAULT_MAX_WAIT) - (time.monotonic() - started)
            if left <= 0:
                return
            await asyncio.sleep(min(left, FAULT_STEP))

    async def _ready(self, request: web.Request) -> web.Response:
        return web.json_response(True)  # answered without the injected faults: "the process is up"

    async def _set_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        for name, current in dataclasses.asdict(self.faults).items():
            if name in body:
                setattr(self.faults, name, type(current)(body[name]))
        return web.json_response(dataclasses.asdict(self.faults))

    async def _kv(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if request.method == "GET":
            return await self._kv_get(request, key)
        if request.method == "PUT":
            return await self._kv_put(request, key)
        if request.method == "DELETE":
            return await self._kv_delete(request, key)
        return web.Response(status=405, text="method not allowed")

    def _entry_json(self, key: str, entry: _Entry) -> dict[str, object]:
        item: dict[str, object] = {
            "LockIndex": entry.lock_index,
            "Key": key,
            "Flags": entry.flags,
            "Value": base64.b64encode(entry.value).decode() if entry.value else None,
            "CreateIndex": entry.create_index,
            "ModifyIndex": entry.modify_index,
        }
        if entry.session:
            item["Session"] = entry.session
        return item

    async def _kv_get(self, request: web.Request, key: str) -> web.Response:
        query = request.query
        recurse = "recurse" in query
        keys_only = "keys" in query
        prefix_match = recurse or keys_only
        try:
            wanted = int(query.get("index", "0") or 0)
            wait = min(_duration(query["wait"]), MAX_WAIT) if "wait" in query else DEFAULT_WAIT
        except ValueError:
            return web.Response(status=400, text="Invalid index or wait")
        if wanted > 0:
            deadline = time.monotonic() + wait
            async with self._condition():
                while self._prefix_index(key, prefix_match) <= wanted:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        await asyncio.wait_for(self._condition().wait(), timeout=min(left, 1.0))
                    except TimeoutError:
                        if self._expire_sessions():
                            self._condition().notify_all()
        headers = {
            "X-Consul-Index": str(self._prefix_index(key, prefix_match)),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
        }
        if keys_only:
            separator = query.get("separator", "")
            found: list[str] = []
            for k in sorted(self.kv):
                if not k.startswith(key):
                    continue
                if separator:
                    cut = k.find(separator, len(key))
                    if cut >= 0:
                        k = k[: cut + len(separator)]
                if k not in found:
                    found.append(k)
            if not found:
                return web.Response(status=404, headers=headers)
            return web.json_response(found, headers=headers)
        if recurse:
            items = [self._entry_json(k, e) for k, e in sorted(self.kv.items()) if k.startswith(key)]
        else:
            items = [self._entry_json(key, self.kv[key])] if key in self.kv else []
        if not items:
            return web.Response(status=404, headers=headers)
        if "raw" in query and not recurse:
            return web.Response(body=self.kv[key].value, headers=headers)
        return web.json_response(items, headers=headers)

    async def _kv_put(self, request: web.Request, key: str) -> web.Response:
        query = request.query
        body = await request.read()
        if len(body) > KV_MAX_VALUE_SIZE:
            return web.Response(
                status=413, text=f"Request body({len(body)} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes."
            )
        entry = self.kv.get(key)
        flags = int(query.get("flags", entry.flags if entry else 0))
        if "cas" in query:
            cas = int(query["cas"])
            if (cas == 0 and entry is not None) or (cas != 0 and (entry is None or entry.modify_index != cas)):
                return web.json_response(False)
        if "acquire" in query:
            session = self.sessions.get(query["acquire"])
            if session is None:
                return web.Response(status=500, text=f'invalid session "{query["acquire"]}"')
            if entry is not None and entry.session and entry.session != session.id:
                return web.json_response(False)
            if self.lock_delays.get(key, 0.0) > time.monotonic():
                return web.json_response(False)  # a dead session's lock-delay (Consul's KVS.Apply)
            index = self._bump()
            if entry is None:
                entry = self.kv[key] = _Entry(body, flags, index, index)
            else:
                entry.value, entry.flags, entry.modify_index = body, flags, index
            if entry.session != session.id:
                entry.lock_index += 1
            entry.session = session.id
        elif "release" in query:
            if entry is None or entry.session != query["release"]:
                return web.json_response(False)
            entry.value, entry.flags, entry.modify_index = body, flags, self._bump()
            entry.session = None
        else:
            index = self._bump()
            if entry is None:
                self.kv[key] = _Entry(body, flags, index, index)
            else:
                entry.value, entry.flags, entry.modify_index = body, flags, index
        self.tombstones.pop(key, None)
        await self._notify()
        return web.json_response(True)

    async def _kv_delete(self, request: web.Request, key: str) -> web.Response:
        query = request.query
        if "recurse" in query:
            doomed = [k for k in self.kv if k.startswith(key)]
        else:
            entry = self.kv.get(key)
            if "cas" in query and (entry is None or entry.modify_index != int(query["cas"])):
                return web.json_response(False)
            doomed = [key] if entry is not None else []
        for k in doomed:
            del self.kv[k]
            self.tombstones[k] = self._bump()
        await self._notify()
        return web.json_response(True)

    # -- transactions (/v1/txn), after Consul's agent/txn_endpoint.go and state/txn.go ---------------

    async def _txn(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if len(raw) > KV_MAX_VALUE_SIZE:
            return web.Response(
                status=413, text=f"Request body({len(raw)} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes."
            )
        try:
            ops = [self._txn_op(op) for op in _json_list(raw)]
        except ValueError as error:
            return web.Response(status=400, text=f"Failed to parse body: {error}")
        except _TooLarge as error:
            return web.Response(status=413, text=str(error))
        if len(ops) > TXN_MAX_OPS:
            return web.Response(
                status=413, text=f"Transaction contains too many operations ({len(ops)} > {TXN_MAX_OPS})"
            )
        writes = any(op is not None and op["verb"] in TXN_WRITE_VERBS for op in ops)
        # All or nothing: run on the live state, put the saved copy back if any operation failed.
        saved_kv, saved_tombstones, saved_index = copy.deepcopy(self.kv), dict(self.tombstones), self.index
        index = self._bump() if writes else self.index  # one Raft index for the whole transaction
        results: list[dict[str, object]] = []
        errors: list[dict[str, object]] = []
        for number, op in enumerate(ops):
            try:
                if op is None:
                    raise _TxnFailed("no operation specified")
                results.extend({"KV": item} for item in self._txn_kv(op, index))
            except _TxnFailed as error:
                errors.append({"OpIndex": number, "What": str(error)})
        if errors:
            self.kv.clear()
            self.kv.update(saved_kv)
            self.tombstones.clear()
            self.tombstones.update(saved_tombstones)
            self.index = saved_index
            return web.json_response({"Results": None, "Errors": errors}, status=409)
        headers = {} if writes else {"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}
        if writes:
            await self._notify()
        return web.json_response({"Results": results, "Errors": None}, headers=headers)

    def _txn_op(self, op: object) -> dict[str, object] | None:
        """One operation in API form to its fields (None: no KV/Node/Service/Check in it)."""
        if not isinstance(op, dict):
            raise ValueError("an operation is not a JSON object")
        kinds = {str(k).lower(): v for k, v in op.items()}  # Consul decodes field names case-insensitively
        if any(kinds.get(k) is not None for k in ("node", "service", "check")):
            raise ValueError("the stand-in models KV operations only")
        kv = kinds.get("kv")
        if kv is None:
            return None
        if not isinstance(kv, dict):
            raise ValueError("KV is not a JSON object")
        fields = {str(k).lower(): v for k, v in kv.items()}
        value = b""
        if fields.get("value") is not None:
            try:
                value = base64.b64decode(str(fields["value"]), validate=True)
            except ValueError as error:
                raise ValueError(f"failed to decode value: {error}") from None
        key = str(fields.get("key") or "")
        if len(value) > KV_MAX_VALUE_SIZE:
            raise _TooLarge(f"Value for key {_go_quote(key)} is too large ({len(value)} > {KV_MAX_VALUE_SIZE} bytes)")
        return {
            "verb": str(fields.get("verb") or ""),
            "key": key,
            "value": value,
            "flags": int(fields.get("flags") or 0),
            "index": int(fields.get("index") or 0),
            "session": str(fields.get("session") or ""),
        }

    def _txn_result(self, key: str, entry: _Entry, with_value: bool) -> dict[str, object]:
        item = self._entry_json(key, entry)
        if not with_value:
            item["Value"] = None  # Consul blanks values in results of every verb but the gets
        return item

    def _txn_set(self, key: str, value: bytes, flags: int, index: int, session: str | None = None) -> _Entry:
        entry = self.kv.get(key)
        if entry is None:
            entry = self.kv[key] = _Entry(value, flags, index, index)
        else:
            entry.value, entry.flags, entry.modify_index = value, flags, index
        if session is not None:
            entry.session = session or None
        self.tombstones.pop(key, None)
        return entry

    def _txn_delete(self, key: str, index: int) -> None:
        if self.kv.pop(key, None) is not None:
            self.tombstones[key] = index

    def _txn_kv(self, op: dict[str, object], index: int) -> list[dict[str, object]]:
        verb, key, session = str(op["verb"]), str(op["key"]), str(op["session"])
        value, flags, wanted = bytes(op["value"]), int(op["flags"]), int(op["index"])  # type: ignore[arg-type]
        entry = self.kv.get(key)
        quoted = _go_quote(key)
        if verb == "set":
            return [self._txn_result(key, self._txn_set(key, value, flags, index), False)]
        if verb == "cas":
            if (wanted == 0 and entry is not None) or (wanted != 0 and (entry is None or entry.modify_index != wanted)):
                raise _TxnFailed(f"failed to set key {quoted}, index is stale")
            return [self._txn_result(key, self._txn_set(key, value, flags, index), False)]
        if verb in ("lock", "unlock"):
            if not session:
                raise _TxnFailed("missing session")
            if verb == "lock":
                if session not in self.sessions:
                    raise _TxnFailed(f"invalid session {_go_quote(session)}")
                if entry is not None and entry.session and entry.session != session:
                    raise _TxnFailed(f"failed to lock key {quoted}, lock is already held")
                newly = entry is None or entry.session != session
                entry = self._txn_set(key, value, flags, index, session)
                if newly:
                    entry.lock_index += 1
            else:
                if entry is None or entry.session != session:
                    raise _TxnFailed(f"failed to unlock key {quoted}, lock isn't held, or is held by another session")
                entry = self._txn_set(key, value, flags, index, "")
            return [self._txn_result(key, entry, False)]
        if verb == "get":
            if entry is None:
                raise _TxnFailed(f"key {quoted} doesn't exist")
            return [self._txn_result(key, entry, True)]
        if verb == "get-or-empty":
            empty = _Entry(b"", 0, 0, 0)
            return [self._txn_result(key, entry or empty, entry is not None)]
        if verb == "get-tree":
            return [self._txn_result(k, e, True) for k, e in sorted(self.kv.items()) if k.startswith(key)]
        if verb == "check-index":
            if entry is None:
                raise _TxnFailed(f"failed to check index, key {quoted} doesn't exist")
            if entry.modify_index != wanted:
                raise _TxnFailed(
                    f"failed index check for key {quoted}, current modify index {entry.modify_index} != {wanted}"
                )
            return [self._txn_result(key, entry, False)]
        if verb == "check-session":
            if entry is None:
                raise _TxnFailed(f"failed to check session, key {quoted} doesn't exist")
            if (entry.session or "") != session:
                raise _TxnFailed(
                    f"failed session check for key {quoted}, current session "
                    f"{_go_quote(entry.session or '')} != {_go_quote(session)}"
                )
            return [self._txn_result(key, entry, False)]
        if verb == "check-not-exists":
            if entry is not None:
                raise _TxnFailed(f"key {quoted} exists")
            return []
        if verb == "delete":
            self._txn_delete(key, index)
            return []
        if verb == "delete-tree":
            for k in [k for k in self.kv if k.startswith(key)]:
                self._txn_delete(k, index)
            return []
        if verb == "delete-cas":
            # Consul: a key that is already gone counts as deleted; a different index is stale.
            if entry is not None and entry.modify_index != wanted:
                raise _TxnFailed(f"failed to delete key {quoted}, index is stale")
            self._txn_delete(key, index)
            return []
        raise _TxnFailed(f"unknown KV verb {_go_quote(verb)}")

    def _session_json(self, s: _Session) -> dict[str, object]:
        return {
            "ID": s.id,
            "Name": s.name,
            "Node": s.node,
            "LockDelay": int(s.lock_delay * 1e9),
            "Behavior": s.behavior,
            "TTL": f"{s.ttl:g}s" if s.ttl else "",
            "CreateIndex": s.create_index,
            "ModifyIndex": s.create_index,
            "NodeChecks": list(s.node_checks),
            "ServiceChecks": None,
        }

    async def _session_create(self, request: web.Request) -> web.Response:
        raw = await request.json() if request.can_read_body else {}
        # Consul decodes JSON field names case-insensitively (python-consul2 sends "ttl", "behavior").
        body = {str(k).lower(): v for k, v in (raw or {}).items()}
        ttl = None
        if body.get("ttl"):
            try:
                ttl = _duration(body["ttl"])
            except ValueError:
                return web.Response(status=400, text=f"Request decode failed: invalid TTL {body['ttl']!r}")
            if not 10 <= ttl <= 86400:
                return web.Response(
                    status=400, text=f"Invalid Session TTL '{body['ttl']}', must be between [10s=24h0m0s]"
                )
        behavior = body.get("behavior", "release")
        if behavior not in ("release", "delete"):
            return web.Response(status=400, text=f"Invalid Behavior setting '{behavior}'")
        lock_delay = _duration(str(body.get("lockdelay", "15s")))
        session = _Session(str(uuid.uuid4()), str(body.get("name") or ""), ttl, behavior, lock_delay, self._bump())
        checks = body.get("nodechecks", body.get("checks"))
        if isinstance(checks, list):
            session.node_checks = tuple(str(c) for c in checks)
        if ttl:
            session.expires_at = time.monotonic() + ttl
        self.sessions[session.id] = session
        return web.json_response({"ID": session.id})

    async def _session_destroy(self, request: web.Request) -> web.Response:
        self._destroy(request.match_info["id"])
        await self._notify()
        return web.json_response(True)

    async def _session_renew(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return web.Response(status=404, text=f"Session id '{request.match_info['id']}' not found")
        if session.ttl:
            session.expires_at = time.monotonic() + session.ttl
        return web.json_response([self._session_json(session)])

    async def _session_info(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        headers = {"X-Consul-Index": str(self.index)}
        if session is None:
            return web.json_response(None, headers=headers)
        return web.json_response([self._session_json(session)], headers=headers)

    async def _session_list(self, request: web.Request) -> web.Response:
        return web.json_response(
            [self._session_json(s) for s in self.sessions.values()], headers={"X-Consul-Index": str(self.index)}
        )

    async def _leader(self, request: web.Request) -> web.Response:
        return web.json_response("127.0.0.1:8300")

    async def _peers(self, request: web.Request) -> web.Response:
        return web.json_response(["127.0.0.1:8300"])


def main() -> None:
    parser = argparse.ArgumentParser(description="Consul HTTP API stand-in (loopback only)")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--token", default=None)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every answer")
    args = parser.parse_args()
    standin = ConsulStandIn(token=args.token, faults=Faults(delay=args.delay))
    print(json.dumps({"listening": f"http://127.0.0.1:{args.port}"}), flush=True)
    web.run_app(standin.app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
