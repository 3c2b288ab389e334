"""The config file's shape: a pydantic model a section, its keys' defaults and docs, and the rules between
keys. `bot.config` turns a validated file into settings; `upstream-bot config-schema` prints these
models' JSON Schema, each key's docstring its description.

A rule between keys is a field validator on the later key, in the smallest section holding both: it
sees the earlier keys that passed (`info.data`, defaults included), so it is judged even when an
unrelated key is wrong, and skipped when a key it depends on is wrong (that key's own problem is
reported). A key a rule is on has `validate_default=True` when its default can break the rule (the
default health.timeout, 3s, with an interval of 1s): pydantic skips a field's validators for a default
otherwise. (An after-model validator would not do: it runs only when every key passed.) The one rule
between two sections (health.source: nginx needs nginx.status_url) reads the raw health.source, so
that it, too, is reported beside the health section's own problems.

`_for_editors` fits the JSON Schema to what check-config takes: null beside each optional key and
section, and names (of apps, of steps) checked by `propertyNames`, which an editor flags.
"""

from __future__ import annotations

import copy
import inspect
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from bot.config_types import (
    AppName,
    ChannelIds,
    ConsulAddresses,
    Duration,
    Flag,
    HeaderName,
    HealthUrl,
    Networks,
    Port,
    PositiveDuration,
    Prefix,
    SessionTtl,
    SlackIds,
    StepName,
    Text,
    Upstream,
    Url,
    VersionPattern,
    a_mapping,
    one_of,
    whole,
)
from commands.versions import DEFAULT_PATTERN

NULL = {"type": "null"}


def _for_editors(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """A section's JSON Schema as an editor should check it: a key left null takes its default (so null
    is allowed beside every key that is not required), a mapping's names are checked (`propertyNames`;
    `patternProperties` would let any other name by unchecked), and no title (an editor shows the key
    itself; "Session Ttl" would only repeat it)."""
    required = set(schema.get("required", ()))
    for key, shared in schema.get("properties", {}).items():
        prop = copy.deepcopy(shared)  # a type's WithJsonSchema dict is shared by every key of that type
        schema["properties"][key] = prop
        prop.pop("title", None)
        _names_checked(prop)
        if key not in required:
            schema["properties"][key] = _or_null(prop, model.model_fields[key].annotation)


def _or_null(prop: dict[str, Any], annotation: Any) -> dict[str, Any]:
    """`prop` or null. A section's `$ref` is put inside `anyOf` with its description beside it (draft 7
    ignores a description beside `$ref`)."""
    for union in ("anyOf", "oneOf"):
        if union in prop:
            if NULL not in prop[union]:
                prop[union].append(NULL)
            return prop
    notes = {key: prop.pop(key) for key in ("description", "default", "examples") if key in prop}
    if "$ref" in prop and "description" not in notes and isinstance(annotation, type):
        notes["description"] = inspect.cleandoc(annotation.__doc__ or "")
    return {"anyOf": [prop, NULL], **notes}


def _names_checked(node: Any) -> None:
    """A mapping's name pattern as `propertyNames` (of draft 6 on), and a section as a mapping's value
    may be null (`apps: {app: null}`, `ssh.hosts: {10.0.0.5: null}`), as anywhere else."""
    if isinstance(node, list):
        for item in node:
            _names_checked(item)
    if not isinstance(node, dict):
        return
    patterns = node.pop("patternProperties", None)
    if patterns:
        ((pattern, values),) = patterns.items()
        node["propertyNames"] = {"pattern": pattern, **node.get("propertyNames", {})}
        node["additionalProperties"] = values
    values = node.get("additionalProperties")
    if isinstance(values, dict) and set(values) == {"$ref"}:
        node["additionalProperties"] = {"anyOf": [values, NULL]}
    for key in ("anyOf", "oneOf", "items", "additionalProperties"):
        _names_checked(node.get(key))


class Section(BaseModel):
    """A mapping of known keys: an unknown one is an error naming it; a key left out or null takes its default."""

    model_config = ConfigDict(
        extra="forbid", strict=True, use_attribute_docstrings=True, json_schema_extra=_for_editors
    )

    @model_validator(mode="before")
    @classmethod
    def _a_mapping_of_known_keys(cls, data: Any) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping with keys {', '.join(cls.model_fields)}")
        return {str(key): value for key, value in data.items() if value is not None or key not in cls.model_fields}


class Consul(Section):
    """Where the upstreams live: Consul's KV store, which nginx-upsync-module reads."""

    addresses: ConsulAddresses = ["http://127.0.0.1:8500"]
    """Consul agents, tried in order when one fails; CONSUL_HTTP_ADDR (comma-separated) replaces them"""
    prefix: Prefix = "upstreams"
    """the KV folder nginx-upsync-module reads: <prefix>/<upstream>/<ip>:<port> (names separated by /)"""
    timeout: PositiveDuration = 5.0
    """one Consul call (the ACL token comes from CONSUL_HTTP_TOKEN)"""
    session_ttl: SessionTtl = 15.0
    """the release and watch locks' session TTL (10s..24h): a dead replica's lock frees after it"""


class Slack(Section):
    """Where the bot posts, and where it takes commands."""

    channel: Text | None = None
    """where progress, results and the health watch's alerts are posted (default: none)"""
    channels: ChannelIds | None = None
    """commands and button presses are taken only in these channels (default: any channel)"""


class Access(Section):
    """Who may change the apps."""

    operators: SlackIds = []
    """who may change any app: Slack user IDs (U..., W...) or user-group IDs (S...) (default: nobody)"""


class History(Section):
    """The audit log each app keeps in Consul."""

    keep: whole(10, 1_000_000) = 1000
    """audit entries kept per app, the oldest pruned"""


class SshOverride(Section):
    """SSH settings of one app or one node; a key left out keeps what the level above says."""

    user: Text | None = None
    """the login"""
    port: Port | None = None
    """the SSH port"""
    jump: Text | None = None
    """[user@]host[:port] of a jump host"""


class Ssh(Section):
    """How the bot reaches the nodes over SSH (for release.executor: ssh)."""

    user: Text = "deploy"
    """the login"""
    key: Text | None = None
    """the private key file (required for release.executor: ssh)"""
    known_hosts: Text | None = None
    """the nodes' host keys; an unknown or changed key is refused (required for release.executor: ssh)"""
    port: Port = 22
    """the SSH port"""
    jump: Text | None = None
    """[user@]host[:port] of a jump host"""
    connect_timeout: PositiveDuration = 10.0
    """connecting to a node"""
    hosts: Annotated[dict[str, SshOverride], a_mapping("expected a mapping of node address to its ssh settings")] = {}
    """per node (by its address): user, port, jump"""


class Agent(Section):
    """How the bot reaches `upstream-bot agent` on the nodes (for release.executor: agent)."""

    port: Port = 7070
    """the agents' port"""
    scheme: one_of("http", "https") = "https"
    """http only towards agents started with insecure: true in their agent.yml"""
    secret_file: Text | None = None
    """the file of the agents' shared HMAC secret (else the environment's UPSTREAM_BOT_AGENT_SECRET)"""
    ca_file: Text | None = None
    """the CA that signed the agents' TLS certificates"""
    connect_timeout: PositiveDuration = 10.0
    """connecting to an agent"""


class Nginx(Section):
    """The app's nginx: its check module's status page and upsync's view of the upstream."""

    status_url: Url | None = None
    """nginx_upstream_check_module's check_status (JSON unless format=csv)"""
    list_url: Url | None = None
    """nginx-upsync-module's upstream_show"""
    upsync_interval: Duration = 0.5
    """upsync's upsync_interval: the bot waits this + 1 s for a change to reach every worker"""


class Health(Section):
    """How a node's health is learnt: the bot's own probe, nginx's check module, or both."""

    url: HealthUrl | None = None
    """the health probe, {host} and {port} filled in (no other placeholder); 2xx/3xx is healthy"""
    interval: PositiveDuration = 10.0
    """between probes (a release's health window, the watch's rounds)"""
    # validate_default: the rules below hold for a timeout or window left at its default, too.
    timeout: PositiveDuration = Field(3.0, validate_default=True)
    """one probe (at most interval)"""
    window: PositiveDuration = Field(120.0, validate_default=True)
    """a release: healthy within it or failed; the watch: failing this long is an alert (at least interval)"""
    rise: whole(1, 100) = 2
    """passes in a row that count as healthy"""
    source: one_of("probe", "nginx", "both") = "both"
    """the watch's source: probe (own probes; needs url), nginx (check_status; needs nginx.status_url), both"""
    version_header: HeaderName | None = None
    """the probe's response header naming the version a node runs, e.g. X-App-Version; /upstream status shows
    it, and a release says it as each node is put back (another version than released: said, not failed)"""

    @field_validator("timeout")
    @classmethod
    def _probes_do_not_overlap(cls, timeout: float, info: ValidationInfo) -> float:
        interval = info.data.get("interval", timeout)
        if timeout > interval:
            raise ValueError(
                f"is {timeout:g}s, longer than health.interval ({interval:g}s): probes would overlap; "
                f"set it to at most {interval:g}s"
            )
        return timeout

    @field_validator("window")
    @classmethod
    def _a_probe_fits_the_window(cls, window: float, info: ValidationInfo) -> float:
        interval = info.data.get("interval", window)
        if window < interval:
            raise ValueError(
                f"is {window:g}s, shorter than health.interval ({interval:g}s): no probe fits in the window; "
                f"set it to at least {interval:g}s"
            )
        return window

    @field_validator("source")
    @classmethod
    def _probes_need_a_url(cls, source: str, info: ValidationInfo) -> str:
        if source == "probe" and "url" in info.data and info.data["url"] is None:
            raise ValueError("is probe, but health.url is not set: set it, or use nginx")
        return source


class Step(Section):
    """A step's shell command, with a timeout of its own."""

    run: Text
    """the shell command to run ({app} {host} {port} {version} are filled in, shell-quoted)"""
    timeout: PositiveDuration | None = None
    """the command is killed on the node after this (default: release.step_timeout)"""


def _command_or_step(value: Any) -> Any:
    if isinstance(value, str) and value.strip():
        return {"run": value}
    if not isinstance(value, dict):
        raise ValueError('expected a shell command, or {run: "command", timeout: 60s}')
    return value


StepCommand = Annotated[Step, BeforeValidator(_command_or_step, json_schema_input_type=Text | Step)]
# Commands by step name (release.executor ssh or local), or the names of the steps each node's agent.yml
# defines (executor: agent). pydantic puts the form's tag after `steps` in an error's path; problem_lines drops it.
STEP_FORMS = ("commands", "names")
Steps = Annotated[
    Annotated[dict[StepName, StepCommand], Tag("commands")] | Annotated[list[StepName], Tag("names")],
    Discriminator(lambda steps: "names" if isinstance(steps, list) else "commands"),
]


class Release(Section):
    """How /release replaces a node's version: drained, its steps run, healthy again, back in the upstream."""

    executor: one_of("ssh", "agent", "local") = "local"
    """where the steps run: ssh, agent, or local (the bot's own machine: the demo, tests)"""
    drain_wait: Duration = 2.0
    """after nginx stops routing to a node, before its stop step"""
    step_timeout: PositiveDuration = 300.0
    """a step's default timeout (it is killed on the node after it)"""
    version_pattern: VersionPattern = DEFAULT_PATTERN
    """--version must match it; it narrows, never widens, the allowed characters"""
    steps: Steps = {}
    """step name to shell command (or {run, timeout}); with executor: agent, a list of step names"""

    @field_validator("steps", mode="before")
    @classmethod
    def _steps_fit_the_executor(cls, steps: Any, info: ValidationInfo) -> Any:
        executor = info.data.get("executor")
        if executor == "agent" and not isinstance(steps, list):
            raise ValueError(
                "with executor: agent, list the step names (e.g. [stop, deploy, start]); "
                "their commands live in each node's agent.yml"
            )
        if executor not in (None, "agent") and not isinstance(steps, dict):
            raise ValueError(
                f"with executor: {executor}, give each step its shell command, "
                'e.g. {stop: "systemctl stop app@{port}"}'
            )
        if not isinstance(steps, list | dict):
            raise ValueError("expected a mapping of step name to its shell command, or (executor: agent) step names")
        return steps


class Watch(Section):
    """The app's health watch (on when it has a health.url or nginx.status_url)."""

    enabled: Flag = True
    """the health watch of this app (also /upstream watch <app> on|off)"""
    reminder: PositiveDuration = 3600.0
    """an open incident is posted again after this unless acknowledged"""
    drained_reminder: PositiveDuration = 86400.0
    """a node drained longer than this gets one reminder"""
    concurrency: whole(1, 1000) = 64
    """probes in flight at once"""


class App(Section):
    """An app; its name (the key) is what commands take, e.g. /release app."""

    upstream: Upstream | None = None
    """the folder under consul.prefix (one name: letters, digits, . _ -); default: the app's name"""
    operators: SlackIds | None = None
    """who may change this app, instead of access.operators; [] = nobody"""
    approvers: SlackIds = []
    """who may approve its releases (and is mentioned in its alerts)"""
    approval: one_of("required", "none") = "none"
    """required: a second person approves every release"""
    networks: Networks = []
    """/upstream add accepts only addresses in these IPv4 networks (default: any)"""
    nginx: Nginx = Field(default_factory=Nginx)
    health: Health = Field(default_factory=Health)
    release: Release = Field(default_factory=Release)
    ssh: SshOverride = Field(default_factory=SshOverride)
    """the app's SSH settings, over the global ssh"""
    watch: Watch = Field(default_factory=Watch)

    @field_validator("approval")
    @classmethod
    def _approval_needs_approvers(cls, approval: str, info: ValidationInfo) -> str:
        if approval == "required" and info.data.get("approvers") == []:
            raise ValueError("is 'required' but the app has no approvers")
        return approval

    @field_validator("health", mode="wrap")
    @classmethod
    def _nginx_source_needs_a_status_url(
        cls, health: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Health:
        """Judged on the raw `source`, so that it is reported beside the health section's own problems."""
        nginx = info.data.get("nginx")
        no_status = nginx is not None and nginx.status_url is None
        broken = no_status and isinstance(health, dict) and health.get("source") == "nginx"
        found: list[Any] = []
        try:
            health = handler(health)
        except ValidationError as error:
            found = error.errors()
        if broken:
            problem = ValueError("is nginx, but nginx.status_url is not set: set it, or use probe")
            found.append({"type": "value_error", "loc": ("source",), "input": "nginx", "ctx": {"error": problem}})
        if found:
            raise ValidationError.from_exception_data("Health", found)
        return health


def _no_apps(apps: Any) -> Any:
    """`apps: []` and `apps: ""` are no apps, as the validator before pydantic took them."""
    return {} if isinstance(apps, list | str) and not apps else apps


class ConfigFile(Section):
    """upstream-bot's configuration (upstream-bot.yml); docs/configuration.md explains each key."""

    model_config = ConfigDict(title="upstream-bot configuration")

    consul: Consul = Field(default_factory=Consul)
    slack: Slack = Field(default_factory=Slack)
    access: Access = Field(default_factory=Access)
    history: History = Field(default_factory=History)
    ssh: Ssh = Field(default_factory=Ssh)
    agent: Agent = Field(default_factory=Agent)
    apps: Annotated[
        dict[AppName, App],
        a_mapping("expected a mapping of app name to its settings"),
        BeforeValidator(_no_apps),  # runs first
    ] = {}
    """the apps, by the name commands take"""
