"""Events as plain text lines: the terminal front end, `upstream-bot run`, and Slack's fallback text."""

from __future__ import annotations

import time

from commands.events import (
    ChangeApplied,
    ConfirmationNeeded,
    Event,
    Help,
    Notice,
    Problem,
    ServerStatus,
    StatusReport,
)


def when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def server_line(s: ServerStatus) -> str:
    state = "DRAINED" if s.drained else "serving"
    parts = [
        f"{s.address!s:<21}",
        f"{state:<8}",
        f"weight={s.weight} max_fails={s.max_fails} fail_timeout={s.fail_timeout}",
    ]
    if s.nginx_check is not None:
        parts.append(f"nginx check: {s.nginx_check}")
    if s.nginx_listed is not None:
        parts.append(f"nginx list: {s.nginx_listed}")
    if s.probe is not None:
        parts.append(f"probe: {'ok' if s.probe.healthy else 'FAIL'} ({s.probe.detail})")
    if s.invalid_value:
        parts.append(f"value: {s.invalid_value}")
    if s.disagreement:
        parts.append(f"DISAGREEMENT: {s.disagreement}")
    return "  ".join(parts)


def status_lines(report: StatusReport) -> list[str]:
    lines = [report.summary]
    lines += [f"  {server_line(s)}" for s in report.servers]
    lines += [f"  note: {n}" for n in report.notes]
    return lines


def confirmation_lines(event: ConfirmationNeeded) -> list[str]:
    plan = event.plan
    if event.stage >= 2:
        return [f"SECOND CONFIRMATION: {plan.title}", *[f"  ! {w}" for w in plan.warnings]]
    return [f"{plan.title}?", *[f"  {i}" for i in plan.impact], *[f"  ! {w}" for w in plan.warnings]]


def applied_lines(event: ChangeApplied) -> list[str]:
    head = f"{when(event.at)}  {event.actor}: {event.plan.title}"
    return [head, *[f"  {'ok' if r.ok else 'FAILED'}  {r.change.app}: {r.detail}" for r in event.results]]


def event_lines(event: Event) -> list[str]:
    match event:
        case StatusReport():
            return status_lines(event)
        case ConfirmationNeeded():
            return confirmation_lines(event)
        case ChangeApplied():
            return applied_lines(event)
        case Notice(text=text) | Help(text=text):
            return text.replace("`", "").splitlines()
        case Problem(text=text):
            return [f"error: {line}" if i == 0 else line for i, line in enumerate(text.replace("`", "").splitlines())]
    return [repr(event)]
