"""An upstream's servers as Consul holds them, read the way nginx-upsync-module reads them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from commands.addresses import ServerAddress

# upsync's defaults for a field that is missing (or for a value that is not JSON at all).
DEFAULTS: dict[str, int] = {"weight": 1, "max_fails": 2, "fail_timeout": 10, "down": 0}


def number(value: Any, default: int) -> int:
    """upsync takes numbers or numeric strings; true counts as 1; anything else is the default."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "true":
            return 1
        if text == "false":
            return 0
        try:
            return int(float(text))
        except ValueError:
            return default
    return default


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
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")
        if not text.strip():
            return cls(address, {}, modify_index, invalid_value="empty value")
        try:
            parsed = json.loads(text)
        except ValueError:
            return cls(address, {}, modify_index, invalid_value="not JSON")
        if not isinstance(parsed, dict):
            return cls(address, {}, modify_index, invalid_value="not a JSON object")
        return cls(address, parsed, modify_index)

    def _get(self, name: str) -> int:
        # upsync matches field names case-insensitively.
        for key, value in self.fields.items():
            if key.lower() == name:
                return number(value, DEFAULTS[name])
        return DEFAULTS[name]

    @property
    def weight(self) -> int:
        weight = self._get("weight")
        return weight if weight > 0 else 1  # upsync turns weight <= 0 into 1

    @property
    def max_fails(self) -> int:
        return self._get("max_fails")

    @property
    def fail_timeout(self) -> int:
        return self._get("fail_timeout")

    @property
    def down_flag(self) -> int | None:
        """`down` as upsync reads it: exactly 0 or 1 (a number or a numeric string); None when invalid.
        Measured on the real module: "true", "1.0", " 1", 2 and -1 are logged invalid and read as 0."""
        for key, value in self.fields.items():
            if key.lower() == "down":
                if isinstance(value, bool):
                    return None
                if value in (0, 1) and isinstance(value, int | float) and float(value).is_integer():
                    return int(value)
                if value in ("0", "1"):
                    return int(value)
                return None
        return 0

    @property
    def drained(self) -> bool:
        """Out of traffic for nginx: `down` is exactly 1 (an invalid value serves, as upsync reads it)."""
        return self.down_flag == 1

    @property
    def surely_serving(self) -> bool:
        """`down` is exactly 0 (or absent) and the value is valid JSON: a server a guard may count on."""
        return self.down_flag == 0 and self.invalid_value is None

    def with_down(self, down: bool) -> dict[str, Any]:
        """The fields to write: every field kept as it was, only `down` set (under its own spelling)."""
        fields = dict(self.fields)
        name = next((k for k in fields if k.lower() == "down"), "down")
        fields[name] = 1 if down else 0
        return fields


def encode(fields: dict[str, Any]) -> str:
    """The JSON text to store (a string: python-consul2 would form-encode a dict)."""
    return json.dumps(fields, separators=(",", ":"))


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
