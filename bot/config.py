"""The YAML config: read, validated (every problem named with its path), turned into settings."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from bot.durations import parse_duration
from commands.settings import (
    AppSettings,
    HealthSettings,
    NginxSettings,
    ReleaseSettings,
    SshOverride,
    SshSettings,
    StepSpec,
    WatchSettings,
)

DEFAULT_PATH = "./upstream-bot.yml"
AGENT_SECRET_ENV = "UPSTREAM_BOT_AGENT_SECRET"
_SLACK_ID = re.compile(r"^[UWS][A-Z0-9]{2,}$")
_CHANNEL = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_STEP = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_EXECUTORS = ("ssh", "agent", "local")


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ConsulConfig:
    addresses: tuple[str, ...] = ("http://127.0.0.1:8500",)
    prefix: str = "upstreams"
    token: str | None = None
    timeout: float = 5.0
    session_ttl: float = 15.0  # release and watch locks: how soon another replica can take over


@dataclass(frozen=True)
class SlackConfig:
    channel: str | None = None
    channels: tuple[str, ...] | None = None  # commands are taken only here; None: any channel


@dataclass(frozen=True)
class AccessConfig:
    operators: tuple[str, ...] = ()  # who may change any app (Slack user or user-group IDs)


@dataclass(frozen=True)
class HistoryConfig:
    keep: int = 1000  # audit entries kept per app; the oldest are pruned


@dataclass(frozen=True)
class AgentConfig:
    """How the bot reaches `upstream-bot agent` on the nodes."""

    port: int = 7070
    scheme: str = "https"  # agents serve TLS unless their agent.yml says insecure: true
    secret_file: str | None = None  # the shared HMAC secret; else $UPSTREAM_BOT_AGENT_SECRET
    ca_file: str | None = None  # to verify the agents' TLS certificates
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class Config:
    consul: ConsulConfig = field(default_factory=ConsulConfig)
    slack: SlackConfig = field(default_factory=SlackConfig)
    apps: dict[str, AppSettings] = field(default_factory=dict)
    ssh: SshSettings = field(default_factory=SshSettings)
    ssh_hosts: dict[str, SshOverride] = field(default_factory=dict)
    agent: AgentConfig = field(default_factory=AgentConfig)
    source: str = "<built in>"
    access: AccessConfig = field(default_factory=AccessConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)


def normalise_address(address: str) -> str:
    address = address.strip().rstrip("/")
    return address if "://" in address else f"http://{address}"


class _Reader:
    """Walks the YAML tree, collecting every problem with its dotted path instead of stopping at one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, f"expected a mapping with keys {', '.join(known)}")
            return {}
        for key in value:
            if key not in known:
                self.problem(f"{path}.{key}" if path else str(key), f"unknown key (known here: {', '.join(known)})")
        return dict(value)

    def get(self, data: dict[str, Any], key: str, path: str, convert: Callable[[Any], Any], default: Any) -> Any:
        if key not in data or data[key] is None:
            return default
        try:
            return convert(data[key])
        except (ValueError, TypeError) as error:
            self.problem(f"{path}.{key}" if path else key, str(error))
            return default


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _url(value: Any, placeholders: bool = False) -> str:
    """An http(s) URL with a host and, if given, a port from 1 to 65535. With `placeholders` (a node's
    health URL), `{host}` and `{port}` may stand for the node's address; no other URL has any."""
    text = _string(value)
    found = set(re.findall(r"\{[^}]*\}", text))
    unknown = sorted(found - {"{host}", "{port}"}) if placeholders else sorted(found)
    if unknown:
        allowed = "use {host} and {port}" if placeholders else "only health.url has placeholders ({host}, {port})"
        raise ValueError(f"{text!r} has placeholder(s) {', '.join(unknown)}: {allowed}")
    parsed = urlparse(text.replace("{host}", "h").replace("{port}", "1"))
    if parsed.scheme not in ("http", "https") or not parsed.hostname or any(c.isspace() for c in text):
        raise ValueError(f"{text!r} is not an http(s) URL, e.g. http://127.0.0.1:8500")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port: expected a number from 1 to 65535") from None
    if port == 0:
        raise ValueError(f"{text!r} has an invalid port: expected a number from 1 to 65535")
    return text


def _health_url(value: Any) -> str:
    return _url(value, placeholders=True)


def _positive_int(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value!r}")
        return value

    return convert


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return convert


# Names the bot's own keys use beside the apps' (upstream-bot/locks/<app> and the watch's election lock).
RESERVED_APP_NAMES = ("watch",)


def _parse_app(reader: _Reader, name: str, raw: Any) -> AppSettings:
    path = f"apps.{name}"
    if not _NAME.match(str(name)):
        reader.problem(path, "an app name is letters, digits, '.', '_' or '-' (it is typed in commands)")
    elif str(name) in RESERVED_APP_NAMES:
        reader.problem(
            path, f"`{name}` is reserved: upstream-bot/locks/watch is the health watch's lock; name the app otherwise"
        )
    data = reader.mapping(
        raw,
        path,
        ("upstream", "nginx", "health", "release", "approvers", "approval", "ssh", "watch", "operators", "networks"),
    )
    upstream = reader.get(data, "upstream", path, _string, str(name))
    if "/" in upstream:
        reader.problem(f"{path}.upstream", f"{upstream!r}: the upstream is one folder name, without '/'")

    n_path = f"{path}.nginx"
    n = reader.mapping(data.get("nginx"), n_path, ("status_url", "list_url", "upsync_interval"))
    nginx = NginxSettings(
        status_url=reader.get(n, "status_url", n_path, _url, None),
        list_url=reader.get(n, "list_url", n_path, _url, None),
        upsync_interval=reader.get(n, "upsync_interval", n_path, parse_duration, 0.5),
    )

    h_path = f"{path}.health"
    h = reader.mapping(data.get("health"), h_path, ("url", "interval", "timeout", "window", "rise", "source"))
    health = HealthSettings(
        url=reader.get(h, "url", h_path, _health_url, None),
        interval=reader.get(h, "interval", h_path, parse_duration, 10.0),
        timeout=reader.get(h, "timeout", h_path, parse_duration, 3.0),
        window=reader.get(h, "window", h_path, parse_duration, 120.0),
        rise=reader.get(h, "rise", h_path, _positive_int(1, 100), 2),
        source=reader.get(h, "source", h_path, _choice("probe", "nginx", "both"), "both"),
    )
    if health.source == "nginx" and nginx.status_url is None:
        reader.problem(f"{h_path}.source", "is nginx, but nginx.status_url is not set: set it, or use probe")
    if health.source == "probe" and health.url is None:
        reader.problem(f"{h_path}.source", "is probe, but health.url is not set: set it, or use nginx")
    if health.interval <= 0:
        reader.problem(f"{h_path}.interval", "must be more than 0")
    if health.timeout > health.interval > 0:
        reader.problem(f"{h_path}.timeout", "is longer than health.interval: probes would overlap")
    if health.window < health.interval:
        reader.problem(f"{h_path}.window", "is shorter than health.interval: no probe fits in the window")

    r_path = f"{path}.release"
    r = reader.mapping(
        data.get("release"), r_path, ("executor", "drain_wait", "steps", "step_timeout", "version_pattern")
    )
    step_timeout = reader.get(r, "step_timeout", r_path, parse_duration, 300.0)
    executor = reader.get(r, "executor", r_path, _choice(*_EXECUTORS), "local")
    steps: dict[str, StepSpec] = {}
    raw_list = r.get("steps")
    if executor == "agent" and raw_list is not None and not isinstance(raw_list, list):
        reader.problem(
            f"{r_path}.steps",
            "with executor: agent, list the step names (e.g. [stop, deploy, start]); "
            "their commands live in each node's agent.yml",
        )
        raw_list = []
    if isinstance(raw_list, list):
        if executor != "agent":
            reader.problem(
                f"{r_path}.steps",
                f"with executor: {executor}, give each step its shell command, "
                'e.g. {stop: "systemctl stop app@{port}"}',
            )
        for i, name in enumerate(raw_list):
            if not isinstance(name, str) or not _STEP.match(name):
                reader.problem(f"{r_path}.steps[{i}]", "a step name is lower-case letters, digits, '_' or '-'")
            else:
                steps[name] = StepSpec("", step_timeout)  # run by name on the agent
    raw_steps = reader.mapping(
        r.get("steps") if not isinstance(raw_list, list) else None,
        f"{r_path}.steps",
        tuple(r.get("steps") or ()) if not isinstance(raw_list, list) else (),
    )
    for step, spec in raw_steps.items():
        s_path = f"{r_path}.steps.{step}"
        if not _STEP.match(str(step)):
            reader.problem(s_path, "a step name is lower-case letters, digits, '_' or '-'")
        elif isinstance(spec, str) and spec.strip():
            steps[str(step)] = StepSpec(spec, step_timeout)
        elif isinstance(spec, Mapping):
            fields = reader.mapping(spec, s_path, ("run", "timeout"))
            command = reader.get(fields, "run", s_path, _string, None)
            if command is None:
                reader.problem(f"{s_path}.run", "missing: the shell command to run")
            else:
                steps[str(step)] = StepSpec(
                    command, reader.get(fields, "timeout", s_path, parse_duration, step_timeout)
                )
        else:
            reader.problem(s_path, 'expected a shell command, or {run: "command", timeout: 60s}')
    pattern = reader.get(r, "version_pattern", r_path, _string, ReleaseSettings.version_pattern)
    try:
        re.compile(pattern)
    except re.error as error:
        reader.problem(f"{r_path}.version_pattern", f"not a regular expression: {error}")
    release = ReleaseSettings(
        executor=executor,
        drain_wait=reader.get(r, "drain_wait", r_path, parse_duration, 2.0),
        steps=steps,
        step_timeout=step_timeout,
        version_pattern=pattern,
    )

    approvers = _slack_ids(reader, data.get("approvers"), f"{path}.approvers") or ()
    operators = _slack_ids(reader, data.get("operators"), f"{path}.operators")
    networks: list[str] = []
    raw_networks = data.get("networks") or []
    if not isinstance(raw_networks, list):
        reader.problem(f"{path}.networks", "expected a list of CIDRs, e.g. [10.0.0.0/8]")
        raw_networks = []
    for i, cidr in enumerate(raw_networks):
        try:
            networks.append(str(ipaddress.IPv4Network(str(cidr), strict=False)))
        except ValueError:
            reader.problem(f"{path}.networks[{i}]", f"{cidr!r} is not an IPv4 network such as 10.0.0.0/8")
    approval = reader.get(data, "approval", path, _choice("required", "none"), "none")
    if approval == "required" and not approvers:
        reader.problem(f"{path}.approval", "is 'required' but the app has no approvers")
    ssh = _parse_override(reader, data.get("ssh"), f"{path}.ssh")
    w_path = f"{path}.watch"
    w = reader.mapping(data.get("watch"), w_path, ("enabled", "reminder", "drained_reminder", "concurrency"))
    watch = WatchSettings(
        enabled=reader.get(w, "enabled", w_path, _boolean, True),
        reminder=reader.get(w, "reminder", w_path, parse_duration, 3600.0),
        drained_reminder=reader.get(w, "drained_reminder", w_path, parse_duration, 86400.0),
        concurrency=reader.get(w, "concurrency", w_path, _positive_int(1, 1000), 64),
    )
    return AppSettings(
        str(name), upstream, nginx, health, release, tuple(approvers), approval, ssh, watch, operators, tuple(networks)
    )


def _slack_ids(reader: _Reader, raw: Any, path: str) -> tuple[str, ...] | None:
    """A list of Slack user IDs (U..., W...) or user-group IDs (S...); None when the key is absent."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        reader.problem(path, "expected a list of Slack IDs, e.g. [U2BOB, S0OPS]")
        return ()
    found: list[str] = []
    for i, who in enumerate(raw):
        if not isinstance(who, str) or not _SLACK_ID.match(who):
            reader.problem(
                f"{path}[{i}]",
                f"{who!r} is not a Slack user ID (U..., W...) or user-group ID (S...); display names "
                "are refused because anyone can change theirs",
            )
        else:
            found.append(who)
    return tuple(found)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _parse_override(reader: _Reader, raw: Any, path: str) -> SshOverride:
    data = reader.mapping(raw, path, ("user", "port", "jump"))
    return SshOverride(
        user=reader.get(data, "user", path, _string, None),
        port=reader.get(data, "port", path, _positive_int(1, 65535), None),
        jump=reader.get(data, "jump", path, _string, None),
    )


def parse_config(raw: Any, env: Mapping[str, str], source: str = "<string>") -> Config:
    reader = _Reader()
    top = reader.mapping(raw, "", ("consul", "slack", "apps", "ssh", "agent", "access", "history"))

    c = reader.mapping(top.get("consul"), "consul", ("addresses", "prefix", "timeout", "session_ttl"))
    addresses_raw = c.get("addresses", ["http://127.0.0.1:8500"])
    if isinstance(addresses_raw, str):
        addresses_raw = [addresses_raw]
    addresses: list[str] = []
    if not isinstance(addresses_raw, list) or not addresses_raw:
        reader.problem("consul.addresses", "expected a list of addresses, e.g. [http://127.0.0.1:8500]")
    else:
        for i, address in enumerate(addresses_raw):
            try:
                addresses.append(normalise_address(_url(normalise_address(str(address)))))
            except ValueError as error:
                reader.problem(f"consul.addresses[{i}]", str(error))
    if env.get("CONSUL_HTTP_ADDR", "").strip():
        addresses = []
        for address in (a for a in env["CONSUL_HTTP_ADDR"].split(",") if a.strip()):
            try:
                addresses.append(normalise_address(_url(normalise_address(address))))
            except ValueError as error:
                reader.problem("CONSUL_HTTP_ADDR (environment)", str(error))
    prefix = reader.get(c, "prefix", "consul", _string, "upstreams").strip("/")
    consul = ConsulConfig(
        addresses=tuple(addresses) or ("http://127.0.0.1:8500",),
        prefix=prefix,
        token=env.get("CONSUL_HTTP_TOKEN") or None,
        timeout=reader.get(c, "timeout", "consul", parse_duration, 5.0),
        session_ttl=reader.get(c, "session_ttl", "consul", parse_duration, 15.0),
    )
    if not 10.0 <= consul.session_ttl <= 86400.0:
        reader.problem("consul.session_ttl", "Consul takes a session TTL from 10s to 24h, e.g. 15s")

    s = reader.mapping(top.get("slack"), "slack", ("channel", "channels"))
    channels = s.get("channels")
    valid = isinstance(channels, list) and channels and all(isinstance(c, str) and _CHANNEL.match(c) for c in channels)
    if channels is not None and not valid:
        reader.problem("slack.channels", f"expected a list of Slack channel IDs such as [C0DEPLOY], got {channels!r}")
        channels = None
    slack = SlackConfig(
        channel=reader.get(s, "channel", "slack", _string, None), channels=tuple(channels) if channels else None
    )
    x = reader.mapping(top.get("access"), "access", ("operators",))
    access = AccessConfig(operators=_slack_ids(reader, x.get("operators"), "access.operators") or ())
    y = reader.mapping(top.get("history"), "history", ("keep",))
    history = HistoryConfig(keep=reader.get(y, "keep", "history", _positive_int(10, 1_000_000), 1000))

    apps: dict[str, AppSettings] = {}
    raw_apps = top.get("apps") or {}
    if not isinstance(raw_apps, Mapping):
        reader.problem("apps", "expected a mapping of app name to its settings")
        raw_apps = {}
    for name, app_raw in raw_apps.items():
        apps[str(name)] = _parse_app(reader, str(name), app_raw)

    h = reader.mapping(
        top.get("ssh"), "ssh", ("user", "key", "known_hosts", "port", "jump", "connect_timeout", "hosts")
    )
    ssh = SshSettings(
        user=reader.get(h, "user", "ssh", _string, "deploy"),
        key=reader.get(h, "key", "ssh", _string, None),
        known_hosts=reader.get(h, "known_hosts", "ssh", _string, None),
        port=reader.get(h, "port", "ssh", _positive_int(1, 65535), 22),
        jump=reader.get(h, "jump", "ssh", _string, None),
        connect_timeout=reader.get(h, "connect_timeout", "ssh", parse_duration, 10.0),
    )
    raw_hosts = reader.mapping(h.get("hosts"), "ssh.hosts", tuple(h.get("hosts") or ()))
    ssh_hosts = {str(host): _parse_override(reader, spec, f"ssh.hosts.{host}") for host, spec in raw_hosts.items()}

    a = reader.mapping(top.get("agent"), "agent", ("port", "scheme", "secret_file", "ca_file", "connect_timeout"))
    agent = AgentConfig(
        port=reader.get(a, "port", "agent", _positive_int(1, 65535), 7070),
        scheme=reader.get(a, "scheme", "agent", _choice("http", "https"), "https"),
        secret_file=reader.get(a, "secret_file", "agent", _string, None),
        ca_file=reader.get(a, "ca_file", "agent", _string, None),
        connect_timeout=reader.get(a, "connect_timeout", "agent", parse_duration, 10.0),
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return Config(consul, slack, apps, ssh, ssh_hosts, agent, source, access, history)


def config_path(cli_path: str | None, env: Mapping[str, str]) -> str:
    return cli_path or env.get("UPSTREAM_BOT_CONFIG") or DEFAULT_PATH


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    file = Path(path)
    if not file.exists():
        raise ConfigError([f"{path}: no such file (set UPSTREAM_BOT_CONFIG or pass --config)"])
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML: {error}"]) from None
    return parse_config(raw, env, source=path)


def environment_problems(config: Config, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(problems, notes) about the secrets and files the config and the environment refer to."""
    problems: list[str] = []
    notes: list[str] = []
    for name, prefix in (("SLACK_BOT_TOKEN", "xoxb-"), ("SLACK_APP_TOKEN", "xapp-")):
        value = env.get(name)
        if value and not value.startswith(prefix):
            problems.append(f"env {name}: does not start with {prefix!r}")
    if not env.get("SLACK_BOT_TOKEN"):
        notes.append("env SLACK_BOT_TOKEN: not set (serve needs it)")
    if not env.get("SLACK_APP_TOKEN") and not env.get("SLACK_SIGNING_SECRET"):
        notes.append("env SLACK_APP_TOKEN / SLACK_SIGNING_SECRET: neither set (serve needs one: Socket Mode or --http)")
    if any(app.release.executor == "ssh" for app in config.apps.values()):
        for key in ("key", "known_hosts"):
            value = getattr(config.ssh, key)
            if value is None:
                problems.append(f"ssh.{key}: not set, but an app uses release.executor: ssh")
            elif not os.access(value, os.R_OK):
                problems.append(f"ssh.{key}: {value} is not a readable file")
    if any(app.release.executor == "agent" for app in config.apps.values()):
        if config.agent.secret_file:
            if not os.access(config.agent.secret_file, os.R_OK):
                problems.append(f"agent.secret_file: {config.agent.secret_file} is not a readable file")
        elif not env.get(AGENT_SECRET_ENV):
            problems.append(
                f"env {AGENT_SECRET_ENV}: not set and no agent.secret_file, but an app uses release.executor: agent"
            )
        if config.agent.scheme == "http":
            notes.append(
                "agent.scheme: http: the agents must say insecure: true in their agent.yml (they serve TLS "
                "otherwise); step names, targets and step output cross the network unencrypted"
            )
        if config.agent.ca_file and not os.access(config.agent.ca_file, os.R_OK):
            problems.append(f"agent.ca_file: {config.agent.ca_file} is not a readable file")
    for app in config.apps.values():
        if not (app.operators if app.operators is not None else config.access.operators):
            notes.append(
                f"apps.{app.name}: no operators (set access.operators or apps.{app.name}.operators): "
                "every change to it from Slack is refused"
            )
    if not config.slack.channel:
        notes.append(
            "slack.channel: not set; results go to the channel a command came from, and the health watch "
            "has nowhere to post its alerts"
        )
    return problems, notes
