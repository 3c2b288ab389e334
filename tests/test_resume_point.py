"""Where a resume starts, from the journal a dead bot left and what Consul holds now: one case per point
of a node's sequence the bot may have died at (commands/resume.py)."""

from __future__ import annotations

import dataclasses

import pytest

from commands.journal import JournalEntry, JournalNode
from commands.release_plan import plan_release
from commands.release_state import NOT_RELEASED, Phase
from commands.requests import ReleaseRequest
from commands.resume import ResumeMode, resume_point, steps_may_run_until
from tests.fakes import FakeNginx, FakeStore
from tests.test_release_engine import NODES, app_settings


async def point_for(node: JournalNode, drained_now: bool) -> tuple[Phase, bool, bool, str | None]:
    """The first node's phase, drained, stopped and error in the state a resume starts from."""
    planned = FakeStore("app", NODES)  # every node serving when the release was planned
    request = ReleaseRequest("app", version="2")
    nginx = await FakeNginx(planned).read("app")
    plan = plan_release(app_settings(), request, "U1ALICE", await planned.read("app"), {}, nginx)
    upstream = await FakeStore("app", NODES, drained=[NODES[0]] if drained_now else []).read("app")  # now
    nodes = (node, *(JournalNode(a, "waiting", False, False) for a in NODES[1:]))
    entry = JournalEntry(
        "app", plan.id, plan.title, "running", "", "U1ALICE", None, "2", 0.0, None, "host:1", nodes, {}
    )
    point = resume_point(entry, plan, upstream, ResumeMode.RESUME)
    first = next(n for a, n in point.state.nodes.items() if str(a) == NODES[0])
    assert (str(first.address) in map(str, point.in_hand)) == first.drained
    return first.phase, first.drained, first.stopped, first.error


@pytest.mark.parametrize(
    ("journal", "drained_now", "expected"),
    [
        # The drain was written ahead and never landed: run like a node not reached.
        (JournalNode(NODES[0], "draining", False, False), False, (Phase.WAITING, False, False)),
        # Drained, but the record after the drain never came: its or someone else's? Left alone.
        (JournalNode(NODES[0], "draining", False, False), True, (Phase.SKIPPED, False, False)),
        # Drained and waiting for nginx: this release's, not stopped yet.
        (JournalNode(NODES[0], "waiting for traffic to leave", True, False), True, (Phase.LEFT_DRAINED, True, False)),
        # In a step: this release's, and maybe stopped (started again by a restore).
        (JournalNode(NODES[0], "running", True, True, step="deploy"), True, (Phase.LEFT_DRAINED, True, True)),
        # Probing after its start: running.
        (JournalNode(NODES[0], "probing", True, False), True, (Phase.LEFT_DRAINED, True, False)),
        # Its restore landed: released.
        (JournalNode(NODES[0], "restoring", True, False), False, (Phase.DONE, False, False)),
        # A recovery's restore landed: back in traffic, not released.
        (
            JournalNode(NODES[0], "restoring", True, False, step=NOT_RELEASED),
            False,
            (Phase.RESTORED_UNRELEASED, False, False),
        ),
        # Its restore was written ahead and did not land: run again from its stop.
        (JournalNode(NODES[0], "restoring", True, False), True, (Phase.LEFT_DRAINED, True, False)),
        # In a step, but someone put it back into traffic since: run from the start (drain, guards).
        (JournalNode(NODES[0], "running", True, True, step="deploy"), False, (Phase.WAITING, False, False)),
    ],
    ids=[
        "drain-not-landed",
        "drain-unconfirmed",
        "drain-wait",
        "in-a-step",
        "probing",
        "restored",
        "recovered",
        "restore-not-landed",
        "put-back-by-someone",
    ],
)
async def test_each_crash_point_resumes_from_what_consul_holds(
    journal: JournalNode, drained_now: bool, expected: tuple[Phase, bool, bool]
) -> None:
    phase, drained, stopped, error = await point_for(journal, drained_now)
    assert (phase, drained, stopped) == expected
    if phase is Phase.SKIPPED:
        assert error is not None and "left drained, not touched" in error


def test_a_step_that_was_running_keeps_a_resume_off_its_node_until_its_deadline() -> None:
    running = JournalNode(NODES[0], "running", True, True, step="deploy", step_deadline=1_000.0)
    over = dataclasses.replace(running, phase="probing")  # a deadline left over from a step that ended
    entry = JournalEntry("app", "r", "t", "running", "", "U1ALICE", None, None, 0.0, None, "h:1", (running,), {})
    assert steps_may_run_until(entry) == 1_000.0
    assert steps_may_run_until(dataclasses.replace(entry, nodes=(over,))) is None
