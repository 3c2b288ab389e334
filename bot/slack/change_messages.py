"""Changes as Block Kit: the question before a drain, undrain, add or remove (and turning the watch
off), and the result posted to the channel. Who asked and why are shown; every value is escaped."""

from __future__ import annotations

from bot.slack.blocks import Blocks, Message, actions, button, context, dialog, section
from bot.slack.mrkdwn import escape, mention, own
from bot.terminal.render import when
from commands.events import ChangeApplied, ConfirmationNeeded, WatchOffRequested


def reason_text(reason: str | None) -> str:
    """`Reason: ...` for a mrkdwn line ("" when none was given)."""
    return f"Reason: _{escape(reason)}_" if reason else ""


def confirmation_message(event: ConfirmationNeeded, key: str) -> Message:
    plan = event.plan
    title = escape(plan.title)
    if event.stage >= 2:
        head = f":rotating_light: *Second confirmation:* {title}"
        confirm_label, style = "Yes, take it ALL out of traffic", "danger"
    else:
        head = f"*{title}?*"
        confirm_label, style = {
            "drain": ("Drain", "danger"),
            "remove": ("Remove", "danger"),
            "add": ("Add", "primary"),
            "undrain": ("Undrain", "primary"),
        }[plan.action]
    details = [*(f"• {escape(i)}" for i in plan.impact), *(f":warning: {own(w)}" for w in plan.warnings)]
    if plan.reason:
        details.append(reason_text(plan.reason))
    blocks: Blocks = [
        section("\n".join([head, *details])),
        context(f"Asked by {mention(plan.requester)}. Only an operator of the app can confirm."),
    ]
    slack_confirm = None
    if event.stage >= 2:
        slack_confirm = dialog("Really?", f"{plan.title}: every request to it will fail.", "Take it out", "Keep it")
    blocks.append(
        actions(
            f"confirm_{plan.id}_{event.stage}",
            [button(confirm_label, "confirm", key, style, slack_confirm), button("Cancel", "cancel", key)],
        )
    )
    return f"{title}? {escape('; '.join(plan.impact))}", blocks


def watch_off_message(event: WatchOffRequested, key: str) -> Message:
    app = escape(event.app)
    lines = [f"*Turn the health watch of {app} OFF?*", f"No alert is sent for {app} until it is turned on again."]
    if event.reason:
        lines.append(reason_text(event.reason))
    return f"Turn the health watch of {app} OFF?", [
        section("\n".join(lines)),
        context(f"Asked by {mention(event.requester)}. The channel is told who turned it off."),
        actions(
            f"watch_off_{key}",
            [button("Turn it off", "confirm", key, "danger"), button("Cancel", "cancel", key)],
        ),
    ]


def applied_message(event: ChangeApplied) -> Message:
    icon = ":white_check_mark:" if event.ok else ":x:"
    plan = event.plan
    title = escape(plan.title)
    asked = f" (asked by {mention(plan.requester)})" if plan.requester != event.actor else ""
    lines = [f"{icon} *{title}* by {mention(event.actor)}{asked}"]
    for result in event.results:
        lines.append(f"{'•' if result.ok else ':x:'} {escape(result.change.app)}: {own(result.detail)}")
    if plan.reason:
        lines.append(reason_text(plan.reason))
    stamp = f"<!date^{int(event.at)}^{{date_short_pretty}} {{time_secs}}|{when(event.at)}>"
    text = f"{title} by {mention(event.actor)}: " + "; ".join(own(r.detail) for r in event.results)
    return text, [section("\n".join(lines)), context(stamp)]


def verdict_message(what: str, verdict: str, user: str) -> Message:
    """What replaces a question's buttons once pressed, so it cannot be pressed again."""
    text = f"{escape(what)}: {escape(verdict)} by {mention(user)}."
    return text, [section(text)]
