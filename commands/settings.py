"""An app's settings as commands see them. `bot.config` reads and validates them from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field

# What an app may be named: in commands, in step templates and in the config alike.
APP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

@dataclass(frozen=True)
class NginxSettings:
    status_url: str | None = None  # nginx_upstream_check_module's check_status (?format=json or csv)
    list_url: str | None = None  # nginx-upsync-module's upstream_show
    upsync_interval: float = 0.5  # seconds between upsync polls (plus up to 1 s of jitter)

    @property
    def propagation(self) -> float:
        """How long a KV change may take to reach every nginx worker: interval + 1 s jitter."""
        return self.upsync_interval + 1.0


@dataclass(frozen=True)
class HealthSettings:
    url: str | None = None  # e.g. "http://{host}:{port}/ping"; 2xx/3xx is healthy
    interval: float = 10.0
    timeout: float = 3.0
    window: float = 120.0
    rise: int = 2
    # Where the health watch learns a node's health: its own probes of `url`, nginx's check module
    # (`nginx.status_url`, read once per interval for the whole nginx), or both (either failing alerts).
    source: str = "both"  # probe | nginx | both
    # A response header of the probe naming the version a node runs (e.g. "X-App-Version"), shown by
    # /upstream status; None: versions are not shown.
    version_header: str | None = None

    @property
    def probes(self) -> bool:
        """The watch probes the nodes itself."""
        return self.url is not None and self.source in ("probe", "both")

    def url_for(self, host: str, port: int) -> str | None:
        if self.url is None:
            return None
        return self.url.replace("{host}", host).replace("{port}", str(port))


@dataclass(frozen=True)
class StepSpec:
    command: str  # shell text from the config; {app} {host} {port} {version} are filled in, quoted
    timeout: float = 300.0  # the command is killed on the node after this


@dataclass(frozen=True)
class ReleaseSettings:
    executor: str = "local"  # ssh | agent | local
    drain_wait: float = 2.0
    steps: dict[str, StepSpec] = field(default_factory=dict)
    step_timeout: float = 300.0  # the default for steps that set none
    version_pattern: str = r"^[A-Za-z0-9._-]{1,64}$"


@dataclass(frozen=True)
class SshSettings:
    """How to reach one node over SSH (global defaults, then the app's, then the host's)."""

    user: str = "deploy"
    port: int = 22
    key: str | None = None
    known_hosts: str | None = None
    jump: str | None = None  # [user@]host[:port] of a jump host
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class WatchSettings:
    """The health watch of an app (on when the app has a health.url or nginx.status_url)."""

    enabled: bool = True
    reminder: float = 3600.0  # an open incident is posted again after this (unless acknowledged)
    drained_reminder: float = 86400.0  # a node drained longer than this gets one reminder
    concurrency: int = 64  # probes in flight at once


@dataclass(frozen=True)
class SshOverride:
    """Per-app or per-host SSH settings; None keeps what the level above says."""

    user: str | None = None
    port: int | None = None
    jump: str | None = None


@dataclass(frozen=True)
class AppSettings:
    name: str
    upstream: str
    nginx: NginxSettings = field(default_factory=NginxSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    release: ReleaseSettings = field(default_factory=ReleaseSettings)
    approvers: tuple[str, ...] = ()  # Slack user IDs (U/W...) or user-group IDs (S...)
    approval: str = "none"  # required | none
    ssh: SshOverride = field(default_factory=SshOverride)
    watch: WatchSettings = field(default_factory=WatchSettings)
    operators: tuple[str, ...] | None = None  # who may change this app; None: `access.operators`
    networks: tuple[str, ...] = ()  # CIDRs `/upstream add` accepts; empty: any address
