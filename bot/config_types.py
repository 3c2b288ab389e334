"""The values the config's keys take, as pydantic types: each carries the JSON Schema an editor checks
the YAML with, and refuses a wrong value with one sentence saying what would be right.

pydantic's own words ("Input should be a valid integer") name neither the range nor the form, so each
type says its own: `explained` replaces whatever pydantic refused the value for, `a_list`/`a_mapping`
refuse a wrong container whole (its items are then checked one by one, each under its index or key),
and a validator function raises ValueError with its message.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)

from bot.durations import DURATION_PATTERN, MAX_SECONDS, parse_duration
from commands.access import SLACK_ID_PATTERN
from commands.quoting import without_credentials
from commands.settings import APP_NAME_PATTERN

# Names the bot's own keys use beside the apps' (upstream-bot/locks/<app> and the watch's election lock).
RESERVED_APP_NAMES = ("watch",)


def explained(message: str) -> WrapValidator:
    """Refuse a value the type does not take with `message`; `{got}` in it is the value as written."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(message.replace("{got}", repr(value))) from None

    return WrapValidator(validate)


def a_list(message: str, empty: bool = True) -> BeforeValidator:
    """A list (an empty one only if `empty`); anything else is refused whole with `message`."""

    def check(value: Any) -> Any:
        if not isinstance(value, list) or not (value or empty):
            raise ValueError(message)
        return value

    return BeforeValidator(check)


def a_mapping(message: str) -> BeforeValidator:
    """A mapping, else refused whole with `message`. Its keys are names: YAML reads `2048:` as a number."""

    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(message)
        return {str(key): item for key, item in value.items()}

    return BeforeValidator(check)


Text = Annotated[str, StringConstraints(pattern=r"\S"), explained("expected a non-empty string, got {got}")]
Flag = Annotated[bool, explained("expected true or false, got {got}")]


def whole(low: int, high: int) -> Any:
    """A whole number from `low` to `high` (`true` and `2.0` are refused, not taken as 1 and 2)."""
    return Annotated[
        int, Field(ge=low, le=high), explained(f"expected a whole number from {low} to {high}, got {{got}}")
    ]


Port = whole(1, 65535)


def one_of(*choices: str) -> Any:
    return Annotated[Literal[choices], explained(f"expected one of {', '.join(choices)}, got {{got}}")]


# The same as DURATION_PATTERN with a digit other than 0 in the number: more than 0.
POSITIVE_DURATION_PATTERN = DURATION_PATTERN.replace("^\\s*", "^\\s*(?=\\d*\\.?\\d*[1-9])", 1)


def _duration_schema(number: dict[str, Any], pattern: str = DURATION_PATTERN) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [{"type": "string", "pattern": pattern}, {"type": "number", "maximum": MAX_SECONDS, **number}],
            "examples": ["500ms", "10s", "2m", "1h"],
        }
    )


def _more_than_zero(value: Any) -> float:
    """A duration more than 0 (a negative number is refused as 0 is, not as "a duration is 0 or more")."""
    negative = isinstance(value, int | float) and not isinstance(value, bool) and value < 0
    seconds = 0.0 if negative else parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0, got {value!r}")
    return seconds


def _a_session_ttl(seconds: float) -> float:
    if not 10.0 <= seconds <= 86400.0:
        raise ValueError("Consul takes a session TTL from 10s to 24h, e.g. 15s")
    return seconds


# 0 or more: a wait that may be none (release.drain_wait).
Duration = Annotated[float, PlainValidator(parse_duration), _duration_schema({"minimum": 0})]
# More than 0: a timeout, an interval, a window, a reminder (0 would fail at once, or repeat without pause).
PositiveDuration = Annotated[
    float,
    PlainValidator(_more_than_zero),
    _duration_schema({"exclusiveMinimum": 0}, POSITIVE_DURATION_PATTERN),
]
SessionTtl = Annotated[
    float,
    PlainValidator(parse_duration),
    AfterValidator(_a_session_ttl),
    _duration_schema({"minimum": 10, "maximum": 86400}),
]


def url(value: Any, placeholders: bool = False) -> str:
    """An http(s) URL with a host and, if given, a port from 1 to 65535. With `placeholders` (a node's
    health URL), `{host}` and `{port}` may stand for the node's address; no other URL has any."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected an http(s) URL, e.g. http://127.0.0.1:8500, got {value!r}")
    safe = without_credentials(value)
    shown = repr(safe)
    found = set(re.findall(r"\{[^}]*\}", safe))  # not in the password: it may hold braces
    unknown = sorted(found - {"{host}", "{port}"}) if placeholders else sorted(found)
    if unknown:
        allowed = "use {host} and {port}" if placeholders else "only health.url has placeholders ({host}, {port})"
        raise ValueError(f"{shown} has placeholder(s) {', '.join(unknown)}: {allowed}")
    parsed = urlparse(value.replace("{host}", "h").replace("{port}", "1"))
    if parsed.scheme not in ("http", "https") or not parsed.hostname or any(c.isspace() for c in value):
        raise ValueError(f"{shown} is not an http(s) URL, e.g. http://127.0.0.1:8500")
    try:
        port = parsed.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"{shown} has an invalid port: expected a number from 1 to 65535")
    return value


def normalise_address(address: str) -> str:
    address = address.strip().rstrip("/")
    return address if "://" in address else f"http://{address}"


def consul_address(value: Any) -> str:
    """A Consul agent's URL; `127.0.0.1:8500` is taken as http://127.0.0.1:8500 (as CONSUL_HTTP_ADDR is)."""
    if not isinstance(value, str):
        raise ValueError(f"expected an address such as http://127.0.0.1:8500, got {value!r}")
    address = url(normalise_address(value))  # url() gives back what it is given
    parsed = urlparse(address)
    # The client would drop these without a word: /v1/... is added to the address itself, and the token
    # goes in CONSUL_HTTP_TOKEN, never in a URL (it would be logged with it).
    if parsed.username is not None:  # not echoed: it may hold a password
        raise ValueError(
            "has a user (and password) in it: give only the agent's scheme, host and port; "
            "the ACL token goes in the environment's CONSUL_HTTP_TOKEN"
        )
    if parsed.path or parsed.query or parsed.fragment:
        raise ValueError(
            f"{without_credentials(value)!r} has a path or a query: give only the agent's scheme, host and port, "
            "e.g. http://127.0.0.1:8500 (the bot adds /v1/...)"
        )
    return address


def health_url(value: Any) -> str:
    return url(value, placeholders=True)


def _url_schema(example: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": "^https?://", "examples": [example]})


Url = Annotated[str, PlainValidator(url), _url_schema("http://127.0.0.1/upstream_status?format=json")]
HealthUrl = Annotated[str, PlainValidator(health_url), _url_schema("http://{host}:{port}/ping")]
ConsulAddress = Annotated[str, PlainValidator(consul_address), WithJsonSchema({"type": "string"})]


def _one_or_more_addresses(value: Any) -> Any:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not value:
        raise ValueError("expected a list of addresses, e.g. [http://127.0.0.1:8500]")
    return value


ConsulAddresses = Annotated[
    list[ConsulAddress],
    BeforeValidator(
        _one_or_more_addresses,
        json_schema_input_type=ConsulAddress | Annotated[list[ConsulAddress], Field(min_length=1)],
    ),
]

SlackId = Annotated[
    str,
    StringConstraints(pattern=SLACK_ID_PATTERN),
    explained(
        "{got} is not a Slack user ID (U..., W...) or user-group ID (S...); display names are refused because "
        "anyone can change theirs"
    ),
]
SlackIds = Annotated[list[SlackId], a_list("expected a list of Slack IDs, e.g. [U2BOB, S0OPS]")]
ChannelId = Annotated[
    str,
    StringConstraints(pattern=r"^[CGD][A-Z0-9]{2,}$"),
    explained("{got} is not a Slack channel ID such as C0DEPLOY"),
]
ChannelIds = Annotated[
    list[ChannelId],
    Field(min_length=1),
    a_list("expected a list of Slack channel IDs such as [C0DEPLOY] (leave it out for any channel)", empty=False),
]


def _ipv4_network(text: str) -> str:
    return str(ipaddress.IPv4Network(text, strict=False))


Network = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9.]+(/[0-9.]+)?$"),
    AfterValidator(_ipv4_network),
    explained("{got} is not an IPv4 network such as 10.0.0.0/8"),
]
Networks = Annotated[
    list[Network], a_list("expected a list of CIDRs, e.g. [10.0.0.0/8] (leave it out for any network)")
]


def _not_reserved(name: str) -> str:
    if name in RESERVED_APP_NAMES:
        raise ValueError(
            f"`{name}` is reserved: upstream-bot/locks/watch is the health watch's lock; name the app otherwise"
        )
    return name


AppName = Annotated[
    str,
    StringConstraints(pattern=APP_NAME_PATTERN),
    explained("an app name is letters, digits, '.', '_' or '-' (it is typed in commands)"),
    AfterValidator(_not_reserved),
    WithJsonSchema({"type": "string", "pattern": APP_NAME_PATTERN, "not": {"enum": list(RESERVED_APP_NAMES)}}),
]
StepName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$"),
    explained("a step name is lower-case letters, digits, '_' or '-'"),
]
# An HTTP field name (RFC 9110's token), e.g. X-App-Version.
HeaderName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"),
    explained("expected an HTTP header name such as X-App-Version, got {got}"),
]


# A KV folder's name. Not `.` or `..`: the Consul client's HTTP library resolves those, so that
# `upstreams/../` would read /v1/kv/ itself.
_FOLDER = r"(?!\.{1,2}(/|$))[A-Za-z0-9._-]+"
FOLDER_NAMES = "letters, digits, '.', '_' or '-' (not '.' or '..')"


def _a_folder_name(name: str) -> bool:
    return re.fullmatch(_FOLDER, name) is not None


def _one_folder(name: str) -> str:
    if not _a_folder_name(name):
        raise ValueError(f"{name!r} is not a folder name: {FOLDER_NAMES}; the upstream is one folder, without '/'")
    return name


def _kv_folder(prefix: str) -> str:
    """`prefix` without the slashes around it (as before: `/upstreams/` is `upstreams`)."""
    folder = prefix.strip("/")
    if not all(_a_folder_name(name) for name in folder.split("/")):
        raise ValueError(
            f"{prefix!r} is not a KV folder: names of {FOLDER_NAMES}, separated by '/' (none empty), "
            "e.g. upstreams or nginx/upstreams"
        )
    return folder


Upstream = Annotated[Text, AfterValidator(_one_folder), WithJsonSchema({"type": "string", "pattern": f"^{_FOLDER}$"})]
Prefix = Annotated[
    Text,
    AfterValidator(_kv_folder),
    WithJsonSchema({"type": "string", "pattern": f"^/*{_FOLDER}(/{_FOLDER})*/*$", "examples": ["upstreams"]}),
]


def _a_regular_expression(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"not a regular expression: {error}") from None
    return pattern


VersionPattern = Annotated[Text, AfterValidator(_a_regular_expression)]
