"""agent.yml: what a node's agent listens on, its secret, TLS, and the only steps it will run."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.durations import parse_duration
from commands.settings import StepSpec

SECRET_ENV = "UPSTREAM_BOT_AGENT_SECRET"
DEFAULT_PATH = "./agent.yml"
_STEP = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_KNOWN = ("listen", "secret_file", "tls", "apps", "version_pattern", "step_timeout", "steps")


class AgentConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class AgentSettings:
    host: str = "127.0.0.1"
    port: int = 7070
    secret: bytes = b""
    tls_cert: str | None = None
    tls_key: str | None = None
    apps: tuple[str, ...] = ()  # app names it serves; empty: any valid name
    version_pattern: str = r"^[A-Za-z0-9._-]{1,64}$"
    steps: dict[str, StepSpec] = field(default_factory=dict)


def parse_agent_config(raw: Any, env: Mapping[str, str], base: Path = Path(".")) -> AgentSettings:
    problems: list[str] = []
    data = raw if isinstance(raw, Mapping) else {}
    if raw is not None and not isinstance(raw, Mapping):
        problems.append(f"agent config: expected a mapping with keys {', '.join(_KNOWN)}")
    for key in data:
        if key not in _KNOWN:
            problems.append(f"{key}: unknown key (known here: {', '.join(_KNOWN)})")
    host, _, port_text = str(data.get("listen", "127.0.0.1:7070")).rpartition(":")
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        problems.append(f"listen: {data.get('listen')!r} is not host:port (e.g. 0.0.0.0:7070)")
        port_text = "7070"
    secret = b""
    if data.get("secret_file"):
        path = base / str(data["secret_file"])
        try:
            secret = path.read_bytes().strip()
        except OSError as error:
            problems.append(f"secret_file: {path}: {error.strerror}")
    else:
        secret = env.get(SECRET_ENV, "").strip().encode()
    if not problems and len(secret) < 16:
        problems.append(f"secret: set secret_file or {SECRET_ENV} to a shared secret of 16 characters or more")
    tls = data.get("tls") or {}
    if tls and (not isinstance(tls, Mapping) or set(tls) != {"cert", "key"}):
        problems.append("tls: expected {cert: /path/cert.pem, key: /path/key.pem}")
        tls = {}
    step_timeout = 300.0
    try:
        step_timeout = parse_duration(data.get("step_timeout", "300s"))
    except ValueError as error:
        problems.append(f"step_timeout: {error}")
    steps: dict[str, StepSpec] = {}
    raw_steps = data.get("steps") or {}
    if not isinstance(raw_steps, Mapping) or not raw_steps:
        problems.append("steps: expected a mapping of step name to shell command (the only steps this agent runs)")
        raw_steps = {}
    for name, spec in raw_steps.items():
        if not _STEP.match(str(name)):
            problems.append(f"steps.{name}: a step name is lower-case letters, digits, '_' or '-'")
        elif isinstance(spec, str) and spec.strip():
            steps[str(name)] = StepSpec(spec, step_timeout)
        elif isinstance(spec, Mapping) and isinstance(spec.get("run"), str) and set(spec) <= {"run", "timeout"}:
            try:
                steps[str(name)] = StepSpec(spec["run"], parse_duration(spec.get("timeout", step_timeout)))
            except ValueError as error:
                problems.append(f"steps.{name}.timeout: {error}")
        else:
            problems.append(f'steps.{name}: expected a shell command, or {{run: "command", timeout: 60s}}')
    pattern = str(data.get("version_pattern", AgentSettings.version_pattern))
    try:
        re.compile(pattern)
    except re.error as error:
        problems.append(f"version_pattern: not a regular expression: {error}")
    apps = data.get("apps") or []
    if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
        problems.append("apps: expected a list of app names")
        apps = []
    if problems:
        raise AgentConfigError(problems)
    return AgentSettings(host, int(port_text), secret, tls.get("cert"), tls.get("key"), tuple(apps), pattern, steps)


def load_agent_config(path: str, env: Mapping[str, str] | None = None) -> AgentSettings:
    file = Path(path)
    if not file.exists():
        raise AgentConfigError([f"{path}: no such file (pass --config agent.yml)"])
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise AgentConfigError([f"{path}: not valid YAML: {error}"]) from None
    return parse_agent_config(raw, os.environ if env is None else env, file.parent)
