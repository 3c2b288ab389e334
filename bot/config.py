"""The YAML config: read, validated (every problem named with its path), turned into settings.

The file's shape, defaults and rules are pydantic models (`bot.config_models`, of the value types in
`bot.config_types`); their JSON Schema is what `upstream-bot config-schema` prints. Commands see the
frozen dataclasses below and `commands.settings`, never the models.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.config_models import App, ConfigFile
from bot.config_problems import problem_lines
from bot.config_types import consul_address
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
# Draft 7, which editors' YAML language servers implement; the schema uses no keyword of a later draft.
JSON_SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"


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


def parse_config(raw: Any, env: Mapping[str, str], source: str = "<string>") -> Config:
    """The settings a YAML tree gives, or ConfigError naming every problem in it and in CONSUL_HTTP_ADDR."""
    addresses, found = _environment_addresses(env)
    try:
        file = ConfigFile.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(problem_lines(error, source) + found) from None
    if found:
        raise ConfigError(found)
    return _settings(file, addresses, env, source)


def _environment_addresses(env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(addresses, problems) of CONSUL_HTTP_ADDR, which replaces consul.addresses when set."""
    addresses: list[str] = []
    found: list[str] = []
    for address in (a for a in env.get("CONSUL_HTTP_ADDR", "").split(",") if a.strip()):
        try:
            addresses.append(consul_address(address))
        except ValueError as error:
            found.append(f"CONSUL_HTTP_ADDR (environment): {error}")
    return addresses, found


def _settings(file: ConfigFile, env_addresses: list[str], env: Mapping[str, str], source: str) -> Config:
    consul = ConsulConfig(
        addresses=tuple(env_addresses or file.consul.addresses),
        prefix=file.consul.prefix,  # without its slashes already (Prefix)
        token=env.get("CONSUL_HTTP_TOKEN") or None,
        timeout=file.consul.timeout,
        session_ttl=file.consul.session_ttl,
    )
    slack = SlackConfig(file.slack.channel, tuple(file.slack.channels) if file.slack.channels else None)
    ssh = SshSettings(**file.ssh.model_dump(exclude={"hosts"}))
    hosts = {host: SshOverride(**spec.model_dump()) for host, spec in file.ssh.hosts.items()}
    apps = {name: _app(name, app) for name, app in file.apps.items()}
    return Config(
        consul=consul,
        slack=slack,
        apps=apps,
        ssh=ssh,
        ssh_hosts=hosts,
        agent=AgentConfig(**file.agent.model_dump()),
        source=source,
        access=AccessConfig(tuple(file.access.operators)),
        history=HistoryConfig(file.history.keep),
    )


def _app(name: str, app: App) -> AppSettings:
    release = app.release
    if isinstance(release.steps, list):  # executor: agent; the commands are in each node's agent.yml
        steps = {step: StepSpec("", release.step_timeout) for step in release.steps}
    else:
        steps = {
            step: StepSpec(spec.run, release.step_timeout if spec.timeout is None else spec.timeout)
            for step, spec in release.steps.items()
        }
    return AppSettings(
        name=name,
        upstream=app.upstream or name,
        nginx=NginxSettings(**app.nginx.model_dump()),
        health=HealthSettings(**app.health.model_dump()),
        release=ReleaseSettings(
            release.executor, release.drain_wait, steps, release.step_timeout, release.version_pattern
        ),
        approvers=tuple(app.approvers),
        approval=app.approval,
        ssh=SshOverride(**app.ssh.model_dump()),
        watch=WatchSettings(**app.watch.model_dump()),
        operators=None if app.operators is None else tuple(app.operators),
        networks=tuple(app.networks),
    )


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for editors (yaml-language-server) to complete and check it."""
    schema = ConfigFile.model_json_schema(ref_template="#/definitions/{model}")
    definitions = schema.pop("$defs")
    return {"$schema": JSON_SCHEMA_DIALECT, **schema, "definitions": definitions}


def config_path(cli_path: str | None, env: Mapping[str, str]) -> str:
    return cli_path or env.get("UPSTREAM_BOT_CONFIG") or DEFAULT_PATH


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's reason and where, without its quote of the line: the line may hold a password (a URL's)."""
    if isinstance(error, yaml.MarkedYAMLError):
        where = error.problem_mark or error.context_mark
        place = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        context = f" {error.context}" if error.context else ""
        return f"{error.problem or 'cannot be read'}{context}{place}"
    return type(error).__name__


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    file = Path(path)
    if not file.exists():
        raise ConfigError([f"{path}: no such file (set UPSTREAM_BOT_CONFIG or pass --config)"])
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML: {_yaml_problem(error)}"]) from None
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
    if not config.apps:
        notes.append("apps: none (a mapping of app name to its settings): every command naming an app is refused")
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
