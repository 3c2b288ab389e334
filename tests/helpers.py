"""Shared test helpers: signed Slack requests, a recording notifier, polling with a deadline."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from commands.events import Event

SIGNING_SECRET = "test-signing-secret"


def sign(body: str, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


def command_body(
    command: str,
    text: str,
    user: str = "U1ALICE",
    channel: str = "C0DEPLOY",
    response_url: str = "",
    trigger_id: str | None = None,
) -> str:
    return urlencode(
        {
            "token": "legacy",
            "team_id": "T0STANDIN",
            "team_domain": "standin",
            "channel_id": channel,
            "channel_name": "deploy",
            "user_id": user,
            "user_name": user.lower(),
            "command": command,
            "text": text,
            "api_app_id": "A0BOT",
            "response_url": response_url,
            "trigger_id": trigger_id or f"trigger-{time.monotonic_ns()}",
        }
    )


def action_body(
    action_id: str, value: str, user: str = "U1ALICE", channel: str = "C0DEPLOY", response_url: str = ""
) -> str:
    payload: dict[str, Any] = {
        "type": "block_actions",
        "team": {"id": "T0STANDIN", "domain": "standin"},
        "user": {"id": user, "username": user.lower(), "team_id": "T0STANDIN"},
        "api_app_id": "A0BOT",
        "token": "legacy",
        "container": {"type": "message", "message_ts": "1.1", "channel_id": channel, "is_ephemeral": True},
        "trigger_id": f"trigger-{time.monotonic_ns()}",
        "channel": {"id": channel, "name": "deploy"},
        "response_url": response_url,
        "actions": [
            {"action_id": action_id, "block_id": "b", "value": value, "type": "button", "action_ts": str(time.time())}
        ],
    }
    return urlencode({"payload": json.dumps(payload)})


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout} s")


async def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """`wait_until` for async tests: poll without blocking the loop the code under test runs on."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


class RecordingNotifier:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def processes_matching(marker: str) -> list[str]:
    """Command lines of live processes containing `marker` (read from /proc, no tools needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(cmdline)
    return found


async def wait_gone(marker: str, timeout: float = 10.0) -> list[str]:
    """Poll until no process carries `marker` (bounded); the survivors otherwise."""
    for _ in range(int(timeout / 0.05)):
        if not processes_matching(marker):
            return []
        await asyncio.sleep(0.05)
    return processes_matching(marker)


async def wait_started(marker: str, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        if processes_matching(marker):
            return True
        await asyncio.sleep(0.05)
    return False
