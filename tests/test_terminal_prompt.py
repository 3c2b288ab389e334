"""The demo's prompt on a terminal (bot/terminal/interactive.py, prompt.py).

First in process, with a scripted person at the prompt: who gets which line while a release runs in the
background (a question and a typed command never take each other's line), Ctrl-C and leaving. Then
`upstream-bot demo` itself on a real pseudo-terminal, read through a small VT100 screen: line editing,
history, Ctrl-L, a 5,000-character line, output drawn above the prompt, a release in the background
answering `/release status app` before it ends, and the terminal closed under a running release."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.processes import port_free
from bot.terminal.frontend import CANCEL_GRACE, PROMPT_FORM
from bot.terminal.interactive import COMMAND_PROMPT, HANG_UP_WAIT, InteractiveFrontEnd
from bot.terminal.prompt import CtrlC, CtrlD, Withdrawn
from commands.addresses import ServerAddress
from commands.events import AbortRequested, DecisionNeeded, Notice, ReleaseFinished, ReleaseUpdate
from commands.release_plan import ReleasePlan
from commands.release_state import ReleaseState, Status
from commands.requests import ReleaseAbortRequest, ReleaseRequest, ReleaseStatusRequest, StatusRequest
from commands.service import Outcome
from tests.helpers import until, wait_until

NODE = ServerAddress("127.0.0.1", 9001)

# -- in process: a scripted person at the prompt ------------------------------------------------------------


class Person:
    """The `LineReader` a test drives: it shows one prompt at a time, and the test types into it."""

    def __init__(self) -> None:
        self.on_text_changed: Callable[[], None] = lambda: None
        self.shown: str | None = None  # the prompt on screen
        self.text = ""
        self.printed: list[str] = []
        self.history: list[str] = []
        self._line: asyncio.Future[str] | None = None

    async def read(self, prompt: str, command: bool) -> str:
        self.shown, self.text = prompt, ""
        self._line = line = asyncio.get_running_loop().create_future()
        try:
            return await line
        finally:
            if self._line is line:  # cancelled: nothing entered
                self.shown, self._line = None, None

    def typed(self) -> str | None:
        return None if self.shown is None else self.text

    def withdraw(self) -> None:
        self._end(error=Withdrawn())

    def remember(self, line: str) -> None:
        self.history.append(line)

    def print_lines(self, lines: list[str]) -> None:
        self.printed.extend(lines)

    async def drain(self) -> None:
        return None

    # -- what the test does --

    def type(self, text: str) -> None:
        self.text += text
        self.on_text_changed()

    def clear(self) -> None:
        self.text = ""
        self.on_text_changed()

    def enter(self, text: str = "") -> None:
        self.type(text)
        self._end(line=self.text)

    def press(self, error: Exception) -> None:
        self._end(error=error)

    def _end(self, line: str | None = None, error: Exception | None = None) -> None:
        future, self._line, self.shown = self._line, None, None  # off the screen now, as on a terminal
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(line or "")

    async def at(self, prompt: str) -> None:
        await until(lambda: self.shown is not None and self.shown.startswith(prompt), 5, f"the prompt {prompt!r}")

    def said(self, text: str) -> bool:
        return any(text in line for line in self.printed)


class FakeEngine:
    def __init__(self, state: ReleaseState, service: FakeService) -> None:
        self.plan, self.state, self.service = state.plan, state, service
        self.aborted_by: str | None = None

    def abort(self, by: str) -> bool:
        self.aborted_by = by
        self.service.abort()
        return True


class FakeReleases:
    def __init__(self) -> None:
        self.active: dict[str, FakeEngine] = {}


class FakeService:
    """Enough of CommandService for the prompt: `/release` runs until `finish` (or an abort); the test
    raises its questions as the engine would (`ask_decision`)."""

    def __init__(self) -> None:
        self.releases = FakeReleases()
        self.handled: list[str] = []
        self.decided: list[str] = []
        self.finish = asyncio.Event()
        self.state = ReleaseState.new(ReleasePlan("app", "local:test", "2", "serial", ((NODE,),), ("deploy",)), 0.0)
        self.decision: asyncio.Task[None] | None = None
        self.notifier: InteractiveFrontEnd | None = None
        self.slow = asyncio.Event()  # `/upstream status` answers once it is set
        self.slow.set()
        self.recorded = asyncio.Event()  # a release's audit entries are written once it is set
        self.recorded.set()

    async def handle(self, request: Any, requester: str, notifier: InteractiveFrontEnd) -> Outcome:
        self.handled.append(type(request).__name__)
        if isinstance(request, ReleaseRequest):
            return await self._release(notifier)
        if isinstance(request, ReleaseAbortRequest):
            await notifier.emit(AbortRequested("app", self.state.plan.id, requester))
            return Outcome.PENDING
        if isinstance(request, ReleaseStatusRequest):
            await notifier.emit(Notice(f"Release app 2: {self.state.status.value}"))
        elif isinstance(request, StatusRequest):
            await self.slow.wait()
            await notifier.emit(Notice("app: 3 of 3 serving"))
        return Outcome.DONE

    async def _release(self, notifier: InteractiveFrontEnd) -> Outcome:
        self.notifier = notifier
        self.releases.active["app"] = FakeEngine(self.state, self)
        self.state.status = Status.RUNNING
        self.state.nodes[NODE].drained = self.state.nodes[NODE].stopped = True
        try:
            await notifier.emit(ReleaseUpdate(self.state, "Release app 2 started"))
            await self.finish.wait()
            self.state.status = Status.ABORTED if self.releases.active["app"].aborted_by else Status.SUCCEEDED
            self.state.nodes[NODE].drained = self.state.nodes[NODE].stopped = False
        finally:
            self.releases.active.pop("app")
        await notifier.emit(ReleaseFinished(self.state))  # as Releases does: once the app is free again
        await self.recorded.wait()  # then the service writes the release's audit entries
        return Outcome.DONE

    def ask_decision(self, kind: str = "failure") -> None:
        """As the engine does: the question is shown by a task of its own, cancelled once it is moot."""
        assert self.notifier is not None
        event = DecisionNeeded(self.state, kind, "d1", NODE, "health window failed")
        self.decision = asyncio.ensure_future(self.notifier.emit(event))

    def abort(self) -> None:
        if self.decision is not None and not self.decision.done():
            self.decision.cancel()
        self.finish.set()

    async def abort_release(
        self, app: str, release_id: str, by: str, notifier: Any, reason: str | None = None
    ) -> Outcome:
        self.handled.append("abort_release")
        self.releases.active[app].abort(by)
        return Outcome.DONE

    async def decide(self, app: str, decision_id: str, decision: str, by: str, notifier: Any) -> Outcome:
        self.decided.append(decision)
        return Outcome.DONE


@pytest.fixture
async def demo() -> Any:
    person, service = Person(), FakeService()
    front = InteractiveFrontEnd(service, person, user="local:test", put_back_form=PROMPT_FORM)  # type: ignore[arg-type]
    repl = asyncio.ensure_future(front.repl())
    yield person, service, front, repl
    if not repl.done():
        repl.cancel()
        await asyncio.wait({repl}, timeout=5)


async def started(person: Person) -> None:
    """`/release app` typed; it runs on in the background and the prompt is back."""
    await person.at(COMMAND_PROMPT)
    person.enter("/release app --version 2")
    await until(lambda: person.said("runs in the background"), 5, "the release in the background")
    await person.at(COMMAND_PROMPT)


async def test_a_release_runs_in_the_background_and_exit_is_refused_until_it_ends(demo: Any) -> None:
    person, service, _front, repl = demo
    await started(person)
    person.enter("/release status app")
    await until(lambda: person.said("Release app 2: running"), 5, "the status while it runs")
    await person.at(COMMAND_PROMPT)
    person.enter("exit")
    await until(lambda: person.said("leaving now would stop the demo"), 5, "exit refused")
    assert person.said("/release abort app")
    await person.at(COMMAND_PROMPT)
    person.press(CtrlD())  # Ctrl-D is exit too
    await until(lambda: sum("leaving now would" in line for line in person.printed) == 2, 5, "Ctrl-D refused")
    service.finish.set()
    await until(lambda: person.said("succeeded"), 5, "the release's end")
    await person.at(COMMAND_PROMPT)
    person.enter("exit")
    assert await asyncio.wait_for(repl, 5) is True
    assert person.printed[-1] == "bye"


async def test_exit_right_after_a_release_ended_waits_for_its_audit_entries_not_refused(demo: Any) -> None:
    person, service, front, repl = demo
    await started(person)
    service.recorded.clear()
    service.finish.set()
    await until(lambda: person.said("succeeded"), 5, "the release's end")
    await person.at(COMMAND_PROMPT)
    assert front.background  # still writing what it did
    person.enter("exit")
    await until(lambda: front._leaving == "bye", 5, "exit taken")
    assert not person.said("leaving now would") and not repl.done()
    service.recorded.set()
    assert await asyncio.wait_for(repl, 5) is True


async def test_a_question_takes_an_empty_prompt_and_its_answer_goes_to_it(demo: Any) -> None:
    person, service, _front, _repl = demo
    await started(person)
    service.ask_decision()
    await person.at("[app 127.0.0.1:9001] retry | restore | leave? [leave] ")
    person.enter("retry")
    await until(lambda: service.decided == ["retry"], 5, "the decision")
    await person.at(COMMAND_PROMPT)
    assert "StatusRequest" not in service.handled


async def test_a_question_waits_for_the_line_being_typed(demo: Any) -> None:
    person, service, _front, _repl = demo
    await started(person)
    person.type("/upstream sta")
    service.ask_decision()
    await until(lambda: person.said("a question waits"), 5, "told that a question waits")
    assert person.shown == COMMAND_PROMPT and person.text == "/upstream sta"  # not taken from the person
    person.enter("tus app")
    await until(lambda: "StatusRequest" in service.handled, 5, "the typed command run")
    await person.at("[app 127.0.0.1:9001]")
    person.enter("leave")
    await until(lambda: service.decided == ["leave"], 5, "the decision")
    # Text typed, then cleared: the question is shown at once.
    await person.at(COMMAND_PROMPT)
    person.type("/upst")
    service.ask_decision()
    await until(lambda: person.said("a question waits"), 5, "told again")
    person.clear()
    await person.at("[app 127.0.0.1:9001]")


async def test_a_command_typed_at_a_release_question_runs_and_its_own_question_comes_first(demo: Any) -> None:
    person, service, _front, repl = demo
    await started(person)
    service.ask_decision()
    await person.at("[app 127.0.0.1:9001]")
    person.enter("/release status app")  # a command, not an answer
    await until(lambda: person.said("Release app 2: running"), 5, "the status")
    await person.at("[app 127.0.0.1:9001]")  # asked again
    assert service.decided == [] and person.history == ["/release status app"]
    person.enter("/release abort app")
    await person.at("Confirm? [y/N] ")  # the typed command's question before the release's
    person.enter("y")
    await until(lambda: "abort_release" in service.handled, 5, "the abort confirmed")
    await until(lambda: person.said("(no longer asked)"), 5, "the moot question taken down")
    await until(lambda: person.said("aborted"), 5, "the release's end")
    assert service.decided == []  # the abort answered it, nobody's line did
    await person.at(COMMAND_PROMPT)
    person.enter("exit")
    assert await asyncio.wait_for(repl, 5) is True


async def test_ctrl_c_aborts_a_background_release_and_a_second_leaves_listing_what_is_drained(demo: Any) -> None:
    person, service, front, repl = demo
    service.abort = lambda: None  # an abort that takes its time: the second Ctrl-C comes first
    await started(person)
    person.press(CtrlC())
    await until(lambda: person.said("aborting (Ctrl-C)"), 5, "the first Ctrl-C")
    assert service.releases.active["app"].aborted_by == "local:test (Ctrl-C)"
    await person.at(COMMAND_PROMPT)
    person.press(CtrlC("/upstream status app"))  # with text typed: the line is cleared, nothing else
    await until(lambda: person.said("(line cleared; Ctrl-C on an empty prompt stops everything"), 5, "a hint")
    await person.at(COMMAND_PROMPT)
    assert not repl.done()
    person.press(CtrlC())
    assert await asyncio.wait_for(repl, 15) is False
    out = "\n".join(person.printed)
    assert "Ctrl-C: stopping at once" in out
    assert "127.0.0.1:9001: also left stopped; start it first, then: /undrain 127.0.0.1:9001 app" in out
    assert person.printed[-1] == "leaving the demo"
    assert front.background == []


@pytest.mark.parametrize("release", [True, False], ids=["release running", "no release"])
async def test_a_signal_during_a_typed_command_aborts_releases_else_cancels_the_command(
    demo: Any, release: bool
) -> None:
    person, service, front, _repl = demo
    if release:
        await started(person)
    await person.at(COMMAND_PROMPT)
    service.slow.clear()
    person.enter("/upstream status app")  # holds the prompt: Ctrl-C is SIGINT now, not a key
    await until(lambda: front.foreground is not None and person.shown is None, 5, "the command running")
    front._on_signal(signal.SIGINT)
    if release:  # the release is aborted and finishes that abort; the typed command is left to end
        await until(lambda: person.said("Release app 2 (serial): nothing is left drained"), 5, "the abort")
        assert person.said("aborting (Ctrl-C)") and front.foreground is not None
        service.slow.set()
        await until(lambda: person.said("app: 3 of 3 serving"), 5, "the command's answer")
        assert not person.said("stopping at once") and not person.said("`/upstream status app`")
    else:
        await until(lambda: person.said("`/upstream status app` stopped before it finished"), 5, "the cancel")
        assert person.said("Ctrl-C: stopping at once") and not person.said("3 of 3 serving")
    await person.at(COMMAND_PROMPT)
    assert front.signals == 0  # nothing runs: the next Ctrl-C is a first one again


async def test_ctrl_c_with_nothing_running_clears_the_line_then_leaves(demo: Any) -> None:
    person, _service, _front, repl = demo
    await person.at(COMMAND_PROMPT)
    person.press(CtrlC("/drain 127.0.0.1:9001"))
    await person.at(COMMAND_PROMPT)
    assert not repl.done()
    person.press(CtrlC())
    assert await asyncio.wait_for(repl, 5) is True


async def test_ctrl_c_with_text_typed_clears_the_line_and_aborts_nothing(demo: Any) -> None:
    person, service, _front, repl = demo
    await started(person)
    person.type("/upstream sta")
    service.ask_decision()
    await until(lambda: person.said("a question waits"), 5, "told to enter or clear the line")
    person.press(CtrlC("/upstream sta"))  # clear the line, as in a shell, so that the question shows
    await person.at("[app 127.0.0.1:9001]")
    assert person.said("(line cleared; Ctrl-C on an empty prompt aborts the running release)")
    person.type("ret")
    person.press(CtrlC("ret"))  # at the release's question too: cleared, and the question is asked again
    await person.at("[app 127.0.0.1:9001]")
    await asyncio.sleep(0.1)
    assert service.releases.active["app"].aborted_by is None and not person.said("aborting")
    assert service.decided == [] and not repl.done()
    person.enter("retry")
    await until(lambda: service.decided == ["retry"], 5, "the decision")


@pytest.mark.parametrize("release", [True, False], ids=["release running", "no release"])
@pytest.mark.parametrize("typed", ["", "y"], ids=["empty", "typed"])
async def test_ctrl_c_at_a_commands_confirmation_is_no(demo: Any, release: bool, typed: str) -> None:
    person, service, front, repl = demo
    if release:
        await started(person)
    person.enter("/release abort app")  # any command that asks Confirm? (a /drain in the real demo)
    await person.at("Confirm? [y/N] ")
    person.type(typed)
    person.press(CtrlC(typed))  # "no"
    await until(lambda: person.said("Cancelled; nothing was changed."), 5, "the command cancelled")
    assert person.said("(Ctrl-C: no)")
    await person.at(COMMAND_PROMPT)  # the question is gone: the next Ctrl-C is not a second one
    assert "abort_release" not in service.handled and front.signals == 0
    assert not person.said("aborting") and not person.said("stopping at once") and not repl.done()
    if release:
        assert service.releases.active["app"].aborted_by is None
        service.finish.set()
        await until(lambda: person.said("succeeded"), 5, "the release's own end")


async def test_ctrl_c_at_the_confirmation_of_a_dangerous_answer_is_no(demo: Any) -> None:
    person, service, _front, repl = demo
    await started(person)
    service.ask_decision("restore_failed")
    await person.at("[app 127.0.0.1:9001] retry | restore_unhealthy | leave? [leave] ")
    person.enter("restore_unhealthy")
    await person.at('Type "yes" to restore_unhealthy 127.0.0.1:9001, anything else cancels: ')
    person.press(CtrlC())  # "anything else cancels": Ctrl-C too, and nothing more
    await until(lambda: service.decided == ["leave"], 5, "the safe default")
    assert person.said("(Ctrl-C: no)")
    assert person.said("not confirmed; leave instead")
    assert service.releases.active["app"].aborted_by is None and not person.said("aborting") and not repl.done()


async def test_ctrl_c_at_a_release_question_aborts_the_release_and_says_so(demo: Any) -> None:
    person, service, front, repl = demo
    await started(person)
    service.ask_decision()
    await person.at("[app 127.0.0.1:9001]")
    person.press(CtrlC())  # on the empty answer: the first signal; the abort answers the question
    await until(lambda: person.said("Release app 2 (serial): nothing is left drained"), 5, "the abort's end")
    assert service.state.status is Status.ABORTED and service.decided == []
    assert person.said("aborting (Ctrl-C): the release of app stops before its next step")
    await until(lambda: person.said("retry | restore | leave? [leave] (no longer asked)"), 5, "the question down")
    await person.at(COMMAND_PROMPT)
    assert front.signals == 0 and not repl.done()


async def test_sighup_aborts_the_release_waits_for_it_and_leaves_once(demo: Any) -> None:
    person, service, front, repl = demo
    await started(person)
    service.ask_decision()
    await person.at("[app 127.0.0.1:9001]")
    front._on_signal(signal.SIGHUP)  # the terminal was closed (its outputs are pytest's, still there)
    front._on_signal(signal.SIGHUP)  # a closing terminal may say it twice: the same hang-up
    assert await asyncio.wait_for(repl, 5) is True
    assert service.state.status is Status.ABORTED and service.decided == []
    assert person.said("SIGHUP: the terminal went away; aborting the running release(s)")
    assert person.said("Release app 2 (serial): nothing is left drained")
    assert not person.said("stopping at once") and person.printed[-1] == "bye"


async def test_an_abort_that_does_not_end_after_a_hang_up_is_cancelled_and_what_it_left_listed(
    demo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.terminal.interactive.HANG_UP_WAIT", 0.3)
    person, service, _front, repl = demo
    service.abort = lambda: None  # an abort that never ends: the wait for it is bounded
    await started(person)
    person.press(CtrlD(closed=True))
    assert await asyncio.wait_for(repl, 5) is True
    out = "\n".join(person.printed)
    assert "end of input: the abort has not ended after 0.3 s: stopping at once" in out
    assert "127.0.0.1:9001: also left stopped; start it first, then: /undrain 127.0.0.1:9001 app" in out


async def test_the_terminal_going_away_aborts_the_release_and_waits_for_it(demo: Any) -> None:
    person, service, _front, repl = demo
    await started(person)
    person.press(CtrlD(closed=True))
    assert await asyncio.wait_for(repl, 5) is True
    assert service.releases.active == {} and service.state.status is Status.ABORTED
    assert person.said("Release app 2 (serial): nothing is left drained")


# -- `upstream-bot demo` on a pseudo-terminal ---------------------------------------------------------------

UP, LEFT, BACKSPACE, CTRL_C, CTRL_D, CTRL_L = "\x1b[A", "\x1b[D", "\x7f", "\x03", "\x04", "\x0c"


class Screen:
    """Just enough of a VT100 to see what a terminal would show: text, cursor moves, erases. Every line
    ever written is kept (scrolled-off lines too); `top` is the first line of the visible screen."""

    _TOKEN = re.compile(
        r"\x1b\[([0-9;?]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b.|[\r\n\b\x07]"
        r"|[^\x1b\r\n\b\x07]+"
    )

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.lines: list[list[str]] = [[]]
        self.row = self.col = self.top = 0

    def feed(self, text: str) -> Screen:
        for match in self._TOKEN.finditer(text):
            token = match.group(0)
            if match.group(2) is not None:
                self._csi(match.group(1), match.group(2))
            elif token == "\r":
                self.col = 0
            elif token == "\n":
                self._down()
            elif token == "\b":
                self.col = max(0, self.col - 1)
            elif not token.startswith("\x1b") and token != "\x07":
                for char in token:
                    self._put(char)
        return self

    def _line(self) -> list[str]:
        while len(self.lines) <= self.row:
            self.lines.append([])
        return self.lines[self.row]

    def _down(self) -> None:
        self.row += 1
        self._line()
        self.top = max(self.top, self.row - self.rows + 1)

    def _put(self, char: str) -> None:
        if self.col >= self.cols:
            self.col = 0
            self._down()
        line = self._line()
        line.extend(" " * (self.col + 1 - len(line)))
        line[self.col] = char
        self.col += 1

    def _csi(self, params: str, final: str) -> None:
        if params.startswith("?"):
            return  # modes (cursor shown, bracketed paste, ...)
        numbers = [int(p) if p else 0 for p in params.split(";")] if params else []
        n = (numbers[0] if numbers else 0) or 1
        mode = numbers[0] if numbers else 0
        if final == "A":
            self.row = max(self.top, self.row - n)
        elif final == "B":
            for _ in range(n):
                self._down()
        elif final == "C":
            self.col = min(self.cols - 1, self.col + n)
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final in "Hf":
            row, col = [*numbers, 1, 1][:2]
            self.row, self.col = self.top + max(row, 1) - 1, max(col, 1) - 1
            self._line()
        elif final == "K" and mode in (0, 2):
            line = self._line()
            del line[self.col if mode == 0 else 0 :]
        elif final == "J" and mode == 0:
            del self._line()[self.col :]
            del self.lines[self.row + 1 :]
        elif final == "J" and mode == 2:
            for i in range(self.top, len(self.lines)):
                self.lines[i] = []

    def text(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]

    def visible(self) -> list[str]:
        return self.text()[self.top :]


class Terminal:
    """A process on a pseudo-terminal (its controlling terminal), what it wrote read by a thread."""

    def __init__(
        self, args: list[str], rows: int = 50, cols: int = 160, stderr: Any = None, env: dict[str, str] | None = None
    ) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.rows, self.cols = rows, cols
        # No cursor position requests (a terminal answers them; this harness does not).
        env = {**os.environ, **(env or {}), "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1"}
        self.process = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave if stderr is None else stderr,
            env=env,
            start_new_session=True,
            # Its controlling terminal, as a person's: Ctrl-C while no prompt is shown is SIGINT.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.master = master
        self._closing = threading.Event()
        self._data = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="pty", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():  # until the process closes the terminal (EIO), or we do
            if not select.select([self.master], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self._data += chunk

    @property
    def raw(self) -> str:
        with self._lock:
            return self._data.decode(errors="replace")

    def screen(self) -> Screen:
        return Screen(self.rows, self.cols).feed(self.raw)

    def last_line(self) -> str:
        lines = [line for line in self.screen().text() if line]
        return lines[-1] if lines else ""

    def hang_up(self) -> None:
        """The terminal window is closed (ssh dropped): the process's terminal hangs up (SIGHUP, EIO)."""
        if not self._closing.is_set():
            self._closing.set()
            self._reader.join(5)  # not in a read of it: its last reference goes now
            os.close(self.master)

    def send(self, keys: str) -> None:
        data = keys.encode()
        while data:  # the terminal's buffer may take it in parts; the reader thread drains the output
            data = data[os.write(self.master, data) :]

    def wait_for(self, text: str, timeout: float = 30, count: int = 1) -> None:
        self.wait_until(lambda: self.raw.count(text) >= count, timeout, f"{text!r} on the terminal")

    def wait_prompt(self, starts: str = "upstream-bot>", timeout: float = 30) -> None:
        self.wait_until(lambda: self.last_line().startswith(starts), timeout, f"the prompt {starts!r}")

    def wait_until(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """`wait_until`, showing the screen as it is when the time is up."""
        try:
            return wait_until(condition, timeout, what)
        except AssertionError as error:
            raise AssertionError(f"{error}; the screen:\n{self.dump()}") from None

    def dump(self) -> str:
        return "\n".join(self.screen().text()[-60:])

    def close(self) -> int | None:
        # SIGTERM, as a person's Ctrl-C: the demo stops its sample services (a first one aborts a release,
        # a second leaves). SIGKILL only if it does not go: it would leave them running.
        for _ in range(2):
            if self.process.poll() is None:
                self.process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(15)
        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait(10)
        self.hang_up()
        return code


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    started: list[tuple[Terminal, int]] = []

    def start(stderr: Any = None) -> Terminal:
        base = next(p for p in range(19501, 19900, 10) if all(port_free(p + i) for i in range(4)))
        term = Terminal([sys.executable, "-m", "bot.cli", "demo", "--base-port", str(base)], stderr=stderr)
        started.append((term, base))
        term.wait_prompt()
        return term

    yield start
    for term, base in started:
        term.close()
        wait_until(lambda b=base: all(port_free(b + i) for i in range(4)), 15, "the demo's services stopped")


def test_the_prompt_edits_recalls_clears_and_takes_long_lines(terminal: Callable[[], Terminal]) -> None:
    term = terminal()
    # A typo fixed with the arrow keys: left past " app", two backspaces, the right letters.
    term.send("/upstream statsu app" + LEFT * 4 + BACKSPACE * 2 + "us\r")
    term.wait_for("app: 3 of 3 serving")
    assert "is not a command" not in term.raw and "^[[" not in term.raw
    term.wait_prompt()
    term.send(UP + "\r")  # the previous command, recalled
    term.wait_for("app: 3 of 3 serving", count=2)
    assert term.screen().text().count("upstream-bot> /upstream status app") == 2  # the fixed line, twice
    term.wait_prompt()
    term.send(CTRL_L)  # clears the screen: the prompt is at its top
    term.wait_until(lambda: term.screen().visible()[:1] == ["upstream-bot>"], 10, "a cleared screen")
    assert "^L" not in term.raw
    # Beyond the terminal's 4,095-character line limit: the bot gets the whole name and says how long it is.
    term.send("/upstream status " + "a" * 5000 + "\r")
    term.wait_for("That app name is 5000 characters long: app names have at most 64.")
    term.wait_prompt()
    term.send(CTRL_D)
    term.wait_for("bye")
    assert term.process.wait(30) == 0
    assert "Traceback" not in term.raw


def test_a_release_runs_in_the_background_with_output_above_the_prompt(terminal: Callable[[], Terminal]) -> None:
    term = terminal()
    term.send("/release app --version 2\r")
    term.wait_prompt("Confirm? [y/N]")
    term.send("y\r")
    term.wait_for("runs in the background")
    term.wait_prompt()
    started = time.monotonic()
    # Typed, not entered, while the release prints its progress: the lines go above the prompt, and the
    # prompt is drawn again under them with the text typed so far.
    term.send("/upstream st")
    progress = term.raw.count("127.0.0.1:")
    term.wait_until(lambda: term.raw.count("127.0.0.1:") > progress + 2, 30, "progress lines")
    term.wait_until(lambda: term.last_line() == "upstream-bot> /upstream st", 10, "the prompt redrawn")
    lines = term.screen().text()
    # No progress on a prompt's line, no prompt left behind by a redraw: the entered line and this one.
    prompts = [line for line in lines if line.startswith("upstream-bot>")]
    assert prompts == ["upstream-bot> /release app --version 2", "upstream-bot> /upstream st"], term.dump()
    assert any(re.match(r"\d\d:\d\d:\d\d  127\.0\.0\.1:\d+: ", line) for line in lines)  # whole lines above
    term.send("atus app\r")
    term.wait_for("of 3 serving")
    term.wait_prompt()
    term.send("/release status app\r")
    term.wait_for("Release app 2 (serial): running,")  # answered while the release runs
    assert "Release app 2 (serial): succeeded" not in term.raw
    term.wait_prompt()
    term.send("/release abort app\r")
    term.wait_prompt("Confirm? [y/N]")
    term.send(CTRL_C)  # "no": the command is cancelled, the release goes on
    term.wait_for("Cancelled; nothing was changed.")
    term.wait_prompt()
    term.send("/upstream st" + CTRL_C)  # clears the line, nothing else
    term.wait_for("(line cleared; Ctrl-C on an empty prompt aborts the running release)")
    term.wait_prompt()
    assert "aborting" not in term.raw and "(Ctrl-C: no)" in term.raw
    term.send("exit\r")
    term.wait_for("leaving now would stop the demo")
    term.wait_prompt()
    term.send(CTRL_C)  # a key at the prompt, with the release in the background: it aborts the release
    term.wait_for("aborting (Ctrl-C)")
    term.wait_for("Release app 2 (serial): nothing is left drained", timeout=60)
    assert "stopping at once" not in term.raw
    term.wait_prompt()
    term.send("exit\r")
    term.wait_for("bye")
    assert term.process.wait(30) == 0
    assert "Traceback" not in term.raw
    print(f"release aborted and demo left {time.monotonic() - started:.1f} s after the prompt came back")


def test_closing_the_terminal_aborts_the_release_and_logs_what_is_left(
    terminal: Callable[..., Terminal], tmp_path: Path
) -> None:
    # The log to a file (`upstream-bot demo 2>demo.log`): the only output left once the terminal is gone.
    log = tmp_path / "demo.log"
    with log.open("w") as stderr:
        term = terminal(stderr=stderr)
    term.send("/release app --version 2\r")
    term.wait_prompt("Confirm? [y/N]")
    term.send("y\r")
    term.wait_for("runs in the background")
    term.wait_until(lambda: re.search(r"127\.0\.0\.1:\d+: drained", term.raw), 30, "a node drained")
    closed = time.monotonic()
    term.hang_up()  # the window is closed: SIGHUP, and the terminal reads and writes fail from now on
    code = term.process.wait(HANG_UP_WAIT + CANCEL_GRACE + 15)  # by itself, bounded
    took = time.monotonic() - closed
    out = log.read_text()
    print(out)
    print(f"the demo left {took:.1f} s after its terminal was closed")
    assert code == 0 and "Traceback" not in out and "Logging error" not in out
    assert "SIGHUP: the terminal went away; aborting the running release(s)" in out
    assert "aborting (SIGHUP): the release of app stops before its next step" in out
    assert "Release app 2 (serial): nothing is left drained" in out  # the node it drained was put back
    assert out.rstrip().endswith("bye")
