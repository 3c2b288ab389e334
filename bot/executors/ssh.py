"""The SSH executor (asyncssh): key authentication, host keys checked against known_hosts and never
auto-accepted, one connection per node reused across a release's steps, optional jump host.

A client-side timeout does not stop a remote command (EXECUTOR-NOTES), so every step runs on the
node under coreutils' `timeout`, which kills the step's whole process group there; the wrapper
first prints its PID on stderr so that a cancelled step can be killed on the node too.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncssh

from commands.interfaces import OutputSink
from commands.settings import AppSettings, SshOverride, SshSettings
from commands.steps import OutputLine, OutputTail, StepResult, StepTarget, prepare_step

KILL_GRACE = 5  # the node's `timeout -k`: SIGKILL this long after SIGTERM
CLIENT_GRACE = 15.0  # past the node's own timeout, the client gives up on the channel
PID_MARK = "upstream-bot-step-pid:"


class SshError(Exception):
    """A connection-level failure, with the kind first: connect, auth, host key."""


@dataclass(frozen=True)
class Route:
    host: str
    port: int
    user: str
    jump: str | None

    def __str__(self) -> str:
        via = f" via {self.jump}" if self.jump else ""
        return f"{self.user}@{self.host}:{self.port}{via}"


def wrap(command: str, timeout: float, run_id: str) -> str:
    """`command` under the node's `timeout`, announcing its PID first (the shell's PID becomes timeout's)."""
    seconds = max(1, int(timeout + 0.999))
    return (
        f"echo {PID_MARK}$$ >&2; exec timeout -k {KILL_GRACE} {seconds} "
        f"sh -c {shlex.quote(command)} upstream-bot-step-{run_id}"
    )


class _KeyRecorder(asyncssh.SSHClient):
    """Remembers the host key a server offered when known_hosts did not trust it (for the error)."""

    def __init__(self) -> None:
        self.offered: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.offered = key
        return False  # never auto-accept


class SshExecutor:
    def __init__(self, app: AppSettings, ssh: SshSettings, hosts: dict[str, SshOverride] | None = None) -> None:
        self.app = app
        self.ssh = ssh
        self.hosts = hosts or {}
        self._connections: dict[Route, asyncssh.SSHClientConnection] = {}
        self._locks: dict[Route, asyncio.Lock] = {}
        self.connections_opened = 0

    # -- routes and connections ---------------------------------------------------------------------

    def route(self, host: str) -> Route:
        """Host settings win over the app's, which win over the global ones."""
        layers = [self.hosts.get(host, SshOverride()), self.app.ssh]
        user = next((o.user for o in layers if o.user), self.ssh.user)
        port = next((o.port for o in layers if o.port), self.ssh.port)
        jump = next((o.jump for o in layers if o.jump), self.ssh.jump)
        return Route(host, port, user, jump)

    def _options(self) -> dict[str, object]:
        return {
            "known_hosts": self.ssh.known_hosts or (),
            "client_keys": [self.ssh.key] if self.ssh.key else (),
            "agent_path": None,  # only the configured key, never whatever an ssh-agent holds
            "config": None,  # no ~/.ssh/config surprises
            "connect_timeout": self.ssh.connect_timeout,
            "login_timeout": self.ssh.connect_timeout,
        }

    async def _open(
        self, host: str, port: int, user: str, tunnel: asyncssh.SSHClientConnection | None, label: str
    ) -> asyncssh.SSHClientConnection:
        recorder = _KeyRecorder()
        try:
            connection, _ = await asyncssh.create_connection(
                lambda: recorder, host, port, username=user, tunnel=tunnel or (), **self._options()
            )
        except asyncssh.HostKeyNotVerifiable as error:
            raise SshError(self._host_key_message(host, port, recorder.offered)) from error
        except asyncssh.PermissionDenied as error:
            raise SshError(f"auth: {user}@{host}:{port} refused the key {self.ssh.key} ({error.reason})") from error
        except (TimeoutError, asyncssh.ConnectionLost) as error:
            raise SshError(
                f"connect: {label}: no SSH answer within {self.ssh.connect_timeout:g} s ({type(error).__name__})"
            ) from error
        except asyncssh.Error as error:
            raise SshError(f"connect: {label}: {error.reason}") from error
        except OSError as error:
            reason = "connection refused" if isinstance(error, ConnectionRefusedError) else error.strerror or error
            raise SshError(f"connect: {label}: {reason}") from error
        self.connections_opened += 1
        return connection

    def _host_key_message(self, host: str, port: int, offered: asyncssh.SSHKey | None) -> str:
        seen = offered.get_fingerprint("sha256") if offered is not None else "no key"
        known = self.ssh.known_hosts
        listed = False
        if known:
            with contextlib.suppress(OSError, ValueError):
                listed = bool(asyncssh.read_known_hosts(known).match(host, host, port)[0])
        if listed:
            return (
                f"host key: {host}:{port} presented {seen}, which differs from the key {known} has for it "
                "(changed host key: a reinstalled node or a man in the middle). Refused; check it out of "
                "band before replacing the entry."
            )
        return (
            f"host key: {host}:{port} presented {seen}, which is not in {known or 'any known_hosts file'} "
            "(unknown host). Refused; add the key after checking it out of band."
        )

    async def connection(self, host: str) -> asyncssh.SSHClientConnection:
        route = self.route(host)
        lock = self._locks.setdefault(route, asyncio.Lock())
        async with lock:
            existing = self._connections.get(route)
            if existing is not None and not existing.is_closed():
                return existing
            tunnel = None
            if route.jump:
                jump_user, _, jump_host = route.jump.rpartition("@")
                jump_name, _, jump_port = jump_host.partition(":")
                tunnel = await self._open(
                    jump_name, int(jump_port or 22), jump_user or route.user, None, f"jump host {route.jump}"
                )
            self._connections[route] = await self._open(route.host, route.port, route.user, tunnel, str(route))
            return self._connections[route]

    async def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        for connection in self._connections.values():
            with contextlib.suppress(Exception):
                await connection.wait_closed()
        self._connections.clear()

    # -- Executor ---------------------------------------------------------------------------------

    async def check(self, target: StepTarget, steps: Sequence[str]) -> str | None:
        missing = [s for s in steps if s not in self.app.release.steps]
        if missing:
            return f"{self.app.name} has no step {', '.join(missing)} configured"
        try:
            connection = await self.connection(target.host)
            result = await connection.run(
                "command -v timeout >/dev/null", check=False, timeout=self.ssh.connect_timeout
            )
        except SshError as error:
            return str(error)
        except (asyncssh.Error, OSError, TimeoutError) as error:
            return f"connect: {self.route(target.host)}: {error}"
        if result.exit_status != 0:
            return f"{target.host} has no `timeout` command (coreutils): steps could not be killed on timeout"
        return None

    async def run(self, step: str, target: StepTarget, on_output: OutputSink | None = None) -> StepResult:
        command, timeout = prepare_step(self.app, step, target, set(self.hosts))
        started = time.monotonic()
        try:
            connection = await self.connection(target.host)
        except SshError as error:
            return StepResult(step, target.node, None, time.monotonic() - started, error=str(error))
        run_id = uuid.uuid4().hex[:12]
        tail = OutputTail()
        remote_pid: list[int] = []

        async def pump(stream: asyncssh.SSHReader[str], name: str) -> None:
            async for raw in stream:
                if raw == "":  # end of stream (asyncssh yields it once); an empty line is "\n"
                    break
                if name == "stderr" and raw.startswith(PID_MARK) and not remote_pid:
                    remote_pid.append(int(raw[len(PID_MARK) :].strip() or 0))
                    continue
                line = tail.add(name, raw)
                if on_output is not None:
                    await on_output(OutputLine(step, target.node, name, line))

        try:
            process = await connection.create_process(
                wrap(command, timeout, run_id), stdin=asyncssh.DEVNULL, encoding="utf-8", errors="replace"
            )
        except (asyncssh.Error, OSError) as error:
            self._connections.pop(self.route(target.host), None)
            return StepResult(
                step,
                target.node,
                None,
                time.monotonic() - started,
                error=f"connect: {self.route(target.host)}: session refused ({error})",
            )
        pumps = asyncio.gather(pump(process.stdout, "stdout"), pump(process.stderr, "stderr"))
        error: str | None = None
        try:
            await asyncio.wait_for(process.wait(), timeout + KILL_GRACE + CLIENT_GRACE)
        except TimeoutError:
            error = f"timeout: no end {timeout:g} s after start, even from the node's own timeout"
            await self._kill_remote(connection, remote_pid)
        except asyncio.CancelledError:
            await asyncio.shield(self._kill_remote(connection, remote_pid))
            process.close()
            pumps.cancel()
            raise
        try:
            await asyncio.wait_for(pumps, 2.0)
        except TimeoutError:
            pass
        process.close()
        status = process.exit_status
        if error is None and status == 124:
            error = f"timeout: still running after {timeout:g} s; killed on the node"
            status = None
        return StepResult(
            step,
            target.node,
            None if error else status,
            time.monotonic() - started,
            tuple(tail.stdout),
            tuple(tail.stderr),
            error,
        )

    async def _kill_remote(self, connection: asyncssh.SSHClientConnection, pid: list[int]) -> None:
        """SIGTERM the node's `timeout` (it passes the signal to the step's process group)."""
        if not pid or pid[0] <= 1:
            return
        with contextlib.suppress(Exception):
            await connection.run(f"kill -TERM {pid[0]}", check=False, timeout=10)
