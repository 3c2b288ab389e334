"""Release steps as the executors run them: validated values, shell-quoted, bounded output tails.

Nothing from chat reaches a node except these validated values; the command text itself comes only
from the config (or, for the agent, from the agent's own config).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections import deque
from dataclasses import dataclass, field

from commands.errors import UserError
from commands.quoting import quoted
from commands.settings import APP_NAME_PATTERN, AppSettings
from commands.versions import version_problem

TAIL_LINES = 20  # lines of stdout/stderr kept in a result
LINE_CHARS = 500  # a longer line is cut: one runaway line must not fill a Slack message
_APP = re.compile(APP_NAME_PATTERN)
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
_PLACEHOLDER = re.compile(r"\{(app|host|port|version)\}")


class StepRefused(UserError):
    """A step that will not run: a bad value, an unknown step. Nothing ran."""


@dataclass(frozen=True)
class StepTarget:
    """The validated values a step is filled in with."""

    app: str
    host: str
    port: int
    version: str | None = None

    @property
    def node(self) -> str:
        return f"{self.host}:{self.port}"


def validate_target(
    target: StepTarget,
    version_pattern: str,
    known_apps: set[str] | None = None,
    known_hosts: set[str] | None = None,
) -> StepTarget:
    """Refuse any value that is not what it claims to be, before anything runs."""
    if not _APP.match(target.app) or (known_apps is not None and target.app not in known_apps):
        raise StepRefused(f"`{target.app}` is not a known app; nothing was run.")
    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        if not (_HOSTNAME.match(target.host) and known_hosts is not None and target.host in known_hosts):
            raise StepRefused(
                f"`{target.host}` is not an IP address or a host configured under ssh.hosts; nothing was run."
            ) from None
    if isinstance(target.port, bool) or not isinstance(target.port, int) or not 1 <= target.port <= 65535:
        raise StepRefused(f"`{target.port}` is not a port (1-65535); nothing was run.")
    problem = None if target.version is None else version_problem(target.version, version_pattern)
    if problem:
        raise StepRefused(
            f"version refused: {problem}; nothing was run. A version is letters, digits, `.`, `_` and `-` "
            "(or what the app's release.version_pattern allows), never starting with `-`, never `.` or `..`."
        )
    return target


def render_command(step: str, template: str, target: StepTarget) -> str:
    """Fill `{app}` `{host}` `{port}` `{version}` in with shell-quoted values; other text is kept."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        found = getattr(target, name)
        if found is None:
            raise StepRefused(f"step `{step}` needs a version: pass `--version V`; nothing was run.")
        return shlex.quote(str(found))

    return _PLACEHOLDER.sub(value, template)


@dataclass(frozen=True)
class OutputLine:
    step: str
    node: str
    stream: str  # "stdout" | "stderr"
    line: str


@dataclass(frozen=True)
class StepResult:
    step: str
    node: str
    exit_status: int | None  # None: the command did not finish (connect error, timeout, cancelled)
    duration: float
    stdout_tail: tuple[str, ...] = ()
    stderr_tail: tuple[str, ...] = ()
    error: str | None = None  # "connect: ...", "auth: ...", "host key: ...", "timeout: ...", "cancelled"

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_status == 0

    @property
    def summary(self) -> str:
        if self.ok:
            return f"{self.step} ok in {self.duration:.1f} s"
        # The node's own words (its output, its executor's error) are quoted: they never carry markup.
        if self.error:
            return f"{self.step} failed: {quoted(self.error)}"
        tail = " | ".join(self.stderr_tail[-3:]) or " | ".join(self.stdout_tail[-3:]) or "no output"
        return f"{self.step} failed: exit status {self.exit_status} after {self.duration:.1f} s: {quoted(tail)}"


@dataclass
class OutputTail:
    """Splits streamed bytes into lines and keeps the last few of each stream."""

    stdout: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    def add(self, stream: str, line: str) -> str:
        line = line.rstrip("\r\n")
        if len(line) > LINE_CHARS:
            line = line[:LINE_CHARS] + "..."
        (self.stdout if stream == "stdout" else self.stderr).append(line)
        return line


def prepare_step(
    app: AppSettings, step: str, target: StepTarget, known_hosts: set[str] | None = None
) -> tuple[str, float]:
    """The shell command and timeout for `step` of `app` on `target`, or StepRefused."""
    spec = app.release.steps.get(step)
    if spec is None:
        configured = ", ".join(sorted(app.release.steps)) or "none"
        raise StepRefused(f"{app.name} has no step `{step}` (configured: {configured}); nothing was run.")
    validate_target(target, app.release.version_pattern, {app.name}, known_hosts)
    return render_command(step, spec.command, target), spec.timeout
