"""agent.yml: what a node's agent listens on, the app nodes it serves, its secret, TLS, its nonce state,
and the only steps it will run."""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.durations import parse_duration
from commands.settings import StepSpec

SECRET_ENV = "UPSTREAM_BOT_AGENT_SECRET"
DEFAULT_PATH = "./agent.yml"
# Under /var/lib (systemd's StateDirectory=upstream-bot), not next to the config: /etc is often not
# writable by the agent's user, and state is not configuration. The port keeps two agents on one host apart.
DEFAULT_STATE = "/var/lib/upstream-bot/agent-{port}.nonces.json"
_STEP = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
_KNOWN = (
    "listen",
    "nodes",
    "secret_file",
    "tls",
    "insecure",
    "state_file",
    "apps",
    "version_pattern",
    "step_timeout",
    "env_passthrough",
    "steps",
)


class AgentConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _host_key(host: str) -> str:
    """One spelling per host: IP addresses compared as addresses (`::1` == `0:0:0:0:0:0:0:1`)."""
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


@dataclass(frozen=True)
class NodePattern:
    """An app node this agent serves: `host:port`, or `host:*` for every port on that host."""

    host: str
    port: int | None  # None: any port

    def matches(self, host: str, port: int) -> bool:
        return self.host == _host_key(host) and (self.port is None or self.port == port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{'*' if self.port is None else self.port}"


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
    nodes: tuple[NodePattern, ...] = ()  # the app nodes whose steps it runs; any other is refused
    insecure: bool = False  # plain HTTP, explicitly asked for
    state_file: str | None = None  # seen nonces, kept across restarts
    env_passthrough: tuple[str, ...] = ()  # names from the agent's environment that steps also get

    def serves(self, host: str, port: int) -> bool:
        return any(node.matches(host, port) for node in self.nodes)

    @property
    def node_hostnames(self) -> set[str]:
        """Host names (not addresses) in `nodes`: the agent accepts these as a step's {host}."""
        return {n.host for n in self.nodes if not _is_ip(n.host)}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _parse_nodes(raw: Any, problems: list[str]) -> tuple[NodePattern, ...]:
    hint = 'nodes: list the app nodes this agent runs steps for, as host:port or host:* (e.g. ["10.0.0.5:9000"])'
    if not isinstance(raw, list) or not raw:
        problems.append(f"{hint}; a request for any other node is refused")
        return ()
    nodes: list[NodePattern] = []
    for entry in raw:
        host, _, port = str(entry).rpartition(":")
        bare = host.strip("[]")
        host_ok = _is_ip(bare) or (bool(_HOSTNAME.match(bare)) and ":" not in bare)
        port_ok = port == "*" or (port.isdigit() and 1 <= int(port) <= 65535)
        if not isinstance(entry, str) or not host_ok or not port_ok:
            problems.append(f'nodes: {entry!r} is not host:port or host:* (e.g. "10.0.0.5:9000", "10.0.0.5:*")')
            continue
        nodes.append(NodePattern(_host_key(bare), None if port == "*" else int(port)))
    return tuple(nodes)


def _check_tls(tls: Mapping[str, Any], base: Path, problems: list[str]) -> tuple[str | None, str | None]:
    cert, key = (str(base / str(tls[k])) for k in ("cert", "key"))
    unreadable = [
        f"tls.{k}: {p} is not a readable file"
        for k, p in (("cert", cert), ("key", key))
        if not os.path.isfile(p) or not os.access(p, os.R_OK)
    ]
    if unreadable:
        problems.extend(unreadable)
        return None, None
    try:
        # Loading them now reports a mismatched or broken pair as a config problem, not a traceback.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as error:
        problems.append(f"tls: {cert} and {key} do not load as a certificate and its key: {error}")
    return cert, key


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
    nodes = _parse_nodes(data.get("nodes"), problems)
    insecure = data.get("insecure", False)
    if not isinstance(insecure, bool):
        problems.append("insecure: expected true or false")
        insecure = False
    tls = data.get("tls") or {}
    cert: str | None = None
    key: str | None = None
    if tls and (not isinstance(tls, Mapping) or set(tls) != {"cert", "key"}):
        problems.append("tls: expected {cert: /path/cert.pem, key: /path/key.pem}")
    elif tls:
        cert, key = _check_tls(tls, base, problems)
    # TLS unless plain HTTP is asked for in so many words: the requests carry step names and the
    # signed target, and a plain agent is one misconfigured firewall away from being read by anyone.
    if not tls and not insecure:
        problems.append(
            "tls: not set; the agent serves TLS only: set tls: {cert: ..., key: ...}, "
            "or insecure: true to serve plain HTTP (not for untrusted networks)"
        )
    elif tls and insecure:
        problems.append("insecure: true and tls are both set; keep one (tls, unless plain HTTP is meant)")
    state_file = DEFAULT_STATE.format(port=port_text)
    if data.get("state_file"):
        state_file = os.path.abspath(base / str(data["state_file"]))
    if "state_file" in data and not isinstance(data["state_file"], str):
        problems.append("state_file: expected a path (where the agent keeps the nonces it has seen)")
    passthrough = data.get("env_passthrough") or []
    if not isinstance(passthrough, list) or not all(isinstance(n, str) and _ENV_NAME.match(n) for n in passthrough):
        problems.append("env_passthrough: expected a list of environment variable names")
        passthrough = []
    for name in passthrough:
        # The agent's own secret would let every step sign requests to every agent.
        if name == SECRET_ENV or name.startswith("UPSTREAM_BOT_"):
            problems.append(f"env_passthrough: {name} is not passed to steps (the agent's secret and its own names)")
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
    return AgentSettings(
        host=host,
        port=int(port_text),
        secret=secret,
        tls_cert=cert,
        tls_key=key,
        apps=tuple(apps),
        version_pattern=pattern,
        steps=steps,
        nodes=nodes,
        insecure=insecure,
        state_file=state_file,
        env_passthrough=tuple(passthrough),
    )


def load_agent_config(path: str, env: Mapping[str, str] | None = None) -> AgentSettings:
    file = Path(path)
    if not file.exists():
        raise AgentConfigError([f"{path}: no such file (pass --config agent.yml)"])
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise AgentConfigError([f"{path}: not valid YAML: {error}"]) from None
    return parse_agent_config(raw, os.environ if env is None else env, file.parent)
