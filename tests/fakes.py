"""In-memory fakes for driving the release engine with a fake clock (no I/O, instant)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from commands.addresses import ServerAddress
from commands.errors import StoreUnavailable, StoreUncertain
from commands.interfaces import HeldLock, NginxView, ProbeResult
from commands.servers import DEFAULTS, ServerEntry, Upstream
from commands.steps import OutputLine, StepResult, StepTarget


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


class FakeStore:
    """One upstream in memory. `conflicts`: how many writes answer "changed" (CAS false) first.
    `unreachable_after`: writes that succeed before every call raises StoreUnavailable.
    `lost_answers`: how many writes commit and then raise StoreUncertain (the answer was lost).
    `before_write`: a hook run between the writer's read and its write (someone acting at once).
    `late_answers`: writes whose answer is lost and that land later (just before the next write)."""

    def __init__(self, upstream: str, addresses: Sequence[str], drained: Sequence[str] = ()) -> None:
        self.upstream = upstream
        self.index = 10
        self.entries: dict[ServerAddress, tuple[dict[str, Any], int]] = {}
        for text in addresses:
            self.entries[ServerAddress.parse(text)] = ({**DEFAULTS, "down": int(text in drained)}, self.index)
        self.conflicts = 0
        self.unreachable_after: int | None = None
        self.writes: list[tuple[str, int]] = []
        self.lost_answers = 0
        self.late_answers = 0  # writes that raise StoreUncertain and land just before the next write
        self._late: tuple[ServerAddress, dict[str, Any]] | None = None
        self.before_write: Any = None
        self.lock: FakeLock | None = None  # a release's writes carry its lock: refused once it is lost

    def down(self, address: str) -> bool:
        return bool(self.entries[ServerAddress.parse(address)][0]["down"])

    def _reachable(self) -> None:
        if self.unreachable_after is not None and len(self.writes) >= self.unreachable_after:
            raise StoreUnavailable("Consul unreachable for the test: http://127.0.0.1:1: connection refused.")

    async def read(self, upstream: str) -> Upstream:
        self._reachable()
        servers = tuple(ServerEntry(a, dict(f), i) for a, (f, i) in sorted(self.entries.items()))
        return Upstream(upstream, servers, self.index)

    def set(self, address: str, down: bool) -> None:
        """Someone else (an operator, curl) writes the entry."""
        key = ServerAddress.parse(address)
        fields, _ = self.entries[key]
        self.index += 1
        self.entries[key] = ({**fields, "down": int(down)}, self.index)

    async def write(
        self,
        upstream: str,
        address: ServerAddress,
        fields: dict[str, Any],
        cas: int,
        witnesses: Mapping[ServerAddress, int] | None = None,
        held: HeldLock | None = None,
    ) -> bool:
        self._reachable()
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook()
        if self._late is not None:  # a write whose answer was lost lands now, before this one is looked at
            (late_address, late_fields), self._late = self._late, None
            self.index += 1
            self.entries[late_address] = (late_fields, self.index)
            self.writes.append((str(late_address), int(late_fields["down"])))
        if held is not None and self.lock is not None and self.lock.lost:
            return False  # check-session: the lock is no longer held by this session
        if self.conflicts > 0:
            self.conflicts -= 1
            current, _ = self.entries[address]
            self.index += 1
            self.entries[address] = (current, self.index)  # someone rewrote it meanwhile
            return False
        if self.late_answers > 0 and self.entries[address][1] == cas:
            self.late_answers -= 1
            self._late_commit(address, fields)  # committed later, after the answer was lost
            raise StoreUncertain("Consul did not answer the write within 5 s (it may have been applied).")
        if self.entries[address][1] != cas:
            return False
        if any(self.entries[w][1] != index for w, index in (witnesses or {}).items()):
            return False  # a witness changed: the transaction is refused as a whole
        self.index += 1
        self.entries[address] = (dict(fields), self.index)
        self.writes.append((str(address), int(fields["down"])))
        if self.lost_answers > 0:
            self.lost_answers -= 1
            raise StoreUncertain("Consul did not answer the write within 5 s (it may have been applied).")
        return True

    def _late_commit(self, address: ServerAddress, fields: dict[str, Any]) -> None:
        self._late = (address, dict(fields))

    async def delete(self, upstream: str, address: ServerAddress, cas: int) -> bool:
        raise NotImplementedError


class FakeExecutor:
    """Steps take `durations[step]` seconds of fake time; `fail[(node, step)]` is the exit status."""

    def __init__(self, clock: FakeClock, durations: dict[str, float] | None = None) -> None:
        self.clock = clock
        self.durations = durations or {}
        self.fail: dict[tuple[str, str], int] = {}
        self.check_problems: dict[str, str] = {}
        self.calls: list[tuple[str, str, str | None]] = []
        self.on_run: Any = None  # a hook called before each step (to abort mid-release, say)

    async def check(self, target: StepTarget, steps: Sequence[str]) -> str | None:
        return self.check_problems.get(target.node)

    async def run(self, step: str, target: StepTarget, on_output: Any = None) -> StepResult:
        self.calls.append((target.node, step, target.version))
        if self.on_run is not None:
            self.on_run(target.node, step)
        await self.clock.sleep(self.durations.get(step, 1.0))
        status = self.fail.get((target.node, step), 0)
        if on_output is not None:
            await on_output(OutputLine(step, target.node, "stdout", f"{step} output"))
        stderr = (f"{step} broke",) if status else ()
        return StepResult(step, target.node, status, self.durations.get(step, 1.0), (f"{step} output",), stderr)

    async def close(self) -> None:
        return None


class FakeProber:
    """Healthy unless the node's script says otherwise: a list of booleans consumed per probe, then `default`."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[bool]] = {}
        self.default: dict[str, bool] = {}
        self.probes: list[str] = []
        self.versions: dict[str, str] = {}  # what a node answers in the header asked for

    async def probe(self, url: str, timeout: float, header: str | None = None) -> ProbeResult:
        node = url.split("//", 1)[1].split("/", 1)[0]
        self.probes.append(node)
        script = self.scripts.get(node)
        healthy = script.pop(0) if script else self.default.get(node, True)
        version = self.versions.get(node) if header else None
        return ProbeResult(healthy, "200 OK" if healthy else "connection refused", version=version)


class FakeNginx:
    """nginx's view follows the store (upsync) unless `frozen` lists nodes it will not update."""

    def __init__(self, store: FakeStore, list_view: bool = True) -> None:
        self.store = store
        self.list_view = list_view
        self.frozen: set[str] = set()
        self.checks_down: set[str] = set()

    async def read(self, upstream: str) -> NginxView:
        if not self.list_view:
            return NginxView()
        listed = {str(a): bool(f["down"]) for a, (f, _) in self.store.entries.items()}
        for node in self.frozen:
            listed[node] = False
        checks = {str(a): ("down" if str(a) in self.checks_down else "up") for a in self.store.entries}
        return NginxView(checks=checks, listed_down=listed)


class FakeLock:
    """A release lock whose loss a test decides (the real one is tested against the Consul stand-in)."""

    def __init__(self) -> None:
        self._lost = asyncio.Event()
        self.released = False

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def lose(self) -> None:
        self._lost.set()

    @property
    def held(self) -> HeldLock:
        return HeldLock("upstream-bot/locks/app", "fake-session")

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def release(self) -> None:
        self.released = True
