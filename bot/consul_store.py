"""The Consul adapter: the only code that talks to Consul, through python-consul2.

Kept narrow on purpose (see UPSYNC-NOTES): explicit timeouts, our own errors for connection failures
and 403s, JSON strings (never dicts) as values, failover across addresses, and no help from the
library's own reading of CONSUL_HTTP_ADDR (ours is a comma-separated list it cannot parse).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlparse

import requests

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import consul

from commands.addresses import ServerAddress
from commands.errors import StoreForbidden, StoreUnavailable
from commands.servers import ServerEntry, Upstream, encode

T = TypeVar("T")

LEADERLESS_RETRIES = 2  # "No cluster leader" during an election: retry this address, then the next
LEADERLESS_BACKOFF = 0.25
THREADS = 32


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
    with _without_consul_env():
        return consul.Consul(
            host=url.hostname or "127.0.0.1", port=port, scheme=url.scheme or "http", token=token, timeout=timeout
        )


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

    async def call(self, operation: Callable[[consul.Consul], T], what: str) -> T:
        """Run one python-consul2 call, trying each address in turn on connection errors and 5xx."""
        failures: list[str] = []
        count = len(self._clients)
        for step in range(count):
            i = (self._preferred + step) % count
            address = self.addresses[i]
            for attempt in range(LEADERLESS_RETRIES + 1):
                try:
                    client = self._clients[i]
                    result = await asyncio.get_running_loop().run_in_executor(self._threads, operation, client)
                except (consul.ACLPermissionDenied, consul.ACLDisabled) as error:
                    body = str(error).strip().splitlines()[0] if str(error).strip() else "Permission denied"
                    raise StoreForbidden(
                        f"Consul at {address} refused {what} (403: {body[:120]}); "
                        "check CONSUL_HTTP_TOKEN and its policy for the KV prefix."
                    ) from None
                except requests.exceptions.ConnectTimeout:
                    failures.append(f"{address}: no connection within {self.timeout:g} s")
                except requests.exceptions.ReadTimeout:
                    failures.append(f"{address}: no answer within {self.timeout:g} s")
                except requests.exceptions.ConnectionError as error:
                    reason = "connection refused" if "refused" in str(error).lower() else "cannot connect"
                    failures.append(f"{address}: {reason}")
                except consul.ConsulException as error:
                    text = str(error).strip()[:120]
                    if text.startswith("5") and attempt < LEADERLESS_RETRIES:
                        await asyncio.sleep(LEADERLESS_BACKOFF * (attempt + 1))
                        continue
                    failures.append(f"{address}: {text}")
                else:
                    self._preferred = i
                    return result
                break
        raise StoreUnavailable(f"Consul unreachable for {what}: " + "; ".join(failures) + ".")

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

    async def write(self, upstream: str, address: ServerAddress, fields: dict[str, Any], cas: int) -> bool:
        key, value = self.key(upstream, address), encode(fields)
        return bool(await self.call(lambda c: c.kv.put(key, value, cas=cas), f"writing {key}"))

    async def delete(self, upstream: str, address: ServerAddress, cas: int) -> bool:
        key = self.key(upstream, address)
        return bool(await self.call(lambda c: c.kv.delete(key, cas=cas), f"deleting {key}"))

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
