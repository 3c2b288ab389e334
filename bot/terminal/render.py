"""Events as plain text lines: the terminal front end, `upstream-bot run`, and Slack's fallback text."""

from __future__ import annotations

import re
import time

from commands.events import (
    DANGEROUS_OPTIONS,
    AbortRequested,
    AlertsReport,
    Announcement,
    ApprovalRequested,
    ChangeApplied,
    ConfirmationNeeded,
    DecisionNeeded,
    Event,
    Help,
    HistoryReport,
    Notice,
    Problem,
    ReleaseDryRun,
    ReleaseFinished,
    ReleaseInterrupted,
    ReleasePlanned,
    ReleaseStatusReport,
    ReleaseUpdate,
    ResumeRequested,
    ServerStatus,
    StatusReport,
    StepOutput,
    WatchOffRequested,
)
from commands.history import HistoryEntry
from commands.journal import JournalEntry
from commands.release_state import NodeState, Phase, ReleaseState
from commands.watch import Incident, WatchEvent


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
        if s.probe.version is not None:
            parts.append(f"version: {s.probe.version}")
    if s.invalid_value:
        parts.append(f"value: {s.invalid_value}")
    if s.disagreement:
        parts.append(f"DISAGREEMENT: {s.disagreement}")
    if s.drained_note:
        parts.append(f"({s.drained_note})")
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


def node_line(node: NodeState) -> str:
    mark = {
        Phase.DONE: "ok",
        Phase.FAILED: "FAILED",
        Phase.LEFT_DRAINED: "drained",
        Phase.RESTORED_UNRELEASED: "restored",
        Phase.WAITING: "-",
    }.get(node.phase, "..")
    steps = " ".join(f"{step} {seconds:.1f}s" for step, seconds in node.durations.items())
    line = f"{mark:<8} {node.address!s:<21} {node.label}"
    if steps:
        line += f"  ({steps})"
    if node.error:
        line += f"  {node.error}"
    return line


def release_header(state: ReleaseState, now: float) -> str:
    plan = state.plan
    who = f"requested by {plan.requester}" + (f", approved by {state.approver}" if state.approver else "")
    return (
        f"{plan.title}: {state.status.value}, {state.released} of {len(state.nodes)} released, "
        f"{state.elapsed(now):.0f} s; {who}"
    )


def release_summary(state: ReleaseState, now: float, message: bool = True) -> list[str]:
    """`message=False` at the end of a release: its last progress line just said it."""
    return [
        release_header(state, now),
        *[f"  {node_line(n)}" for n in state.nodes.values()],
        *([f"  {state.message}"] if state.message and message else []),
    ]


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def incident_line(incident: Incident, now: float) -> str:
    since = f"since {when(incident.failing_since)} ({duration(now - incident.failing_since)})"
    state = f"; acknowledged by {incident.acknowledged_by}" if incident.acknowledged_by else ""
    if incident.address is None:  # the app itself: the watch cannot see it
        error = incident.last_error
        return f"the watch cannot see {incident.app}: {incident.reason} {since}; last error: {error}{state}"
    consul = "Consul lists it serving" if incident.consul_serving else "Consul has it drained"
    check = f"; nginx check: {incident.nginx_check}" if incident.nginx_check else ""
    return (
        f"{incident.address} of {incident.app} {incident.reason} {since}; "
        f"last error: {incident.last_error}{check}; {consul}{state}"
    )


def resolved_line(incident: Incident, now: float) -> str:
    took = duration((incident.resolved_at or now) - incident.failing_since)
    if incident.address is None:
        return f"the watch sees {incident.app} again after {took} ({incident.resolution})"
    return f"{incident.address} of {incident.app}: {incident.resolution} after {took}"


def watch_lines(event: WatchEvent, now: float) -> list[str]:
    incident, many = event.incident, event.incidents
    blind = incident is not None and incident.address is None
    if event.kind == "alert" and incident is not None:
        return [f"ALERT: {incident_line(incident, now)}"]
    if event.kind == "blind" and incident is not None:
        return [f"BLIND: {incident_line(incident, now)}"]
    if event.kind == "reminder" and incident is not None:
        return [f"{'STILL BLIND' if blind else 'STILL FAILING'}: {incident_line(incident, now)}"]
    if event.kind == "recovered" and incident is not None:
        return [f"RESOLVED: {resolved_line(incident, now)}"]
    if event.kind in ("group_alert", "group_reminder"):
        head = "ALERT" if event.kind == "group_alert" else "STILL FAILING"
        return [f"{head}: {len(many)} nodes of {event.app} failing", *[f"  {incident_line(i, now)}" for i in many]]
    if event.kind == "group_recovered":
        return [f"RESOLVED: {len(many)} nodes of {event.app}", *[f"  {resolved_line(i, now)}" for i in many]]
    if event.kind == "drained_reminder":
        by = f" by {event.by}" if event.by else ""
        return [f"REMINDER: {event.address} of {event.app} is still drained since {when(event.since or now)}{by}"]
    return [repr(event)]


# What each decision option does, so the terminal can offer them without the reader guessing.
OPTION_TEXT = {
    "continue": "release the other nodes",
    "abort": "stop here; the canary stays released",
    "retry": "run this node's steps again",
    "restore": "start it if it was stopped, probe it, and put it back only when healthy",
    "restore_unhealthy": "put it back into traffic although its probe failed",
    "leave": "leave it drained; nothing else is touched",
}
DECISION_HEADS = {"canary": "Canary done", "failure": "failed", "restore_failed": "could not be restored"}


def option_label(option: str) -> str:
    text = OPTION_TEXT.get(option, "")
    if option in DANGEROUS_OPTIONS:
        text += " (DANGEROUS: asks again)"
    return text


def decision_lines(event: DecisionNeeded) -> list[str]:
    if event.kind == "canary":
        head = f"Canary done: {event.reason}"
    else:
        head = f"{event.node} {DECISION_HEADS.get(event.kind, 'failed')}: {event.reason}"
    return [head, "  options:", *[f"    {o:<18} {option_label(o)}".rstrip() for o in event.options]]


def history_line(entry: HistoryEntry) -> str:
    parts = [entry.at, entry.who, f"({entry.where})", entry.what]
    if entry.target:
        parts.append(entry.target)
    if entry.before is not None or entry.after is not None:
        before = "-" if entry.before is None else f"down={entry.before.get('down', '?')}"
        after = "-" if entry.after is None else f"down={entry.after.get('down', '?')}"
        parts.append(f"{before} -> {after}")
    if entry.force:
        parts.append("--force")
    if entry.reason:
        parts.append(f'reason "{entry.reason}"')
    if entry.outcome:
        parts.append(f": {entry.outcome}")
    return " ".join(parts)


def journal_lines(journal: JournalEntry, locked: bool) -> list[str]:
    """A release as its journal in Consul tells it (run by another bot, or over)."""
    if journal.running:
        state = "running" if locked else "INTERRUPTED (its bot is gone: the lock is free)"
        started = f"started by {journal.requester} at {when(journal.started_at)} on {journal.holder}"
        head = f"{journal.title}, {state}: {started}"
    else:
        head = f"Last release: {journal.title}: {journal.status} at {when(journal.finished_at or 0)}"
    lines = [head, f"  {journal.message}"] if journal.message else [head]
    for node in journal.nodes:
        flags = ", drained" * node.drained + ", stopped" * node.stopped + ", state unknown" * node.state_unknown
        lines.append(f"  {node.address:<21} {node.label}{flags}{f': {node.error}' if node.error else ''}")
    if journal.running and not locked:
        lines.append(RESUME_HINT.format(app=journal.app))
    return lines


RESUME_HINT = (
    "  /release resume {app}   (or --restore: start, probe and restore what it left drained; "
    "--leave: close it as it is)"
)
RESUME_QUESTIONS = {
    "resume": "Resume it? The node it had in hand runs again from its stop step, is probed and restored; "
    "then the rest follow.",
    "restore": "Restore what it left drained? Started, probed, and put back only if healthy; nothing is deployed.",
    "leave": "Close it as it is? What it left drained stays drained.",
}


# The mentions commands/ writes for Slack (`<@U1>`, `<!subteam^S1>`, `<#C1>`): plain in a terminal.
_MENTION = re.compile(r"<(?:@|!subteam\^|#)([^<>|\s]+)>")


def plain(line: str) -> str:
    """A line without Slack's mention syntax: `<@U1ALICE>` is `@U1ALICE`."""
    return _MENTION.sub(lambda m: f"{'#' if m.group(0).startswith('<#') else '@'}{m.group(1)}", line)


def event_lines(event: Event) -> list[str]:
    return [plain(line) for line in _event_lines(event)]


def _event_lines(event: Event) -> list[str]:
    match event:
        case WatchEvent():
            return watch_lines(event, time.time())
        case AlertsReport(incidents=incidents, watching=watching, paused=paused):
            head = f"{len(incidents)} open incident(s); watching: {', '.join(watching) or 'none'}"
            if paused:
                head += f"; paused: {', '.join(paused)}"
            return [head, *[f"  {incident_line(i, time.time())}" for i in incidents]]
        case ReleasePlanned(plan=plan, stage=stage):
            head = f"SECOND CONFIRMATION (--force): {plan.title}" if stage >= 2 else f"{plan.title}?"
            return [head, *[f"  {line}" for line in plan.lines()]]
        case ReleaseDryRun(plan=plan):
            return [f"Dry run, nothing changed: {plan.title}", *[f"  {line}" for line in plan.lines()]]
        case ApprovalRequested(plan=plan):
            return [f"{plan.title} needs approval by {', '.join(plan.approvers)} (not the requester)."]
        case ReleaseUpdate(line=line, thread=thread):
            return [f"{time.strftime('%H:%M:%S')}  {line}", *[f"    {t}" for t in (thread or "").splitlines()]]
        case StepOutput(output=out):
            return [f"    {out.node} {out.step} | {out.line}"]
        case DecisionNeeded():
            return decision_lines(event)
        case ReleaseFinished(state=state):
            return release_summary(state, time.time(), message=False)
        case ReleaseStatusReport(app=app, state=state, lock=lock, journal=journal):
            if state is not None:
                return release_summary(state, time.time())
            if journal is not None:
                return journal_lines(journal, lock is not None)
            if lock is not None:
                return [
                    f"A release of {app} is running on {lock.holder}: started by {lock.requester} at "
                    f"{when(lock.since)} (release {lock.release_id})."
                ]
            return [f"No release of {app} is running."]
        case AbortRequested(app=app):
            return [f"Abort the running release of {app}? It stops before the next step."]
        case ResumeRequested(mode=mode, summary=summary):
            return [f"{summary}.", f"{RESUME_QUESTIONS[mode]}"]
        case ReleaseInterrupted(entry=entry, summary=summary):
            return [
                f"{when(time.time())}  {summary}. Its bot died; nothing is being done to {entry.app} now.",
                *journal_lines(entry, False)[1:],
            ]
        case StatusReport():
            return status_lines(event)
        case ConfirmationNeeded():
            return confirmation_lines(event)
        case ChangeApplied():
            return applied_lines(event)
        case Notice(text=text) | Help(text=text):
            return text.replace("`", "").splitlines()
        case Announcement(text=text):
            return [f"{when(time.time())}  {text}"]
        case WatchOffRequested(app=app, reason=reason):
            why = f" ({reason})" if reason else ""
            return [f"Turn the health watch of {app} OFF{why}? No alert is sent for it until it is on again."]
        case HistoryReport(app=app, target=target, entries=entries):
            head = f"History of {app}{f' {target}' if target else ''}, newest first ({len(entries)}):"
            return [head, *[f"  {history_line(e)}" for e in entries]] if entries else [f"{head} nothing recorded."]
        case Problem(text=text):
            return [f"error: {line}" if i == 0 else line for i, line in enumerate(text.replace("`", "").splitlines())]
    return [repr(event)]
