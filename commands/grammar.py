"""The command grammar: slash-command text -> a typed request, or a usage error that says why."""

from __future__ import annotations

import re
from dataclasses import replace

from commands.addresses import ServerAddress
from commands.errors import UsageError
from commands.requests import (
    AddRequest,
    AlertsRequest,
    DrainRequest,
    HelpRequest,
    HistoryRequest,
    MarkRequest,
    ReleaseAbortRequest,
    ReleaseRequest,
    ReleaseResumeRequest,
    ReleaseStatusRequest,
    RemoveRequest,
    Request,
    StatusRequest,
    UndrainRequest,
    WatchRequest,
)
from commands.settings import APP_NAME_PATTERN
from commands.versions import DEFAULT_PATTERN, version_problem

COMMANDS = ("/upstream", "/drain", "/undrain", "/release")

USAGE: dict[str, str] = {
    "/upstream": (
        "`/upstream status <app> [--page N]`: every server, drained or serving, up or down\n"
        "`/upstream add <app> <ip:port> [weight=N]`: probe, then add the server (serving)\n"
        "`/upstream remove <app> <ip:port>`: drain, then remove the server\n"
        "`/upstream watch <app> on|off`: the health watch of an app\n"
        "`/upstream alerts [app]`: open health incidents\n"
        "`/upstream ack|silence <app> [ip:port]`: acknowledge an alert (no more reminders), or silence it 1 h\n"
        "`/upstream history <app> [ip:port] [--limit N]`: who changed what, newest first\n"
        'Every change takes `--reason "..."`, recorded in the history and shown in the channel.'
    ),
    "/drain": "`/drain <ip:port> [app] [--force]`: take a server out of traffic (asks first)",
    "/undrain": "`/undrain <ip:port> [app] [--force]`: probe, then put a server back (`--force` skips the probe)",
    "/release": (
        "`/release <app> [--serial | --batch N | --batch N%] [--canary] [--version V] [--dry-run] [--force]`\n"
        "`/release status <app>`, `/release abort <app>`, "
        "`/release resume <app> [--restore | --leave]` (a release whose bot died)"
    ),
}

DEFAULT_VERSION_PATTERN = DEFAULT_PATTERN
_APP_NAME = re.compile(APP_NAME_PATTERN)


def usage(command: str = "") -> str:
    if command in USAGE:
        return USAGE[command]
    return "\n".join(USAGE[c] for c in COMMANDS)


def _app_name(text: str, command: str) -> str:
    if len(text) > 64:  # not echoed back: it could be a whole paste
        raise UsageError(f"That app name is {len(text)} characters long: app names have at most 64.\n{usage(command)}")
    if not _APP_NAME.match(text):
        raise UsageError(f"`{text}` is not an app name (letters, digits, `.`, `_`, `-`).\n{usage(command)}")
    return text


def _split_flags(command: str, words: list[str], known: dict[str, bool]) -> tuple[list[str], dict[str, str]]:
    """Separate `--flag [value]` from positional words. `known` maps a flag to whether it takes a value."""
    positional: list[str] = []
    flags: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if name not in known:
                listed = ", ".join(f"`{k}`" for k in known) or "none"
                raise UsageError(f"unknown flag `{name}` for {command} (known flags: {listed}).\n{usage(command)}")
            if name in flags:
                raise UsageError(f"`{name}` is given twice.\n{usage(command)}")
            if known[name]:
                if not eq:
                    if i + 1 >= len(words) or words[i + 1].startswith("--"):
                        raise UsageError(f"`{name}` needs a value.\n{usage(command)}")
                    i += 1
                    value = words[i]
                flags[name] = value
            else:
                if eq:
                    raise UsageError(f"`{name}` takes no value.\n{usage(command)}")
                flags[name] = ""
        elif word.startswith("—"):  # an em dash: Slack and phones turn `--` into one
            raise UsageError(f"`{word}` starts with a dash `—`; flags start with two hyphens, e.g. `--force`.")
        else:
            positional.append(word)
        i += 1
    return positional, flags


def _expect(command: str, positional: list[str], least: int, most: int, what: str) -> None:
    if len(positional) < least:
        raise UsageError(f"{command} needs {what}.\n{usage(command)}")
    if len(positional) > most:
        extra = " ".join(positional[most:])
        raise UsageError(f"unexpected `{extra}` for {command}.\n{usage(command)}")


REASON_CHARS = 300
# `--reason "why"` (straight or curly quotes: Slack and phones curl them) or `--reason why` up to the next flag.
_REASON = re.compile(
    r"""(?:^|\s)--reason(?:=|\s+)(?:"([^"]*)"|“([^”]*)”|'([^']*)'|‘([^’]*)’|(.*?))(?=\s--|\s*$)""",  # noqa: RUF001 (curly quotes on purpose)
    re.DOTALL,
)
CHANGING = (
    DrainRequest,
    UndrainRequest,
    AddRequest,
    RemoveRequest,
    ReleaseRequest,
    ReleaseAbortRequest,
    ReleaseResumeRequest,
    WatchRequest,
)


def clean_reason(raw: str | None) -> str:
    """A reason as it is kept: one line of printable text, no Slack markup (`<` and `>` become
    look-alikes, so `<!channel>` or a link cannot be typed); may be empty."""
    text = " ".join("".join(c if c.isprintable() else " " for c in raw or "").split())
    return text.replace("<", "\u2039").replace(">", "\u203a")


def _take_reason(command: str, text: str) -> tuple[str, str | None]:
    """The text without its `--reason`, and the reason (cleaned: one line, no control characters)."""
    match = _REASON.search(text)
    if match is None:
        if re.search(r"(^|\s)--reason\s*$", text):
            raise UsageError(f'`--reason` needs text, e.g. `--reason "disk full"`.\n{usage(command)}')
        return text, None
    raw = next(g for g in match.groups() if g is not None)
    reason = clean_reason(raw)
    if not reason:
        raise UsageError(f'`--reason` needs text, e.g. `--reason "disk full"`.\n{usage(command)}')
    if len(reason) > REASON_CHARS:
        raise UsageError(f"`--reason` is at most {REASON_CHARS} characters (this one has {len(reason)}).")
    return text[: match.start()] + " " + text[match.end() :], reason


def parse(command: str, text: str) -> Request:
    """Parse the text after a slash command (`command` is e.g. `/drain`)."""
    command = command.strip().lower()
    if command not in USAGE:
        raise UsageError(f"unknown command `{command}`; known: {', '.join(COMMANDS)}.")
    text, reason = _take_reason(command, text)
    request = _parse(command, text)
    if reason is None:
        return request
    if not isinstance(request, CHANGING):
        raise UsageError("`--reason` goes with a change (drain, undrain, add, remove, release, abort, watch).")
    return replace(request, reason=reason)


def _parse(command: str, text: str) -> Request:
    words = text.split()
    if command not in USAGE:
        raise UsageError(f"unknown command `{command}`; known: {', '.join(COMMANDS)}.")
    if not words or words[0] in ("help", "--help", "-h"):
        return HelpRequest(command)
    if command == "/upstream":
        return _parse_upstream(words)
    if command in ("/drain", "/undrain"):
        positional, flags = _split_flags(command, words, {"--force": False})
        _expect(command, positional, 1, 2, "a server address `<ip:port>`")
        address = ServerAddress.parse(positional[0])
        app = _app_name(positional[1], command) if len(positional) > 1 else None
        kind = DrainRequest if command == "/drain" else UndrainRequest
        return kind(address, app, "--force" in flags)
    return _parse_release(words)


def parse_line(line: str) -> Request:
    """Parse a whole line such as `/drain 10.0.0.5:9000` (terminal and `upstream-bot run`)."""
    line = line.strip()
    if line.lower() in ("help", "?", "/help"):
        return HelpRequest("")  # every command's usage
    if not line.startswith("/"):
        raise UsageError(f"`{line}` is not a command: commands start with `/`.\n{usage()}")
    command, _, rest = line.partition(" ")
    return parse(command, rest)


def _parse_upstream(words: list[str]) -> Request:
    command = "/upstream"
    sub, rest = words[0].lower(), words[1:]
    if sub == "status":
        positional, flags = _split_flags(command, rest, {"--page": True})
        _expect(command, positional, 1, 1, "an app: `/upstream status <app>`")
        page = 1
        if "--page" in flags:
            if not flags["--page"].isdigit() or int(flags["--page"]) < 1:
                raise UsageError(f"`--page {flags['--page']}`: the page is a number from 1.")
            page = int(flags["--page"])
        return StatusRequest(_app_name(positional[0], command), page)
    if sub == "add":
        positional, _ = _split_flags(command, rest, {})
        _expect(command, positional, 2, 3, "an app and a server: `/upstream add <app> <ip:port> [weight=N]`")
        weight = 1
        if len(positional) == 3:
            name, eq, value = positional[2].partition("=")
            if name != "weight" or not eq:
                raise UsageError(f"`{positional[2]}`: the only option is `weight=N`.\n{usage(command)}")
            if not value.isdigit() or not 1 <= int(value) <= 1000:
                raise UsageError(
                    f"`weight={value}`: weight is a whole number from 1 to 1000 "
                    "(upsync turns 0 into 1: use /drain to take a server out)."
                )
            weight = int(value)
        return AddRequest(_app_name(positional[0], command), ServerAddress.parse(positional[1]), weight)
    if sub == "remove":
        positional, _ = _split_flags(command, rest, {})
        _expect(command, positional, 2, 2, "an app and a server: `/upstream remove <app> <ip:port>`")
        return RemoveRequest(_app_name(positional[0], command), ServerAddress.parse(positional[1]))
    if sub == "watch":
        positional, _ = _split_flags(command, rest, {})
        _expect(command, positional, 2, 2, "an app and on or off: `/upstream watch <app> on|off`")
        if positional[1].lower() not in ("on", "off"):
            raise UsageError(f"`{positional[1]}`: say `on` or `off`.\n{usage(command)}")
        return WatchRequest(_app_name(positional[0], command), positional[1].lower() == "on")
    if sub in ("ack", "silence"):
        positional, _ = _split_flags(command, rest, {})
        _expect(command, positional, 1, 2, f"an app and maybe a server: `/upstream {sub} <app> [ip:port]`")
        address = ServerAddress.parse(positional[1]) if len(positional) == 2 else None
        return MarkRequest(_app_name(positional[0], command), address, "acknowledge" if sub == "ack" else "silence")
    if sub == "history":
        positional, flags = _split_flags(command, rest, {"--limit": True})
        _expect(command, positional, 1, 2, "an app: `/upstream history <app> [ip:port] [--limit N]`")
        limit = 20
        if "--limit" in flags:
            value = flags["--limit"]
            if not value.isdigit() or not 1 <= int(value) <= 200:
                raise UsageError(f"`--limit {value}`: give a number from 1 to 200.")
            limit = int(value)
        address = ServerAddress.parse(positional[1]) if len(positional) > 1 else None
        return HistoryRequest(_app_name(positional[0], command), address, limit)
    if sub == "alerts":
        positional, _ = _split_flags(command, rest, {})
        _expect(command, positional, 0, 1, "at most an app")
        return AlertsRequest(_app_name(positional[0], command) if positional else None)
    raise UsageError(f"unknown subcommand `{words[0]}` for /upstream.\n{usage(command)}")


def _parse_release(words: list[str]) -> Request:
    command = "/release"
    if words[0] in ("status", "abort", "resume") and len(words) == 1:
        raise UsageError(f"`/release {words[0]}` needs an app: `/release {words[0]} <app>`.\n{usage(command)}")
    if words[0] in ("status", "abort") and len(words) >= 2:
        _expect(command, words[1:], 1, 1, "an app")
        app = _app_name(words[1], command)
        return ReleaseStatusRequest(app) if words[0] == "status" else ReleaseAbortRequest(app)
    if words[0] == "resume" and len(words) >= 2:
        positional, flags = _split_flags(command, words[1:], {"--restore": False, "--leave": False})
        _expect(command, positional, 1, 1, "an app: `/release resume <app> [--restore | --leave]`")
        if "--restore" in flags and "--leave" in flags:
            raise UsageError(
                "`--restore` and `--leave` exclude each other: --restore starts, probes and restores what the "
                "release left drained; --leave closes it as it is."
            )
        mode = "restore" if "--restore" in flags else "leave" if "--leave" in flags else "resume"
        return ReleaseResumeRequest(_app_name(positional[0], command), mode)
    known = {
        "--serial": False,
        "--batch": True,
        "--canary": False,
        "--version": True,
        "--dry-run": False,
        "--force": False,
    }
    positional, flags = _split_flags(command, words, known)
    _expect(command, positional, 1, 1, "an app: `/release <app>`")
    if "--serial" in flags and "--batch" in flags:
        raise UsageError("`--serial` and `--batch` exclude each other: --serial is the same as --batch 1.")
    batch, percent = 1, None
    if "--batch" in flags:
        value = flags["--batch"]
        match = re.fullmatch(r"(\d{1,3})(%?)", value)
        if not match or int(match.group(1)) < 1 or (match.group(2) and int(match.group(1)) > 100):
            raise UsageError(f"`--batch {value}`: give a count (`--batch 2`) or a percentage (`--batch 25%`).")
        if match.group(2):
            percent = int(match.group(1))
        else:
            batch = int(match.group(1))
    version = flags.get("--version")
    # The app's own pattern is checked when the release is planned; these rules hold for every app.
    problem = None if version is None else version_problem(version)
    if problem:
        raise UsageError(f"`--version`: {problem}. Give a version such as `--version 1.4.2`.")
    return ReleaseRequest(
        app=_app_name(positional[0], command),
        batch=batch,
        batch_percent=percent,
        canary="--canary" in flags,
        version=version,
        dry_run="--dry-run" in flags,
        force="--force" in flags,
    )
