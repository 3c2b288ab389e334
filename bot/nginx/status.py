"""What nginx reports: nginx_upstream_check_module's check_status and nginx-upsync-module's upstream_show.

Both formats have traps (UPSYNC-NOTES): check_status JSON may end in a trailing comma and does not
escape strings; slots' `index` is reused, so servers are keyed on upstream + name; upstream_show
shows the `down` KV flag (not health) of whichever worker answered.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx

from bot.health.prober import connect_reason
from commands.interfaces import NginxView
from commands.settings import AppSettings

_TRAILING_COMMA = re.compile(r",(\s*[\]}])")
_SHOW_SERVER = re.compile(r"^\s*server\s+(\S+)(.*?);?\s*$")
UNKNOWN_UPSTREAM = "The upstream you requested does not exist"


class NginxFormatError(ValueError):
    pass


def parse_check_status_json(text: str, upstream: str) -> dict[str, str]:
    """`{"servers": {"server": [{"upstream": .., "name": "ip:port", "status": "up"}, ...]}}` -> name: status."""
    try:
        data = json.loads(_TRAILING_COMMA.sub(r"\1", text))
        servers = data["servers"]["server"]
    except (ValueError, KeyError, TypeError) as error:
        raise NginxFormatError(f"not check_status JSON ({error})") from None
    return {
        str(s["name"]): str(s.get("status", "unknown"))
        for s in servers
        if isinstance(s, dict) and s.get("upstream") == upstream and "name" in s
    }


def parse_check_status_csv(text: str, upstream: str) -> dict[str, str]:
    """`0,app,127.0.0.1:9000,up,58,0,http,0` a line -> name: status."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(",")
        if len(parts) < 4:
            continue
        if parts[1] == upstream:
            result[parts[2]] = parts[3]
    return result


def parse_upstream_show(text: str, upstream: str) -> dict[str, bool]:
    """upsync's `upstream_show` text -> name: listed down. Raises when the upstream is unknown to nginx."""
    if UNKNOWN_UPSTREAM in text:
        raise NginxFormatError(f"nginx has no upstream named {upstream!r}")
    result: dict[str, bool] = {}
    current: str | None = None
    for line in text.splitlines():
        header = re.match(r"^Upstream name:\s*([^;]+);", line.strip())
        if header:
            current = header.group(1).strip()
            continue
        match = _SHOW_SERVER.match(line)
        if match and current == upstream:
            flags = match.group(2).rstrip(";").split()
            result[match.group(1)] = "down" in flags
    return result


class HttpNginxReader:
    """`NginxReader` for one app's configured `nginx.status_url` and `nginx.list_url`."""

    def __init__(self, apps: dict[str, AppSettings], client: httpx.AsyncClient, timeout: float = 3.0) -> None:
        self.by_upstream = {app.upstream: app for app in apps.values()}
        self.client = client
        self.timeout = timeout

    async def read(self, upstream: str) -> NginxView:
        app = self.by_upstream.get(upstream)
        if app is None:
            return NginxView()
        checks_task = self._checks(app.nginx.status_url, upstream) if app.nginx.status_url else None
        listed_task = self._listed(app.nginx.list_url, upstream) if app.nginx.list_url else None
        errors: list[str] = []
        checks = listed = None
        results = await asyncio.gather(
            *(t for t in (checks_task, listed_task) if t is not None), return_exceptions=True
        )
        it = iter(results)
        if checks_task is not None:
            got = next(it)
            if isinstance(got, BaseException):
                errors.append(f"nginx check status ({app.nginx.status_url}) unreadable: {_reason(got)}")
            else:
                checks = got
        if listed_task is not None:
            got = next(it)
            if isinstance(got, BaseException):
                errors.append(f"nginx upstream list ({app.nginx.list_url}) unreadable: {_reason(got)}")
            else:
                listed = got
        return NginxView(checks=checks, listed_down=listed, errors=tuple(errors))

    async def _get(self, url: str) -> str:
        response = await self.client.get(url, timeout=self.timeout)
        response.raise_for_status()
        return response.text

    async def _checks(self, url: str, upstream: str) -> dict[str, str]:
        if "format=" not in url:
            # check_status answers HTML unless asked otherwise (or configured `check_status json;`).
            url = f"{url}{'&' if '?' in url else '?'}format=json"
        text = await self._get(url)
        if "format=csv" in url:
            return parse_check_status_csv(text, upstream)
        return parse_check_status_json(text, upstream)

    async def _listed(self, url: str, upstream: str) -> dict[str, bool]:
        # upstream_show answers for one upstream when asked `?<name>`; a configured query is kept.
        target = url if "?" in url else f"{url}?{upstream}"
        return parse_upstream_show(await self._get(target), upstream)


def _reason(error: BaseException) -> str:
    if isinstance(error, httpx.TimeoutException):
        return "timeout"
    if isinstance(error, httpx.ConnectError):
        return connect_reason(error)
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    return str(error) or type(error).__name__
