"""What nginx reports: nginx_upstream_check_module's check_status and nginx-upsync-module's upstream_show.

Both formats have traps (UPSYNC-NOTES): check_status JSON may end in a trailing comma and does not
escape strings; slots' `index` is reused, so servers are keyed on upstream + name; upstream_show
shows the `down` KV flag (not health) of whichever worker answered.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx

from bot.health.prober import connect_reason
from commands.interfaces import NginxView
from commands.quoting import hide_credentials, without_credentials
from commands.settings import AppSettings

_TRAILING_COMMA = re.compile(r",(\s*[\]}])")
_SHOW_SERVER = re.compile(r"^\s*server\s+(\S+)(.*?);?\s*$")
UNKNOWN_UPSTREAM = "The upstream you requested does not exist"


class NginxFormatError(ValueError):
    pass


def parse_check_status_json(text: str, upstream: str) -> dict[str, str]:
    """`{"servers": {"server": [{"upstream": .., "name": "ip:port", "status": "up"}, ...]}}` -> name: status."""
    return check_status_json_by_upstream(text).get(upstream, {})


def check_status_json_by_upstream(text: str) -> dict[str, dict[str, str]]:
    """The whole check_status JSON page: upstream -> name -> status (one parse serves every app)."""
    try:
        data = json.loads(_TRAILING_COMMA.sub(r"\1", text))
        servers = data["servers"]["server"]
        if not isinstance(servers, list):
            raise TypeError("servers.server is not a list")
    except (ValueError, KeyError, TypeError) as error:
        raise NginxFormatError(f"not check_status JSON ({error})") from None
    result: dict[str, dict[str, str]] = {}
    for s in servers:
        if isinstance(s, dict) and "name" in s:
            status = _status(str(s.get("status", "unknown")), s.get("rise"), s.get("fall"))
            result.setdefault(str(s.get("upstream")), {})[str(s["name"])] = status
    return result


def _status(status: str, rise: object, fall: object) -> str:
    """What the module's status means for the node. "unchecked": "up" but never checked (rise and fall
    both 0): after nginx starts, or for a server upsync just added, the module shows its default ("up"
    with default_down=false) until the first check, which says nothing about the node. "failing": still
    up for nginx (routed) but its last check failed (`fall` failures turn it down). A "down" stays down
    (default_down=true: nginx does not route to it until checked)."""
    if str(rise) == "0" and status == "up":
        return "unchecked" if str(fall) == "0" else "failing"
    return status


def parse_check_status_csv(text: str, upstream: str) -> dict[str, str]:
    """`0,app,127.0.0.1:9000,up,58,0,http,0` a line -> name: status."""
    return check_status_csv_by_upstream(text).get(upstream, {})


def check_status_csv_by_upstream(text: str) -> dict[str, dict[str, str]]:
    result: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split(",")
        if len(parts) < 4:
            continue
        rise, fall = (parts[4], parts[5]) if len(parts) >= 6 else (None, None)
        result.setdefault(parts[1], {})[parts[2]] = _status(parts[3], rise, fall)
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
    """`NginxReader` for one app's configured `nginx.status_url` and `nginx.list_url`.

    `max_age` (the health watch's reader): a check_status page read less than that many seconds ago
    serves every app behind the same nginx, and concurrent reads of one URL share one request, so
    the watch reads each nginx once per round, not once per app. 0 (status, releases): always fresh.
    """

    def __init__(
        self, apps: dict[str, AppSettings], client: httpx.AsyncClient, timeout: float = 3.0, max_age: float = 0.0
    ) -> None:
        self.by_upstream = {app.upstream: app for app in apps.values()}
        self.client = client
        self.timeout = timeout
        self.max_age = max_age
        # check_status URL -> (monotonic time read, the page parsed per upstream, or the error it raised)
        self._pages: dict[str, tuple[float, asyncio.Future[dict[str, dict[str, str]]]]] = {}

    async def read(self, upstream: str) -> NginxView:
        app = self.by_upstream.get(upstream)
        if app is None:
            return NginxView()
        checks_task = self._checks(app.nginx.status_url, upstream) if app.nginx.status_url else None
        listed_task = self._listed(app.nginx.list_url, upstream) if app.nginx.list_url else None
        errors: list[str] = []
        checks = listed = None
        checks_error = listed_error = None
        results = await asyncio.gather(
            *(t for t in (checks_task, listed_task) if t is not None), return_exceptions=True
        )
        it = iter(results)
        if checks_task is not None:
            got = next(it)
            if isinstance(got, BaseException):
                shown = without_credentials(app.nginx.status_url or "")
                checks_error = f"nginx check status ({shown}) unreadable: {hide_credentials(_reason(got))}"
                errors.append(checks_error)
            else:
                checks = got
        if listed_task is not None:
            got = next(it)
            if isinstance(got, BaseException):
                shown = without_credentials(app.nginx.list_url or "")
                listed_error = f"nginx upstream list ({shown}) unreadable: {hide_credentials(_reason(got))}"
                errors.append(listed_error)
            else:
                listed = got
        return NginxView(checks, listed, tuple(errors), checks_error, listed_error)

    async def _get(self, url: str) -> str:
        response = await self.client.get(url, timeout=self.timeout)
        response.raise_for_status()
        return response.text

    async def _checks(self, url: str, upstream: str) -> dict[str, str]:
        if "format=" not in url:
            # check_status answers HTML unless asked otherwise (or configured `check_status json;`).
            url = f"{url}{'&' if '?' in url else '?'}format=json"
        if self.max_age <= 0:
            return (await self._page(url)).get(upstream, {})
        now = time.monotonic()
        cached = self._pages.get(url)
        if cached is None or now - cached[0] >= self.max_age:
            for old in [u for u, (at, _) in self._pages.items() if now - at >= self.max_age]:
                del self._pages[old]
            future = asyncio.ensure_future(self._page(url))
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
            self._pages[url] = cached = (now, future)
        return (await asyncio.shield(cached[1])).get(upstream, {})

    async def _page(self, url: str) -> dict[str, dict[str, str]]:
        text = await self._get(url)
        if "format=csv" in url:
            return check_status_csv_by_upstream(text)
        return check_status_json_by_upstream(text)

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
