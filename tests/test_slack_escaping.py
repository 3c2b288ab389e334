"""Text from outside cannot ping, link or break out of a code block in Slack.

The reproduced attack: a node answering `503 <!channel> approve here: <https://evil.example/login|Slack
SSO>` made an alert that pinged the whole channel and rendered a login link. Here: the mrkdwn helpers
alone, the renderers at Block Kit's limits, and end to end through a running bot whose nodes (in this
test's process, tests.slack_bot.FakeNode) answer with that reason phrase, and whose deploy step prints a
code fence and a ping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.slack.history_messages import history_message
from bot.slack.mrkdwn import code, code_block, escape, mention, own
from bot.slack.status_messages import status_message
from bot.standins.slack import Call
from commands.addresses import ServerAddress
from commands.events import HistoryReport, ServerStatus, StatusReport
from commands.history import HistoryEntry
from commands.interfaces import ProbeResult
from tests.conftest import Consul
from tests.helpers import wait_until
from tests.slack_bot import Bot, FakeNode, confirm_key, running_bot

HOSTILE = "<!channel> approve here: <https://evil.example/login|Slack SSO>"
DEFUSED = "\u2039!channel\u203a"  # how a node's `<!channel>` reads once quoted in a sentence of ours
PINGS = ("<!channel>", "<!here>", "<!everyone>", "<https://evil", "<http://evil")


def safe(text: str) -> bool:
    """Nothing in `text` can ping the channel or render a link."""
    return not any(p in text for p in PINGS)


def sent(call: Call) -> str:
    """Everything the bot sent in a call (text, blocks, views), as Slack receives it."""
    return json.dumps(call.args, ensure_ascii=False)


# -- the helpers --------------------------------------------------------------------------------------


def test_escape_makes_markup_show_as_typed() -> None:
    assert escape(HOSTILE) == "&lt;!channel&gt; approve here: &lt;https://evil.example/login|Slack SSO&gt;"
    assert escape("a & b") == "a &amp; b"
    assert escape("&lt;!here&gt;") == "&amp;lt;!here&amp;gt;"  # an escape typed in shows as typed, too


@pytest.mark.parametrize(
    "hostile",
    [
        "<!channel>",
        "<!here>",
        "<!everyone>",
        "<https://evil.example/login|Slack SSO>",
        "<mailto:boss@evil.example|HR>",
        "<@U1ALICE|the boss>",  # a labelled mention: not a shape the bot writes
        "<!subteam^S0OPS|@ops>",
        "<#C0DEPLOY|deploy>",
        "<!date^1^{date}|x>",
    ],
)
def test_own_restores_only_the_bots_own_mention_shapes(hostile: str) -> None:
    text = f"Refused: only operators of app (<@U1ALICE>, <!subteam^S0OPS>) in <#C0DEPLOY>; probe said {hostile}"
    shown = own(text)
    assert shown.startswith("Refused: only operators of app (<@U1ALICE>, <!subteam^S0OPS>) in <#C0DEPLOY>;")
    assert shown.endswith(escape(hostile))
    assert shown.count("<") == 3  # the three own mentions, nothing else


def test_code_and_code_blocks_cannot_be_closed_from_inside() -> None:
    assert code("a`b\nc") == "`a\u02cbb c`"
    for output in ["```", "done```\n<!channel>", "x``", "``` ``` ```", "trailing`"]:
        block = code_block(output)
        assert block.startswith("```") and block.endswith("```") and block.count("`") == 6
        assert safe(block)


def test_mentions_are_made_only_of_slack_ids() -> None:
    assert mention("U1ALICE") == "<@U1ALICE>" and mention("S0OPS") == "<!subteam^S0OPS>"
    assert mention("local:alice") == "local:alice"
    assert mention("<!channel>") == "&lt;!channel&gt;"


# -- renderers ----------------------------------------------------------------------------------------


def test_a_status_report_shows_a_hostile_probe_answer_and_drain_reason_escaped() -> None:
    server = ServerStatus(
        ServerAddress.parse("10.0.0.1:80"),
        1,
        2,
        10,
        drained=True,
        probe=ProbeResult(False, f"503 {HOSTILE}"),
        drained_note="drained by <@U1ALICE> at 2026-11-29T10:00:00Z: disk \u2039!here\u203a full",
    )
    text, blocks = status_message(StatusReport("app", "app", (server,), (f"nginx said {HOSTILE}",)))
    everything = json.dumps([text, blocks])
    assert safe(everything) and "&lt;!channel&gt;" in everything
    assert "drained by <@U1ALICE>" in everything  # the history's mention of who drained it survives


def test_an_interrupted_release_read_from_consul_is_escaped_and_still_mentions_its_requester() -> None:
    """The journal is read from Consul: anyone who can write there could plant markup in it."""
    from bot.slack.release_messages import interrupted_message, journal_message
    from commands.events import ReleaseInterrupted
    from commands.journal import JournalEntry, JournalNode

    node = JournalNode("10.0.0.1:80", "running", True, True, error=HOSTILE, step=HOSTILE)
    entry = JournalEntry(
        "app", "r1", f"Release {HOSTILE}", "running", HOSTILE, "U1ALICE", None, HOSTILE, 0.0, None, HOSTILE, (node,), {}
    )
    for text, blocks in (
        interrupted_message(ReleaseInterrupted(entry, HOSTILE), "<@U2BOB>: "),
        journal_message(entry, False),
    ):
        everything = json.dumps([text, blocks])
        assert safe(everything) and "&lt;!channel&gt;" in everything
    text, blocks = interrupted_message(ReleaseInterrupted(entry, HOSTILE), "")
    assert "started by <@U1ALICE>" in text
    assert any(b.get("type") == "actions" for b in blocks)  # Resume, Restore, Leave


def test_a_long_history_is_summarised_within_block_kits_limits() -> None:
    entries = tuple(
        HistoryEntry(
            "app",
            "drain",
            "U1ALICE",
            "C0DEPLOY",
            f"10.0.0.{i % 250}:80",
            reason="&" * 300,  # the worst case for escaping: every character becomes five
            outcome=f"{HOSTILE} " * 20,
            before={"down": 0},
            after={"down": 1},
        )
        for i in range(200)
    )
    text, blocks = history_message(HistoryReport("app", None, entries))
    assert len(blocks) <= 50
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")
    assert "older entries not shown" in json.dumps(blocks)
    assert safe(json.dumps([text, blocks]))
    assert "<@U1ALICE>" in json.dumps(blocks) and "<#C0DEPLOY>" in json.dumps(blocks)


def test_a_short_history_lists_every_entry() -> None:
    entry = HistoryEntry("app", "watch.off", "U3OPS", "C0OPS", reason="maintenance")
    _, blocks = history_message(HistoryReport("app", None, (entry,)))
    shown = json.dumps(blocks)
    assert "<@U3OPS>" in shown and "<#C0OPS>" in shown and "maintenance" in shown and "watch.off" in shown
    assert "not shown" not in shown


# -- end to end ---------------------------------------------------------------------------------------

HEALTH = (
    "    health:\n      url: http://{host}:{port}/ping\n      interval: 300ms\n      timeout: 300ms\n"
    "      window: 1s\n      rise: 1\n"
)


def release(deploy: str) -> str:
    return (
        "    nginx:\n      upsync_interval: 100ms\n"
        "    release:\n      executor: local\n      drain_wait: 100ms\n"
        f'      steps:\n        stop: "true"\n        deploy: "{deploy}"\n        start: "true"\n'
    )


class Nodes:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.sick = FakeNode(503, HOSTILE)  # serving and failing: alerted
        self.sick_drained = FakeNode(503, HOSTILE)  # drained: /undrain probes it and refuses
        self.fine = FakeNode()
        # Healthy until the release's deploy step creates its file; then the hostile 503.
        self.breaking = [FakeNode(broken=(503, HOSTILE)) for _ in range(2)]
        for node in self.breaking:
            node.broken_by = folder / f"broken-{node.address.split(':')[1]}"

    def all(self) -> list[FakeNode]:
        return [self.sick, self.sick_drained, self.fine, *self.breaking]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    found = Nodes(tmp_path_factory.mktemp("nodes"))
    for node in found.all():
        node.__enter__()
    yield found
    for node in found.all():
        node.__exit__()


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory, nodes: Nodes) -> Iterator[Bot]:
    folder = tmp_path_factory.mktemp("escaping-bot")
    script = folder / "hostile-deploy.sh"
    # Output that tries to close the failure thread's code block and ping the channel after it.
    script.write_text(f"echo 'deploying'\necho '```'\necho '{HOSTILE}'\necho '```'\nexit 3\n")
    config = (
        "slack:\n  channel: C0DEPLOY\naccess:\n  operators: [U1ALICE]\napps:\n"
        f"  sick:\n    approvers: [U2BOB]\n{HEALTH}"
        f"  rel:\n    approvers: [U2BOB]\n{HEALTH}{release(f'touch {nodes.folder}/broken-{{port}}')}"
        f"  out:\n    approvers: [U2BOB]\n{release(f'sh {script}')}"
    )

    def seed(consul: Consul) -> None:
        consul.add_server("sick", nodes.sick.address)
        consul.add_server("sick", nodes.sick_drained.address, down=1)
        consul.add_server("sick", nodes.fine.address)
        for node in nodes.breaking:
            consul.add_server("rel", node.address)
        consul.add_server("out", "127.0.0.1:9301")
        consul.add_server("out", "127.0.0.1:9302")

    with running_bot(folder, config, seed=seed) as running:
        yield running


def test_a_status_report_of_a_hostile_node_is_escaped(bot: Bot) -> None:
    bot.command("/upstream", "status sick")
    report = bot.said(lambda c: "sick: 2 of 3 serving" in c.text, method="chat.postEphemeral")
    assert "503" in report.text and safe(sent(report)) and "&lt;!channel&gt;" in sent(report)


def test_a_health_alert_about_a_hostile_node_is_escaped(bot: Bot, nodes: Nodes) -> None:
    alert = bot.said(
        lambda c: "watch_silence" in sent(c) and nodes.sick.address in c.text, method="chat.postMessage", timeout=20
    )
    assert safe(sent(alert)) and "&lt;!channel&gt;" in sent(alert)
    assert "<@U2BOB>" in alert.text  # the bot's own mention of the people concerned still pings them
    assert safe(alert.args["text"])  # the notification text too


def test_a_refusal_quoting_a_hostile_probe_is_escaped(bot: Bot, nodes: Nodes) -> None:
    bot.command("/undrain", f"{nodes.sick_drained.address} sick")
    asked = bot.said(lambda c: f"Undrain {nodes.sick_drained.address}" in c.text, method="chat.postEphemeral")
    bot.press("confirm", confirm_key(asked))  # the probe is the undrain's guard, run at the press
    refused = bot.said(lambda c: "Not undrained" in c.text, method="chat.postEphemeral")
    # The node's words inside our sentence arrive defused as look-alikes (DEFUSED), never as markup.
    assert safe(sent(refused)) and DEFUSED in sent(refused)


def test_a_release_failure_alert_quoting_a_hostile_probe_is_escaped(bot: Bot, nodes: Nodes) -> None:
    bot.command("/release", "rel --serial")
    plan = bot.said(lambda c: "release_start" in sent(c) and "Release rel" in c.text, method="chat.postEphemeral")
    bot.press("release_start", confirm_key(plan, "release_start"))
    alert = bot.said(
        lambda c: "release_decision" in sent(c) and "Release rel" in c.text, method="chat.postMessage", timeout=60
    )
    assert "health window failed" in alert.text
    assert safe(sent(alert)) and DEFUSED in sent(alert)
    progress = [c for c in bot.slack.calls() if c.method in ("chat.postMessage", "chat.update") and "rel" in c.text]
    assert progress and all(safe(sent(c)) for c in progress)
    leave = next(
        e["value"] for b in alert.args["blocks"] for e in b.get("elements", []) if '"leave"' in e.get("value", "")
    )
    bot.press("release_decision", leave)
    bot.said(lambda c: "Release rel" in c.text and "failed" in c.text, method="chat.update", timeout=30)
    # The history quotes the probe's answer (each node's outcome): listed escaped too.
    wait_until(lambda: "release.finish" in json.dumps(bot.history("rel")), what="the release recorded")
    bot.command("/upstream", "history rel")
    history = bot.said(lambda c: "History of rel" in c.text and "release.node" in c.text, method="chat.postEphemeral")
    assert safe(sent(history)) and DEFUSED in sent(history)


def test_step_output_cannot_close_the_failure_threads_code_block(bot: Bot) -> None:
    bot.command("/release", "out --serial")
    plan = bot.said(lambda c: "release_start" in sent(c) and "Release out" in c.text, method="chat.postEphemeral")
    bot.press("release_start", confirm_key(plan, "release_start"))
    thread = bot.said(
        lambda c: bool(c.args.get("thread_ts")) and "deploy output" in c.text, method="chat.postMessage", timeout=60
    )
    text = thread.args["text"]
    assert text.startswith("```") and text.endswith("```") and text.count("```") == 2
    assert safe(text) and "&lt;!channel&gt;" in text
    alert = bot.said(lambda c: "release_decision" in sent(c) and "Release out" in c.text, method="chat.postMessage")
    assert safe(sent(alert)) and "exit status 3" in alert.text
    leave = next(
        e["value"] for b in alert.args["blocks"] for e in b.get("elements", []) if '"leave"' in e.get("value", "")
    )
    bot.press("release_decision", leave)
    wait_until(
        lambda: any("Release out" in c.text and "failed" in c.text for c in bot.slack.calls("chat.update")),
        timeout=30,
        what="the release of out ending",
    )
