"""What a release interrupted by its bot's death left, and the state a resume starts from.

The journal is written ahead (commands/journal.py), so a node it shows in hand (between "draining" and
done) may be anywhere from "not drained yet" to "restored": Consul says which. The rules:
- drained in Consul: the node is this release's, drained and possibly stopped. Resume runs its sequence
  again from `stop` (steps must be safe to repeat); Restore starts it, probes it, and restores it only
  when healthy; Leave leaves it drained.
- serving in Consul after its restore was written: it was probed healthy and put back: released (or
  "restored, not released" when that restore was a recovery).
- drained in Consul while the journal says only "draining" (the bot died between its drain and the
  record that follows it, or someone else drained it meanwhile): whose drain it was is unknown, so the
  node is left drained and untouched, and named.
- serving in Consul otherwise (the drain never landed, or a person put it back): it is run from the
  start like a node not reached yet, drain and guards included.
A step the dead bot started may still be running on its node (a remote command outlives its client
until its own timeout): nothing is run on that node before the step's deadline, kept in the journal.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from commands.addresses import ServerAddress
from commands.journal import JournalEntry, JournalNode
from commands.release_plan import ReleasePlan
from commands.release_state import NOT_RELEASED, Phase, ReleaseState, Status
from commands.servers import Upstream


class ResumeMode(enum.Enum):
    RESUME = "resume"  # continue: the interrupted node again from its stop, then the rest
    RESTORE = "restore"  # start, probe and restore what it left drained; the rest stays as it is
    LEAVE = "leave"  # close the release as it is; what it left drained stays drained

    @property
    def verb(self) -> str:
        return {"resume": "resumed", "restore": "restored", "leave": "left as it was"}[self.value]


# Phases in which a node is in the release's hands: drained (or about to be) and not yet released.
_UNTOUCHED = {Phase.WAITING.value, Phase.NOT_REACHED.value}
_OVER = {Phase.DONE.value, Phase.SKIPPED.value, Phase.RESTORED_UNRELEASED.value}
_RESTORE_WRITTEN = {Phase.RESTORING.value, Phase.ROUTE_WAIT.value}


def in_hand(node: JournalNode) -> bool:
    return node.phase not in _UNTOUCHED and node.phase not in _OVER


def where_interrupted(entry: JournalEntry) -> str:
    """ "at 10.0.0.5:9000 during deploy" (the nodes the release had in hand when its bot died)."""
    nodes = [n for n in entry.nodes if in_hand(n)]
    if not nodes:
        return "between nodes"
    during = nodes[0].step if nodes[0].phase == Phase.STEP.value and nodes[0].step else nodes[0].phase
    others = f" (and {', '.join(n.address for n in nodes[1:])})" if len(nodes) > 1 else ""
    return f"at {nodes[0].address}{others} during {during}"


def steps_may_run_until(entry: JournalEntry) -> float | None:
    """When the last step the dead bot started is surely over on its node (None: none was running)."""
    deadlines = [n.step_deadline for n in entry.nodes if n.step_deadline is not None and n.phase == "running"]
    return max(deadlines) if deadlines else None


def interrupted_summary(entry: JournalEntry, now: float) -> str:
    """One line a person reads first: what was interrupted, where, and how far it got."""
    version = f"version {entry.version}, " if entry.version else ""
    return (
        f"{entry.title} ({version}started by {entry.requester}) was interrupted {where_interrupted(entry)}; "
        f"{entry.done} of {len(entry.nodes)} node(s) done{still_running_note(entry, now)}"
    )


def still_running_note(entry: JournalEntry, now: float) -> str:
    until = steps_may_run_until(entry)
    if until is None or until <= now:
        return ""
    at = time.strftime("%H:%M:%S UTC", time.gmtime(until))
    return f" (the step it started may still run on its node until {at}: Resume and Restore wait until then)"


@dataclass(frozen=True)
class ResumePoint:
    """The state a resume (or restore, or leave) starts from, and which nodes it found in hand."""

    state: ReleaseState
    in_hand: tuple[ServerAddress, ...]  # drained in Consul, this release's: run again from stop / restored


def resume_point(entry: JournalEntry, plan: ReleasePlan, upstream: Upstream, mode: ResumeMode) -> ResumePoint:
    state = ReleaseState.new(plan, entry.started_at, entry.approver)
    state.progress = dict(entry.progress) if entry.progress else None
    state.canary_passed = entry.canary_passed
    state.stopping = entry.stopping
    state.status = Status.RUNNING
    hand: list[ServerAddress] = []
    for journal_node in entry.nodes:
        address = ServerAddress.parse(journal_node.address)
        node = state.nodes.get(address)
        if node is None:
            continue
        node.phase = Phase(journal_node.phase) if journal_node.phase in _OVER else Phase.WAITING
        node.error = journal_node.error if journal_node.phase in _OVER else None
        if not in_hand(journal_node):
            continue
        entry_now = upstream.find(address)
        if entry_now is not None and entry_now.drained and journal_node.phase == Phase.DRAINING.value:
            node.phase, node.owner_unknown = Phase.SKIPPED, True
            node.error = (
                "drained, but by this release (its bot died as it drained it) or by someone else is unknown: "
                "left drained, not touched"
            )
        elif entry_now is not None and entry_now.drained:
            node.drained = True
            # The stop step may have run even if the journal says otherwise (it is written before each
            # step): starting a running node again is harmless, leaving a stopped one drained is not.
            node.stopped = journal_node.stopped or journal_node.phase in (Phase.STEP.value, Phase.FAILED.value)
            node.phase = Phase.LEFT_DRAINED
            node.error = "interrupted: its bot died"
            hand.append(address)
        elif entry_now is not None and journal_node.phase in _RESTORE_WRITTEN:
            # Probed healthy and put back before the bot died: released, unless that was a recovery.
            node.phase = Phase.RESTORED_UNRELEASED if journal_node.step == NOT_RELEASED else Phase.DONE
        # else: serving (its drain never landed, or a person put it back): run like a node not reached.
    return ResumePoint(state, tuple(hand))
