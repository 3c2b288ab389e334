"""Releases as Block Kit: the plan with Start, the approval request, the progress message, the
decisions a paused release asks for, the abort question, `/release status`.

Versions, addresses, step output, probe details and reasons are outside text: escaped, or in code."""

from __future__ import annotations

import json
import time
from typing import Any

from bot.slack.blocks import MAX_BLOCKS, Blocks, Message, actions, button, code_sections, context, dialog, section
from bot.slack.change_messages import reason_text
from bot.slack.mrkdwn import code, escape, mention, own
from bot.terminal.render import node_line, when
from commands.events import (
    DANGEROUS_OPTIONS,
    AbortRequested,
    DecisionNeeded,
    ReleaseInterrupted,
    ReleaseStatusReport,
    ResumeRequested,
)
from commands.journal import JournalEntry
from commands.release_plan import ReleasePlan
from commands.release_state import Phase, ReleaseState, Status
from commands.resume import still_running_note, where_interrupted


def release_plan_message(plan: ReleasePlan, key: str, stage: int = 1, dry_run: bool = False) -> Message:
    title = escape(plan.title)
    if dry_run:
        head = f"*Dry run, nothing changed:* {title}"
    elif stage >= 2:
        head = f":rotating_light: *Second confirmation (--force):* {title}"
    else:
        head = f"*{title}?*"
    if plan.reason:
        head += f"\n{reason_text(plan.reason)}"
    blocks: Blocks = [section(head), *code_sections(plan.lines())[: MAX_BLOCKS - 2]]
    if not dry_run:
        confirm = None
        if stage >= 2:
            confirm = dialog(
                "Release with no spare server?",
                "Requests fail while the only node is drained.",
                "Release anyway",
                "Keep it",
            )
        label = "Ask for approval" if plan.approval_required else "Start"
        blocks.append(
            actions(
                f"release_{plan.id}_{stage}",
                [
                    button(label, "release_start", key, "danger" if stage >= 2 else "primary", confirm),
                    button("Cancel", "release_cancel", key),
                ],
            )
        )
    return f"{title}: {len(plan.nodes)} node(s)", blocks


def approval_message(plan: ReleasePlan, key: str) -> Message:
    who = " ".join(mention(a) for a in plan.approvers)
    title = escape(plan.title)
    text = (
        f":raised_hand: {who}: {mention(plan.requester)} asks to run *{title}*. "
        "An approver other than them may approve."
    )
    if plan.reason:
        text += f"\n{reason_text(plan.reason)}"
    blocks: Blocks = [
        section(text),
        *code_sections(plan.lines())[: MAX_BLOCKS - 2],  # the buttons stay, however long the plan
        actions(
            f"approval_{plan.id}",
            [button("Approve", "release_approve", key, "primary"), button("Reject", "release_reject", key, "danger")],
        ),
    ]
    return f"{title}: approval requested", blocks


def approval_verdict(plan: ReleasePlan, verdict: str, user: str, reason: str | None = None) -> Message:
    """What replaces the approval request's buttons."""
    text = f"{escape(plan.title)} (asked by {mention(plan.requester)}): {verdict} by {mention(user)}."
    if reason:
        text += f" {reason_text(reason)}"
    return text, [section(text)]


def progress_message(state: ReleaseState, now: float, last_output: dict[str, str]) -> Message:
    icon = {
        Status.SUCCEEDED: ":white_check_mark:",
        Status.FAILED: ":x:",
        Status.ABORTED: ":octagonal_sign:",
        Status.PAUSED: ":double_vertical_bar:",
    }.get(state.status, ":hourglass_flowing_sand:")
    plan = state.plan
    title = escape(plan.title)
    who = f"requested by {mention(plan.requester)}" + (
        f", approved by {mention(state.approver)}" if state.approver else ""
    )
    head = (
        f"{icon} *{title}*: {state.status.value}, {state.released} of {len(state.nodes)} released, "
        f"{state.elapsed(now):.0f} s; {who}"
    )
    if plan.reason:
        head += f"\n{reason_text(plan.reason)}"
    lines = []
    for node in state.nodes.values():
        line = node_line(node)
        if node.phase is Phase.STEP and str(node.address) in last_output:
            line += f"  | {last_output[str(node.address)][:80]}"
        lines.append(line)
    blocks: Blocks = [section(head), *code_sections(lines)]
    if state.message:
        blocks.append(context(own(state.message)))
    return f"{title}: {state.status.value}", blocks[:MAX_BLOCKS]


# The decision buttons. The options come from the event (commands.events.DECISION_OPTIONS), never from
# the kind, so a new option shows up without a change here (as its own name until it gets a label).
DECISION_LABELS: dict[str, str] = {
    "continue": "Continue",
    "abort": "Abort",
    "retry": "Retry node",
    "restore": "Start, probe and restore",
    "restore_unhealthy": "Restore UNHEALTHY node",
    "leave": "Leave drained",
}
DECISION_STYLES: dict[str, str] = {"continue": "primary", "retry": "primary", "abort": "danger"}


def decision_label(option: str) -> str:
    """Plain text (a button's label); escape it for mrkdwn: the option may come from a press's payload."""
    return DECISION_LABELS.get(option, option.replace("_", " ").capitalize())


def decision_message(event: DecisionNeeded, who: str) -> Message:
    """`who`: the people to tell, as mentions (safe mrkdwn)."""
    plan = event.state.plan
    node = code(event.node) if event.node else "the node"
    title = escape(plan.title)
    # The reason quotes a probe's answer or a step's failure: a node's words, not the bot's.
    reason = own(event.reason)

    def value(choice: str) -> str:
        return json.dumps({"app": plan.app, "decision_id": event.decision_id, "decision": choice})

    if event.kind == "canary":
        text = f":bird: {who}: the canary {node} of *{title}* is released and healthy. Continue?"
    elif event.kind == "restore_failed":
        text = (
            f":rotating_light: {who}: *{title}*: {node} was started and probed, and is NOT healthy: "
            f"{reason}\n{node} stays drained; the other servers keep serving; nothing further is touched."
        )
    else:
        text = (
            f":rotating_light: {who}: *{title}* stopped at {node}: {reason}\n"
            f"{node} stays drained; the other servers keep serving; nothing further is touched."
        )
    buttons = []
    for option in event.options:
        style, confirm = DECISION_STYLES.get(option), None
        if option in DANGEROUS_OPTIONS:
            # Slack's own dialog: the explicit second confirmation before the press reaches the bot.
            style = "danger"
            confirm = dialog(
                "Put an unhealthy node back into traffic?",
                f"{event.node} failed its health probe. Restored, it gets requests again, and they may fail.",
                "Restore it",
                "Keep it drained",
            )
        buttons.append(button(decision_label(option), "release_decision", value(option), style, confirm))
    return text.replace("*", ""), [section(text), actions(f"decision_{event.decision_id}", buttons)]


def abort_message(event: AbortRequested) -> Message:
    confirm = dialog(
        "Abort the release?",
        "It stops before the next step; a stopped node is started and probed first.",
        "Abort",
        "Go on",
    )
    # Not ASCII-escaped: a reason of REASON_CHARS emoji must still fit a button's 2000-character value.
    value = json.dumps({"app": event.app, "release_id": event.release_id, "reason": event.reason}, ensure_ascii=False)
    app = escape(event.app)
    return f"Abort the release of {app}?", [
        section(f"Abort the running release of *{app}*?"),
        actions(f"abort_{event.release_id}", [button("Abort release", "release_abort", value, "danger", confirm)]),
    ]


# Resume, Restore and Leave on a release whose bot died: what each does, for its confirm dialog.
RESUME_CHOICES: dict[str, tuple[str, str | None, str]] = {
    "resume": (
        "Resume",
        "primary",
        "The node it had in hand runs again from its stop step, is probed and restored; then the rest follow.",
    ),
    "restore": (
        "Restore",
        None,
        "What it left drained is started, probed, and put back only if healthy. Nothing else is deployed.",
    ),
    "leave": ("Leave", "danger", "The release is closed as it is: what it left drained stays drained."),
}


def resume_buttons(app: str, release_id: str, reason: str | None = None, only: str | None = None) -> dict[str, Any]:
    elements = []
    for mode, (label, style, what) in RESUME_CHOICES.items():
        if only is not None and mode != only:
            continue
        value = json.dumps({"app": app, "release_id": release_id, "mode": mode, "reason": reason}, ensure_ascii=False)
        confirm = dialog(f"{label} the interrupted release?", what, label, "Not now")
        text = label if only is None else f"{label} the release"
        elements.append(button(text, "release_resume", value, style, confirm))
    return actions(f"resume_{release_id}_{only or 'all'}", elements)


def interrupted_message(event: ReleaseInterrupted, who: str) -> Message:
    """For the channel and in place of the release's progress message. The journal was read from Consul:
    shown escaped, never obeyed."""
    entry = event.entry
    app = escape(entry.app)
    drained = [n for n in entry.nodes if n.drained or n.phase not in ("waiting", "released", "not reached")]
    version = f"version {escape(entry.version)}, " if entry.version else ""
    summary = (
        f"*{escape(entry.title)}* ({version}started by {mention(entry.requester)}) was interrupted "
        f"{escape(where_interrupted(entry))}; {entry.done} of {len(entry.nodes)} node(s) done"
        f"{escape(still_running_note(entry, time.time()))}"
    )
    text = (
        f":warning: {who}{summary}. Its bot died; nothing is being done to {app} now. "
        f"`/release resume {app}` (or a button below) takes it up."
    )
    rows = [f"{code(n.address)} {escape(n.label)}" + ", drained" * n.drained for n in entry.nodes[:40]]
    blocks: Blocks = [section(text)]
    if rows:
        blocks.append(section("\n".join(rows)[:2900]))
    if drained:
        blocks.append(context("A node it had in hand may be drained and stopped: `/upstream status` shows it."))
    blocks.append(resume_buttons(entry.app, entry.release_id))
    return text.replace("*", ""), blocks


def resume_confirm_message(event: ResumeRequested) -> Message:
    app = escape(event.app)
    label, _, what = RESUME_CHOICES[event.mode]
    text = f"{escape(event.summary)}.\n*{label}* it? {what}"
    return f"{label} the release of {app}?", [
        section(text),
        resume_buttons(event.app, event.release_id, event.reason, only=event.mode),
    ]


def release_status_message(event: ReleaseStatusReport, now: float) -> Message:
    if event.state is not None:
        return progress_message(event.state, now, {})
    app = escape(event.app)
    if event.journal is not None:
        return journal_message(event.journal, event.lock is not None)
    if event.lock is not None:
        lock = event.lock
        # The lock's value is read from Consul: its holder and requester are shown, never obeyed.
        text = (
            f"A release of {app} is running on {escape(lock.holder)}: started by {mention(lock.requester)} "
            f"at {when(lock.since)} (release {code(lock.release_id)})."
        )
        return text, [section(text)]
    text = f"No release of {app} is running."
    return text, [section(text)]


def journal_message(journal: JournalEntry, locked: bool) -> Message:
    """A release as its journal in Consul tells it (another replica runs it, or it is over). Everything
    in it was read from Consul: shown escaped, never obeyed."""
    title = escape(journal.title)
    if journal.running:
        state = "running" if locked else "*interrupted* (its bot is gone: the lock is free)"
        head = (
            f"{title}, {state}: started by {mention(journal.requester)} at {when(journal.started_at)} "
            f"on {escape(journal.holder)}"
        )
    else:
        head = f"Last release: {title}: *{escape(journal.status)}* at {when(journal.finished_at or 0)}"
    rows = [
        f"{code(n.address)} {escape(n.label)}" + ", drained" * n.drained + ", stopped" * n.stopped
        + ", state unknown" * n.state_unknown + (f": {escape(n.error)}" if n.error else "")
        for n in journal.nodes[:40]
    ]
    more = f"\n… and {len(journal.nodes) - 40} more node(s)" if len(journal.nodes) > 40 else ""
    body = "\n".join(rows)[:2800] + more
    text = f"{head}\n{escape(journal.message)}" if journal.message else head
    blocks: Blocks = [section(text[:2900]), section(body or "no nodes")]
    if journal.running and not locked:  # interrupted: it can be taken up from here too
        blocks.append(resume_buttons(journal.app, journal.release_id))
    return text, blocks


def finished_line(state: ReleaseState) -> str:
    """The release's last word, in the progress message's thread."""
    return f"{escape(state.plan.title)}: {state.status.value}. {own(state.message)}"


def failed_alert(state: ReleaseState, who: str) -> Message:
    """A release that stopped without asking (preflight, a guard, a lost lock): the people concerned."""
    text = f"{who}: {escape(state.plan.title)} failed: {own(state.message)}"
    return text, [section(f":rotating_light: {text}")]
