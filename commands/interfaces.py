"""The small interfaces commands act through. `bot/` provides the real ones, tests may too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from commands.addresses import ServerAddress
from commands.quoting import quoted  # noqa: F401 (re-exported: where probe details are quoted)
from commands.servers import Upstream
from commands.steps import OutputLine, StepResult, StepTarget


@dataclass(frozen=True)
class HeldLock:
    """A write condition: the lock key is still held by this session (Consul `check-session`), so a bot
    that lost its lock cannot write, even if it has not noticed yet."""

    key: str
    session: str


class UpstreamStore(Protocol):
    """Consul KV under `<prefix>/<upstream>/<ip>:<port>`; writes are check-and-set."""

    async def read(self, upstream: str) -> Upstream:
        """Every server of the upstream (empty when the folder is empty or missing)."""
        ...

    async def write(
        self,
        upstream: str,
        address: ServerAddress,
        fields: dict[str, Any],
        cas: int,
        witnesses: Mapping[ServerAddress, int] | None = None,
        held: HeldLock | None = None,
    ) -> bool:
        """Write the entry if its ModifyIndex is still `cas` (0: only if it does not exist yet) and every
        witness entry of the same upstream still has the ModifyIndex given (one Consul transaction), so a
        guard read from the witnesses ("another server keeps serving") still holds when the write lands;
        with `held`, also only while that lock is held by that session. False when any of them changed.
        Raises StoreUncertain when the answer was lost after sending."""
        ...

    async def delete(self, upstream: str, address: ServerAddress, cas: int) -> bool:
        """Delete the entry if its ModifyIndex is still `cas`."""
        ...


@dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    detail: str  # "200 OK", "timeout after 3s", "connection refused", ...
    seconds: float = 0.0
    # The value of the response header the caller asked for (`health.version_header`): the version the
    # node says it runs, already made safe to show (see commands.versions.shown_version). None: not asked,
    # no answer, or no such header.
    version: str | None = None


class Prober(Protocol):
    async def probe(self, url: str, timeout: float, header: str | None = None) -> ProbeResult:
        """GET `url` within `timeout`; `header` names a response header whose value is kept as `version`."""
        ...


@dataclass(frozen=True)
class NginxView:
    """What nginx itself says about an upstream's servers, keyed by `ip:port`.

    `checks`: nginx_upstream_check_module's "up"/"down". `listed_down`: nginx-upsync-module's
    `upstream_show` (True = listed with `down`). Either is None when not configured; `errors`
    says what could not be read.
    """

    checks: dict[str, str] | None = None
    listed_down: dict[str, bool] | None = None
    errors: tuple[str, ...] = ()
    checks_error: str | None = None  # why `checks` could not be read (also in `errors`)
    listed_error: str | None = None  # why `listed_down` could not be read (also in `errors`)


class NginxReader(Protocol):
    async def read(self, upstream: str) -> NginxView: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None: ...


OutputSink = Callable[[OutputLine], Awaitable[None]]


class Executor(Protocol):
    """Runs an app's configured release steps on the node that owns `host:port`."""

    async def check(self, target: StepTarget, steps: Sequence[str]) -> str | None:
        """Preflight: None when the node can run `steps`; otherwise why not (nothing is run)."""
        ...

    async def run(self, step: str, target: StepTarget, on_output: OutputSink | None = None) -> StepResult:
        """Run one step to its end, its timeout, or cancellation (which stops it on the node too).
        Raises `StepRefused` before running anything when a value or the step is not valid."""
        ...

    async def close(self) -> None: ...


def stops_for_sure(executor: object) -> bool:
    """Whether a cancelled `run` returns only once the step is gone (its process group killed and reaped
    on this machine). Remote executors only ask the node to kill it, which may not get there: a journal
    then keeps the step's deadline."""
    return bool(getattr(executor, "stops_on_cancel", False))


@dataclass(frozen=True)
class LockInfo:
    """Who holds an app's release lock (stored as the lock key's value)."""

    app: str
    release_id: str
    requester: str
    holder: str  # the bot instance: host and pid
    since: float


class LockBusy(Exception):
    def __init__(self, info: LockInfo | None) -> None:
        super().__init__(f"release lock held by {info}")
        self.info = info


class ReleaseLock(Protocol):
    @property
    def lost(self) -> bool:
        """True once the lock can no longer be trusted: Consul said its session is gone, or no renewal
        succeeded within the session TTL (monotonic clock, from the last renewal that succeeded)."""
        ...

    async def wait_lost(self) -> None:
        """Returns once `lost` is true (the engine races its waits against this)."""
        ...

    @property
    def held(self) -> HeldLock | None:
        """The condition a write made under this lock carries (None: the store cannot check it)."""
        ...

    async def release(self) -> None: ...


class LockManager(Protocol):
    async def acquire(self, info: LockInfo) -> ReleaseLock:
        """The app's lock, or LockBusy naming who holds it."""
        ...

    async def holder(self, app: str) -> LockInfo | None: ...

    async def free(self) -> dict[str, int]:
        """app -> version of its lock key, for every app whose release lock is free now (one read): a
        version that changed since the last look means a lock was released or its holder's session ended."""
        ...
