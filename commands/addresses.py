"""Server addresses as nginx-upsync-module accepts them: IPv4:port, nothing else."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from commands.errors import UsageError

_EXAMPLE = "10.0.0.5:9000"


@dataclass(frozen=True, order=True)
class ServerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> ServerAddress:
        """Parse `IPv4:port`; upsync skips hostnames, IPv6 and missing ports, so we refuse them."""
        host, sep, port_text = text.strip().rpartition(":")
        if not sep or not host:
            raise UsageError(f"`{text}` is not a server address: expected IPv4:port, e.g. `{_EXAMPLE}`.")
        if host.startswith("[") or ":" in host:
            raise UsageError(
                f"`{text}` is an IPv6 address; nginx-upsync-module only reads IPv4:port keys (e.g. `{_EXAMPLE}`)."
            )
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            parts = host.split(".")
            if len(parts) == 4 and all(part.isdigit() for part in parts):
                raise UsageError(
                    f"`{host}` in `{text}` is not an IPv4 address: each of its four numbers goes from 0 to 255 "
                    f"(e.g. `{_EXAMPLE}`)."
                ) from None
            raise UsageError(
                f"`{host}` in `{text}` is not an IPv4 address; nginx-upsync-module skips hostnames. "
                f"Use the server's IPv4 address, e.g. `{_EXAMPLE}`."
            ) from None
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise UsageError(f"`{port_text}` in `{text}` is not a port: expected a number from 1 to 65535.")
        return cls(str(ip), int(port_text))

    @classmethod
    def from_key(cls, key: str) -> ServerAddress | None:
        """The address in a Consul key: only the text after the last `/` counts (as in upsync)."""
        try:
            return cls.parse(key.rsplit("/", 1)[-1])
        except UsageError:
            return None
