"""The Consul adapter: the only code that talks to Consul, through python-consul2.

Kept narrow on purpose (see UPSYNC-NOTES): explicit timeouts, our own errors for every failure,
JSON strings (never dicts) as values, failover across addresses, and no help from the library's
own reading of CONSUL_HTTP_ADDR (ours is a comma-separated list it cannot parse).

What a failure means decides what `call` does with it:
- never sent (connection refused, connect timeout): try the next address;
- 500 "No cluster leader": nothing was applied; retry every address with backoff for about the
  length of an election (LEADERLESS_BUDGET), then StoreUnavailable;
- any other 5xx, a read timeout, a connection dropped after sending: a read tries the next address,
  a write raises StoreUncertain (it may have been applied: resending a check-and-set elsewhere would
  meet our own committed write and call it somebody else's change);
- a 4xx is Consul's answer, the same on every address: 403 StoreForbidden, 404 StoreNotFound,
  others StoreRejected with the status and Consul's text. Never retried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlparse

import requests
import urllib3.exceptions

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import consul

from bot.metrics import CONSUL_ERRORS, CONSUL_SECONDS
from commands.addresses import ServerAddress
from commands.errors import (
    StoreError,
    StoreForbidden,
    StoreNotFound,
    StoreRejected,
    StoreUnavailable,
    StoreUncertain,
)
from commands.interfaces import HeldLock
from commands.servers import ServerEntry, Upstream, encode

T = TypeVar("T")

# "No cluster leader" (500) lasts as long as a Consul election: usually a few seconds. Retry every
# address with a growing pause for about this long in total before calling Consul unavailable.
LEADERLESS_BUDGET = 10.0  # seconds, across all addresses and rounds
LEADERLESS_BACKOFF = 0.25  # the first pause; doubles after each leaderless round
LEADERLESS_BACKOFF_MAX = 2.0
MAX_ROUNDS = 64  # a hard cap on rounds, whatever the budget is set to
THREADS = 32
TXN_MAX_OPS = 128  # Consul refuses a transaction with more operations (413)
_BODY_CHARS = 200  # how much of Consul's answer a message quotes

_STATUS = re.compile(r"\s*(\d{3})\s?(.*)", re.DOTALL)


@contextlib.contextmanager
def _without_consul_env() -> Iterator[None]:
    """python-consul2 lets CONSUL_HTTP_* override what it is given: we pass everything explicitly."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CONSUL_HTTP_")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        os.environ.update(saved)


def _client(address: str, token: str | None, timeout: float) -> consul.Consul:
    url = urlparse(address)
    port = url.port or (443 if url.scheme == "https" else 8500)
    host = url.hostname or "127.0.0.1"
    if ":" in host:  # an IPv6 literal: python-consul2 joins host and port as they are given
        host = f"[{host}]"
    with _without_consul_env():
        return consul.Consul(host=host, port=port, scheme=url.scheme or "http", token=token, timeout=timeout)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_CHARS else text[: _BODY_CHARS - 3] + "..."


def _status(error: consul.ConsulException) -> tuple[int | None, str]:
    """python-consul2 puts "NNN body" in most of its exceptions (not in NotFound/ACL ones)."""
    match = _STATUS.fullmatch(str(error))
    if match is None:
        return None, _short(str(error))
    return int(match.group(1)), _short(match.group(2))


def _never_sent(error: requests.exceptions.RequestException) -> bool:
    """True only when the request cannot have reached Consul: no connection was ever made."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(error, requests.exceptions.ConnectionError) and not isinstance(
        error, requests.exceptions.SSLError | requests.exceptions.ProxyError
    ):
        cause = error.args[0] if error.args else None
        # Refused and unresolvable hosts come as MaxRetryError(NewConnectionError); a connection that
        # broke after the request went out comes as ProtocolError and must not count as "not sent".
        reason = getattr(cause, "reason", None)
        return isinstance(cause, urllib3.exceptions.MaxRetryError) and isinstance(
            reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
        )
    return False


def _transport_reason(error: requests.exceptions.RequestException, timeout: float) -> str:
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return f"no connection within {timeout:g} s"
    if isinstance(error, requests.exceptions.ReadTimeout):
        return f"no answer within {timeout:g} s"
    if _never_sent(error):
        return "connection refused" if "refused" in str(error).lower() else "cannot connect"
    if isinstance(error, requests.exceptions.ConnectionError):
        return "connection dropped before an answer"
    return f"broken answer ({type(error).__name__})"


class ConsulStore:
    """`UpstreamStore` over Consul KV at `<prefix>/<upstream>/<ip>:<port>`."""

    def __init__(
        self, addresses: tuple[str, ...], prefix: str = "upstreams", token: str | None = None, timeout: float = 5.0
    ) -> None:
        if not addresses:
            raise ValueError("at least one Consul address is needed")
        self.addresses = addresses
        self.prefix = prefix.strip("/")
        self.timeout = timeout
        self._clients = [_client(a, token, timeout) for a in addresses]
        self._preferred = 0  # the address that answered last is asked first
        # python-consul2 blocks: its calls get threads of their own, so a slow Consul cannot starve
        # the default executor (and with it the rest of the bot).
        self._threads = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="consul")

    # -- the failover core ------------------------------------------------------------------------

    async def call(self, operation: Callable[[consul.Consul], T], what: str, *, write: bool = False) -> T:
        started = time.monotonic()
        try:
            result = await self._call(operation, what, write=write)
        except StoreError as error:
            CONSUL_SECONDS.labels("error").observe(time.monotonic() - started)
            CONSUL_ERRORS.labels(type(error).__name__).inc()
            raise
        CONSUL_SECONDS.labels("ok").observe(time.monotonic() - started)
        return result

    async def _call(self, operation: Callable[[consul.Consul], T], what: str, *, write: bool = False) -> T:
        """Run one python-consul2 call against the addresses in turn (see the module's docstring).

        `write=True` for a request that is not safe to send twice (kv put, delete, txn): once it may
        have reached Consul, a lost answer raises StoreUncertain instead of trying another address.
        Raises StoreForbidden, StoreNotFound, StoreRejected, StoreUncertain or StoreUnavailable; a
        python-consul2 refusal of its own arguments (no HTTP status) is a StoreError.
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = started + LEADERLESS_BUDGET
        pause = LEADERLESS_BACKOFF
        count = len(self._clients)
        failures: dict[str, str] = {}  # the latest reason per address, in the order first tried
        for _round in range(MAX_ROUNDS):
            leaderless = False
            for step in range(count):
                i = (self._preferred + step) % count
                address = self.addresses[i]
                try:
                    result = await loop.run_in_executor(self._threads, operation, self._clients[i])
                except (consul.ACLPermissionDenied, consul.ACLDisabled) as error:
                    body = _short(str(error)) or "Permission denied"
                    raise StoreForbidden(
                        f"Consul at {address} refused {what} (403: {body}); "
                        "check CONSUL_HTTP_TOKEN and its policy for the KV prefix."
                    ) from None
                except consul.NotFound as error:
                    raise StoreNotFound(f"Consul at {address} answered {what} with 404: {_short(str(error))}") from None
                except consul.ConsulException as error:
                    status, body = _status(error)
                    if status is None:
                        raise StoreError(f"python-consul2 refused {what}: {body}") from None
                    if 400 <= status < 500:
                        # Consul's considered answer (bad request, too large, rate limited...): every
                        # address would say the same, and the status tells the caller what it was.
                        raise StoreRejected(f"Consul at {address} refused {what} ({status}: {body})", status) from None
                    if "no cluster leader" in body.lower():
                        # Nothing was applied (no leader to apply it): safe to ask again, anywhere.
                        leaderless = True
                        failures[address] = f"{status} {body}"
                        continue
                    if write:
                        raise StoreUncertain(
                            f"Consul at {address} answered {what} with {status} ({body}): "
                            "it may or may not have been applied."
                        ) from None
                    failures[address] = f"{status} {body}"
                except requests.exceptions.RequestException as error:
                    reason = _transport_reason(error, self.timeout)
                    if write and not _never_sent(error):
                        raise StoreUncertain(
                            f"{what} was sent to Consul at {address} but {reason}: it may or may not have been applied."
                        ) from None
                    failures[address] = reason
                else:
                    self._preferred = i
                    return result
            if not leaderless or time.monotonic() + pause > deadline:
                break
            # An election is under way somewhere: give it time, then ask every address again.
            await asyncio.sleep(pause)
            pause = min(pause * 2, LEADERLESS_BACKOFF_MAX)
        spent = time.monotonic() - started
        tail = f" (retried for {spent:.1f} s)" if spent >= 1 else ""
        text = "; ".join(f"{address}: {reason}" for address, reason in failures.items())
        raise StoreUnavailable(f"Consul unreachable for {what}: {text}{tail}.")

    # -- UpstreamStore ----------------------------------------------------------------------------

    def folder(self, upstream: str) -> str:
        return f"{self.prefix}/{upstream}/"  # keep the trailing '/', as upsync does

    def key(self, upstream: str, address: ServerAddress) -> str:
        return f"{self.folder(upstream)}{address}"

    async def read(self, upstream: str) -> Upstream:
        folder = self.folder(upstream)

        def read_and_parse(client: consul.Consul) -> Upstream:
            # Parsed in the worker thread too: a big upstream's JSON never holds up the event loop.
            index, items = client.kv.get(folder, recurse=True)
            return _upstream(upstream, folder, index, items)

        return await self.call(read_and_parse, f"reading {folder}")

    async def write(
        self,
        upstream: str,
        address: ServerAddress,
        fields: dict[str, Any],
        cas: int,
        witnesses: Mapping[ServerAddress, int] | None = None,
        held: HeldLock | None = None,
    ) -> bool:
        """Check-and-set the entry; with `witnesses`, in one transaction that also checks each
        witness entry still has the ModifyIndex given (0: it must not exist); with `held`, also that the
        lock key is still held by that session (`check-session`). False when any of them changed, and
        then nothing is written. StoreUncertain when the answer was lost after sending."""
        key, value = self.key(upstream, address), encode(fields)
        if not witnesses and held is None:
            return bool(await self.call(lambda c: c.kv.put(key, value, cas=cas), f"writing {key}", write=True))
        payload = self._guarded_write(upstream, address, value, cas, witnesses or {})
        if held is not None:
            payload.append({"KV": {"Verb": "check-session", "Key": held.key, "Session": held.session}})
        try:
            await self.call(
                lambda c: c.txn.put(payload), f"writing {key} (guarded by {len(payload) - 1} witnesses)", write=True
            )
        except StoreRejected as error:
            if error.status == 409:  # Consul rolled the transaction back: a check failed
                return False
            raise
        return True

    def _guarded_write(
        self, upstream: str, address: ServerAddress, value: str, cas: int, witnesses: Mapping[ServerAddress, int]
    ) -> list[dict[str, Any]]:
        """The /v1/txn payload: `cas` on the entry, then `check-index` (or `check-not-exists`) per witness."""
        if len(witnesses) + 1 > TXN_MAX_OPS:
            raise ValueError(f"at most {TXN_MAX_OPS - 1} witnesses fit in one Consul transaction")
        encoded = base64.b64encode(value.encode()).decode()
        ops: list[dict[str, Any]] = [
            {"KV": {"Verb": "cas", "Key": self.key(upstream, address), "Value": encoded, "Index": cas}}
        ]
        for witness, index in sorted(witnesses.items()):
            if witness == address:
                # The cas already guards the entry itself; a check-index after it would see our own write.
                if index != cas:
                    raise ValueError(f"{address} is witness with index {index} and written with cas {cas}")
                continue
            key = self.key(upstream, witness)
            if index == 0:  # a ModifyIndex is never 0: the caller saw no such entry
                ops.append({"KV": {"Verb": "check-not-exists", "Key": key}})
            else:
                ops.append({"KV": {"Verb": "check-index", "Key": key, "Index": index}})
        return ops

    async def delete(self, upstream: str, address: ServerAddress, cas: int) -> bool:
        key = self.key(upstream, address)
        return bool(await self.call(lambda c: c.kv.delete(key, cas=cas), f"deleting {key}", write=True))

    async def leader(self) -> str:
        """Consul's leader address (a cheap reachability check for /healthz and check-config)."""
        return str(await self.call(lambda c: c.status.leader(), "reading status/leader"))


def _upstream(name: str, folder: str, index: str | None, items: list[dict[str, Any]] | None) -> Upstream:
    servers: list[ServerEntry] = []
    skipped: list[str] = []
    for item in items or []:
        key = item["Key"]
        if key == folder:
            continue
        address = ServerAddress.from_key(key)
        if address is None:
            skipped.append(key)
            continue
        servers.append(ServerEntry.from_kv(address, item.get("Value"), int(item["ModifyIndex"])))
    return Upstream(name, tuple(sorted(servers, key=lambda s: s.address)), int(index or 0), tuple(skipped))
