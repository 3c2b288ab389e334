"""An upstream's servers as Consul holds them, read the way nginx-upsync-module reads them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from commands.addresses import ServerAddress

# upsync's defaults for a field that is missing (or for a value that is not JSON at all).
DEFAULTS: dict[str, int] = {"weight": 1, "max_fails": 2, "fail_timeout": 10, "down": 0}
INT_MIN = -(2**31)
NGX_ERROR = -1


def cjson_valueint(value: Any) -> int:
    """cJSON's `valueint` of a parsed value: true 1; a number truncated toward zero, as C's `(int)` cast
    (out of int's range: INT_MIN, what x86 gives); anything else (false, null, a string, an object) 0."""
    if value is True:
        return 1
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if value != value or not -(2**31) <= value < 2**31:  # NaN or out of range
        return INT_MIN
    return int(value)


def ngx_atoi(text: str) -> int:
    """nginx's ngx_atoi: one or more ASCII digits and nothing else (no sign, space or point), else
    NGX_ERROR (-1); beyond ngx_int_t's range also NGX_ERROR."""
    if not text or not all("0" <= c <= "9" for c in text):
        return NGX_ERROR
    n = int(text)
    return n if n <= 2**63 - 1 else NGX_ERROR


def upsync_int(value: Any, default: int) -> int:
    """weight, max_fails, fail_timeout as ngx_http_upsync_module.c reads them (upsync_parse_json): a
    string through ngx_atoi, else cJSON's valueint when it is >= 0, else the default. (The caller then
    applies the field's own rule for what is left invalid.)"""
    if isinstance(value, str):
        return ngx_atoi(value)
    number = cjson_valueint(value)
    return number if number >= 0 else default


def upsync_down(value: Any) -> int:
    """`down` as upsync reads it: cJSON's valueint when it is not 0, else a string through ngx_atoi,
    else 0. Only 0 and 1 are valid; anything else is logged invalid and the server serves."""
    number = cjson_valueint(value)
    if number != 0:
        return number
    if isinstance(value, str):
        return ngx_atoi(value)
    return 0


VALUE_BUFFER = 1024  # upsync's buffer for a decoded value (ngx_pcalloc(ctx->pool, 1024))
OVERSIZE = "over upsync's 1024-byte buffer"


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object as cJSON_GetObjectItem sees it: of keys equal but for case, the first one counts."""
    kept: dict[str, Any] = {}
    seen: set[str] = set()
    for key, value in pairs:
        if key.lower() not in seen:
            seen.add(key.lower())
            kept[key] = value
    return kept


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # cJSON refuses NaN and Infinity: the whole value is invalid


def parse_like_cjson(text: str) -> Any:
    """The value as upsync's cJSON_Parse takes it, or None when it refuses it: the first JSON value
    (cJSON ignores what follows it), duplicate keys resolved as cJSON looks them up, no NaN/Infinity."""
    decoder = json.JSONDecoder(object_pairs_hook=_first_wins, parse_constant=_no_constant)
    try:
        value, _ = decoder.raw_decode(text.lstrip())
    except ValueError:
        return None
    return value


def _apparent(value: Any) -> Any:
    """What a person reading the value takes it for (a numeric string as its number)."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def number(value: Any, default: int) -> int:
    """A value as upsync takes it for a numeric field (see upsync_int)."""
    return upsync_int(value, default)


@dataclass(frozen=True)
class ServerEntry:
    """One key under `<prefix>/<upstream>/`: its address, its JSON fields and its ModifyIndex."""

    address: ServerAddress
    fields: dict[str, Any]
    modify_index: int
    # Set when the stored value is not a JSON object: upsync then uses the defaults (serving!).
    invalid_value: str | None = None

    @classmethod
    def from_kv(cls, address: ServerAddress, raw: bytes | str | None, modify_index: int) -> ServerEntry:
        data = raw if isinstance(raw, bytes) else (raw or "").encode()
        text = data.decode("utf-8", "replace")
        if not text.strip():
            return cls(address, {}, modify_index, invalid_value="empty value")
        parsed = parse_like_cjson(text)
        if parsed is None:
            return cls(address, {}, modify_index, invalid_value="not JSON")
        if not isinstance(parsed, dict):
            return cls(address, {}, modify_index, invalid_value="not a JSON object")
        if len(data) >= VALUE_BUFFER:
            # upsync decodes the value into a 1024-byte buffer without a bound: what nginx makes of it is
            # undefined. Read as it looks, but never counted on as serving (and flagged).
            return cls(address, parsed, modify_index, invalid_value=f"{OVERSIZE} ({len(data)} bytes)")
        return cls(address, parsed, modify_index)

    def raw(self, name: str) -> tuple[bool, Any]:
        """(present, value) of field `name`, matched case-insensitively as cJSON_GetObjectItem does."""
        for key, value in self.fields.items():
            if key.lower() == name:
                return True, value
        return False, None

    def _get(self, name: str) -> int:
        present, value = self.raw(name)
        return upsync_int(value, DEFAULTS[name]) if present else DEFAULTS[name]

    @property
    def weight(self) -> int:
        weight = self._get("weight")
        return weight if weight > 0 else 1  # upsync turns weight <= 0 (and an unreadable one) into 1

    @property
    def max_fails(self) -> int:
        max_fails = self._get("max_fails")
        return max_fails if max_fails >= 0 else DEFAULTS["max_fails"]

    @property
    def fail_timeout(self) -> int:
        fail_timeout = self._get("fail_timeout")
        return fail_timeout if fail_timeout >= 0 else DEFAULTS["fail_timeout"]

    @property
    def down_flag(self) -> int | None:
        """`down` as upsync reads it: 0 or 1; None when upsync finds it invalid (and serves the server).
        E.g. "true", "1.0", " 1", 2 and -1 are invalid; 1, "1", "01", 1.0 and true are 1."""
        present, value = self.raw("down")
        if not present:
            return 0
        down = upsync_down(value)
        return down if down in (0, 1) else None

    def misread(self) -> list[str]:
        """Fields nginx reads otherwise than they look (so status can say what nginx uses)."""
        found = []
        for name, used in (("weight", self.weight), ("max_fails", self.max_fails), ("fail_timeout", self.fail_timeout)):
            present, value = self.raw(name)
            if present and _apparent(value) != used:
                found.append(f"{name}={json.dumps(value)} is read by nginx-upsync-module as {used}")
        return found

    @property
    def drained(self) -> bool:
        """Out of traffic for nginx: `down` reads as 1 (an invalid value serves, as upsync reads it)."""
        return self.down_flag == 1

    @property
    def surely_serving(self) -> bool:
        """`down` reads as 0 (or is absent) and the value is valid JSON: a server a guard may count on."""
        return self.down_flag == 0 and self.invalid_value is None

    def with_down(self, down: bool) -> dict[str, Any]:
        """The fields to write: every field kept as it was, only `down` set (under its own spelling)."""
        fields = dict(self.fields)
        name = next((k for k in fields if k.lower() == "down"), "down")
        fields[name] = 1 if down else 0
        return fields


def encode(fields: dict[str, Any]) -> str:
    """The JSON text to store (a string: python-consul2 would form-encode a dict). Never NaN or Infinity
    (cJSON would refuse the whole value, and nginx serve the server with the defaults)."""
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Upstream:
    """A consistent read of one upstream folder, with the Consul index it was read at."""

    name: str
    servers: tuple[ServerEntry, ...]
    index: int = 0
    # Keys under the folder that are not IPv4:port (upsync skips them; we say so).
    skipped_keys: tuple[str, ...] = field(default_factory=tuple)

    def find(self, address: ServerAddress) -> ServerEntry | None:
        return next((s for s in self.servers if s.address == address), None)

    @property
    def serving(self) -> int:
        return sum(1 for s in self.servers if not s.drained)
