"""The terminal front end: the demo's chat prompt and `upstream-bot run`. Same events, as lines.

Ctrl-C and SIGTERM while a command runs: the first signal aborts every running release (it stops
before its next step; a node it stopped is started and probed, and put back only if healthy) and lets
it finish that abort; with no release running it cancels the command. The second signal cancels at
once. Either way, what is left drained is printed with the command that puts each node back.

SIGHUP (the terminal was closed, the ssh connection dropped) is a first signal too, never a second one:
a closing terminal may send it more than once (the kernel to the session's leader, a shell to its jobs),
and hurrying an abort nobody watches would only leave more drained. Once the terminal is gone, what would
have been printed is logged instead (a warning each line: stderr may be a file), and the terminal's
descriptors are pointed at /dev/null so that no later write, at exit neither, fails.

This module reads lines from stdin as they come (pipes, tests, `upstream-bot run`): one command at a
time, a release holding the prompt until it ends. On a terminal the demo's prompt is
`bot/terminal/interactive.py` (line editing, history, a release in the background), with the same
signal semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import UnionType
from typing import TextIO

from bot.terminal.render import event_lines, option_label
from commands.errors import UserError
from commands.events import (
    DANGEROUS_OPTIONS,
    AbortRequested,
    ApprovalRequested,
    ConfirmationNeeded,
    DecisionNeeded,
    Event,
    Problem,
    ReleaseFinished,
    ReleasePlanned,
    ReleaseUpdate,
    ResumeRequested,
    WatchOffRequested,
)
from commands.grammar import parse_line
from commands.release_engine import ReleaseEngine
from commands.release_state import NodeState, Phase, ReleaseState
from commands.requests import ReleaseRequest
from commands.service import CommandService, Outcome

log = logging.getLogger(__name__)
Ask = Callable[[str], Awaitable[str | None]]  # prompt -> answer, None at end of input

SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
# After the second signal the cancelled command still cleans up (a step's process group gets SIGTERM,
# SIGKILL 5 s later; the release lock is given back): wait that long at most, then report and go.
CANCEL_GRACE = 8.0
ASK_ATTEMPTS = 3  # an unknown answer to a decision is asked again this often, then the safe default wins
# With --yes nobody is there to answer: the canary goes on (as asked for), a failure leaves the node
# drained. A dangerous option is never among these.
UNATTENDED = {"canary": "continue"}
# A question asked before something is done; answered at the prompt (or by --yes).
Pending = ConfirmationNeeded | ReleasePlanned | AbortRequested | WatchOffRequested | ResumeRequested
SAFE_DEFAULT = {"canary": "abort"}  # otherwise "leave"
RUN_FORM = 'upstream-bot run "{}"'  # how a left-drained node is put back from a shell
PROMPT_FORM = "{}"  # the same, typed at the demo's prompt


class StdinAsk:
    """Questions answered from stdin by one daemon thread that feeds a queue. A question abandoned by
    Ctrl-C loses no line (the next question gets it), and exiting never waits on a blocked read (a
    thread per question, as `asyncio.to_thread` gives, keeps the process alive until Enter)."""

    def __init__(self, stream: TextIO | None = None, out: TextIO | None = None) -> None:
        self.stream = stream or sys.stdin
        self.out = out or sys.stdout
        self._lines: asyncio.Queue[str | None] | None = None
        self._eof = False

    def _start(self) -> asyncio.Queue[str | None]:
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        def read() -> None:
            # Bounded by the input: it ends at end of input (or when the loop is gone).
            try:
                for line in iter(self.stream.readline, ""):
                    loop.call_soon_threadsafe(lines.put_nowait, line)
                loop.call_soon_threadsafe(lines.put_nowait, None)
            except (RuntimeError, ValueError, OSError):
                return  # the loop closed (we are exiting) or stdin went away

        threading.Thread(target=read, name="stdin", daemon=True).start()
        return lines

    async def __call__(self, prompt: str) -> str | None:
        if self._eof:
            return None
        if self._lines is None:
            self._lines = self._start()
        with contextlib.suppress(OSError):  # the terminal went away: the line (end of input) still comes
            self.out.write(prompt)
            self.out.flush()
        line = await self._lines.get()
        if line is None:
            self._eof = True
            return None
        return line.strip()


def terminal_user() -> str:
    """The OS account running the bot (from its uid, not $USER: the audit names who really acted)."""
    try:
        return f"local:{pwd.getpwuid(os.getuid()).pw_name}"
    except KeyError:
        return f"local:uid{os.getuid()}"


class TerminalFrontEnd:
    """Runs one command line at a time; confirmations are asked at the prompt (or given by --yes)."""

    def __init__(
        self,
        service: CommandService,
        ask: Ask | None = None,
        out: TextIO | None = None,
        assume_yes: bool = False,
        user: str | None = None,
        put_back_form: str = RUN_FORM,
    ) -> None:
        self.service = service
        self.out = out or sys.stdout
        self.ask: Ask = ask or StdinAsk(out=self.out)
        self.assume_yes = assume_yes
        self.user = user or terminal_user()
        self.put_back_form = put_back_form
        self._pending: Pending | None = None
        # Where history entries say a command came from: a CI job or a person at a terminal.
        self.where = "ci" if os.environ.get("CI") else "terminal"
        # The latest state of the release this front end saw, from its events: a cancelled run has no
        # ReleaseFinished, and still has to say what it left drained.
        self.release_state: ReleaseState | None = None
        self.interrupted: str | None = None  # "Ctrl-C" / "SIGTERM" when the last command was interrupted
        self.cancelled = False  # ... and cancelled rather than left to finish its abort
        self.signals = 0  # signals received during the last command
        self._interrupt = asyncio.Event()  # set by the first signal: open questions stop waiting
        self.hung_up = False  # a SIGHUP came
        self.output_gone = False  # the terminal (or pipe) printed to is gone: lines are logged instead

    def _print(self, line: str) -> None:
        if self.output_gone:
            log.warning("%s", line)
            return
        try:
            self._write_line(line)
        except OSError as error:  # the terminal hung up (EIO), the pipe's reader went (EPIPE)
            self._lose_output(f"{type(error).__name__}: {error}")
            log.warning("%s", line)

    def _write_line(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _lose_output(self, why: str) -> None:
        """From now on, what is printed is logged instead; whatever is still buffered for the stream (and
        is written at exit) goes to /dev/null rather than failing."""
        if not self.output_gone:
            self.output_gone = True
            log.warning("the output is gone (%s): what would be printed is logged from here on", why)
        with contextlib.suppress(OSError, ValueError):
            to_devnull(self.out.fileno())

    def _reset_signals(self) -> None:
        """Nothing runs any more: the next signal is a first one again."""
        self.interrupted, self.signals, self._interrupt = None, 0, asyncio.Event()

    def _hang_up_outputs(self) -> None:
        """A SIGHUP came: the terminals that are gone are silenced (see the module's doc)."""
        gone = hung_up_outputs()
        with contextlib.suppress(OSError, ValueError):
            if self.out.fileno() in gone:
                self._lose_output("the terminal hung up")

    async def emit(self, event: Event) -> None:
        if isinstance(event, Pending):
            self._pending = event
        if isinstance(event, ReleaseUpdate | ReleaseFinished | DecisionNeeded):
            self.release_state = event.state
        for line in event_lines(event):
            self._print(line)
        if isinstance(event, ApprovalRequested):
            self._print(
                f"Refused here: {event.plan.app} has approval: required, and a terminal cannot collect a "
                "second person's approval. Run the release from Slack."
            )
        elif isinstance(event, DecisionNeeded):
            await self._decide(event)

    # -- decisions -------------------------------------------------------------------------------

    async def _decide(self, event: DecisionNeeded) -> None:
        options = event.options
        default = SAFE_DEFAULT.get(event.kind, "leave")
        if self.assume_yes:
            choice: str | None = UNATTENDED.get(event.kind, "leave")
            if choice in DANGEROUS_OPTIONS or choice not in options:  # never chosen for someone who is not there
                choice = default
        else:
            choice = await self._choose(event, options, default)
        if choice is None:  # interrupted: the abort answers the question
            self._print("decision: none (aborting)")
            return
        self._print(f"decision: {choice}")
        await self.service.decide(event.state.plan.app, event.decision_id, choice, self.user, self)

    def _decision_prompt(self, event: DecisionNeeded, options: tuple[str, ...], default: str) -> str:
        return f"{' | '.join(options)}? [{default}] "

    async def _choose(self, event: DecisionNeeded, options: tuple[str, ...], default: str) -> str | None:
        prompt = self._decision_prompt(event, options, default)
        for _ in range(ASK_ATTEMPTS):
            answer = await self._ask_unless_interrupted(prompt)
            if self._interrupt.is_set():
                return None
            text = (answer or "").strip().lower()
            if event.kind == "canary" and text in ("y", "yes", "n", "no"):
                text = "continue" if text.startswith("y") else "abort"  # the prompt used to be y/N
            if not text:
                return default
            if text not in options:
                self._print(f"`{text}` is not one of {', '.join(options)}")
                continue
            if text in DANGEROUS_OPTIONS and not await self._dangerous_confirmed(event, text):
                self._print(f"not confirmed; {default} instead")
                return default
            return text
        self._print(f"no valid answer; {default}")
        return default

    async def _dangerous_confirmed(self, event: DecisionNeeded, option: str) -> bool:
        self._print(f"{option}: {option_label(option)}")
        answer = await self._ask_unless_interrupted(
            f'Type "yes" to {option} {event.node or "the node"}, anything else cancels: ', confirmation=True
        )
        return not self._interrupt.is_set() and answer == "yes"

    async def _ask_unless_interrupted(self, prompt: str, confirmation: bool = False) -> str | None:
        """The answer, or None as soon as a signal interrupts the question."""
        if self._interrupt.is_set():
            return None
        question = asyncio.ensure_future(self._ask_release(prompt, confirmation))
        interrupted = asyncio.ensure_future(self._interrupt.wait())
        try:
            await asyncio.wait({question, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted.cancel()
            if not question.done():
                question.cancel()
                self._end_prompt_line()
        return question.result() if question.done() and not question.cancelled() else None

    async def _ask_release(self, prompt: str, confirmation: bool = False) -> str | None:
        """A question a running release asks (a decision, or the confirmation of a dangerous answer). Here
        the same as any other; the interactive prompt puts it after the questions of the command being
        typed (and takes Ctrl-C at a confirmation as "no")."""
        return await self.ask(prompt)

    def _end_prompt_line(self) -> None:
        self._print("")  # a question given up on left its prompt without a newline

    # -- commands -------------------------------------------------------------------------------

    async def run_line(self, line: str) -> Outcome:
        try:
            request = parse_line(line)
        except UserError as error:
            await self.emit(Problem(error.message))
            return Outcome.REFUSED
        self._pending = None
        outcome = await self.service.handle(request, self.user, self)
        while outcome is Outcome.PENDING and self._pending is not None:
            pending, self._pending = self._pending, None
            if not await self._confirmed(pending):
                self._print("Cancelled; nothing was changed.")
                return Outcome.REFUSED
            if isinstance(pending, ConfirmationNeeded):
                outcome = await self.service.confirm(pending.plan, pending.stage, self.user, self)
            elif isinstance(pending, ReleasePlanned):
                outcome = await self.service.start_release(pending.plan, pending.stage, self.user, self)
            elif isinstance(pending, WatchOffRequested):
                outcome = await self.service.set_watch(pending.app, False, self.user, pending.reason, self)
            elif isinstance(pending, ResumeRequested):
                outcome = await self.service.resume_release(
                    pending.app, pending.release_id, pending.mode, self.user, self, pending.reason
                )
            else:
                outcome = await self.service.abort_release(
                    pending.app, pending.release_id, self.user, self, pending.reason
                )
        return outcome

    async def _confirmed(self, pending: Pending) -> bool:
        if self.assume_yes:
            stage = getattr(pending, "stage", 1)
            self._print(f"confirmed by --yes ({'second ' if stage > 1 else ''}confirmation)")
            return True
        if getattr(pending, "stage", 1) >= 2:
            answer = await self.ask('Type "yes" to go ahead anyway, anything else cancels: ')
            return answer == "yes"
        answer = await self.ask("Confirm? [y/N] ")
        if answer is None:
            self._print("No answer (end of input); pass --yes to confirm from a script.")
            return False
        return answer.lower() in ("y", "yes")

    async def run_interruptible(self, line: str) -> Outcome | None:
        """`run_line` with Ctrl-C, SIGTERM and SIGHUP handled as the module says. None when it was cancelled;
        `interrupted` says whether a signal came."""
        loop = asyncio.get_running_loop()
        self.release_state, self.cancelled = None, False
        self._reset_signals()
        cancel_now = asyncio.Event()
        task = asyncio.ensure_future(self.run_line(line))

        def on_signal(sig: signal.Signals) -> None:
            name = SIGNAL_NAMES.get(sig, sig.name)
            if sig == signal.SIGHUP:
                first_hang_up = not self.hung_up
                self.hung_up = True
                self._hang_up_outputs()
                if not first_hang_up or self.signals:  # see the module's doc: never a second signal
                    log.info("SIGHUP: %s", "already handled" if not first_hang_up else "an abort is under way")
                    return
            self.signals += 1
            self.interrupted = self.interrupted or name
            self._interrupt.set()
            if self.signals == 1 and self._abort_releases(name):
                return
            if not task.done():
                self.cancelled = True
                self._print(f"{name}: stopping at once")
                task.cancel()
            cancel_now.set()

        cancelled = asyncio.ensure_future(cancel_now.wait())
        try:
            with signals_handled(loop, on_signal):
                # Until the command ends (a release after its abort), or a cancel is asked for.
                await asyncio.wait({task, cancelled}, return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    await asyncio.wait({task}, timeout=CANCEL_GRACE)  # its cleanup; bounded
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            cancelled.cancel()
        outcome = self._outcome(task)
        if self.interrupted:
            self._report_interrupted(line, task.done())
        return outcome

    def _outcome(self, task: asyncio.Future[Outcome]) -> Outcome | None:
        if not task.done() or task.cancelled():
            return None
        error = task.exception()
        if error is None:
            return task.result()
        if not self.interrupted:
            raise error
        # Interrupted: say what stopped it, without a traceback; the report below says what is left.
        self._print(f"error while stopping: {type(error).__name__}: {error}")
        return None

    def _running(self) -> list[ReleaseEngine]:
        releases = getattr(self.service, "releases", None)
        return list(releases.active.values()) if releases is not None else []

    def _abort_releases(self, name: str) -> bool:
        """The first signal: abort every running release. False when none is running."""
        engines = self._running()
        for engine in engines:
            engine.abort(f"{self.user} ({name})")
        if not engines:
            return False
        apps = ", ".join(sorted(e.plan.app for e in engines))
        again = "SIGTERM stops it at once" if self.hung_up else "Press Ctrl-C again to exit at once"
        self._print(
            f"aborting ({name}): the release of {apps} stops before its next step; a node it stopped is "
            f"started and probed, and put back only if healthy. {again} (what is left drained will be listed)."
        )
        return True

    def _report_interrupted(self, line: str, finished: bool) -> None:
        for text in self.interrupted_lines(line, finished, self.release_state, self.interrupted or "?"):
            self._print(text)

    def interrupted_lines(self, line: str, finished: bool, state: ReleaseState | None, name: str) -> list[str]:
        """What an interrupted command left: a release's drained nodes, or where to look."""
        if state is not None:
            return self.left_drained_lines(state)
        if is_request(line, ReleaseRequest):
            return [f"interrupted ({name}): no release had started; nothing is left drained"]
        how = "stopped before it finished" if not finished else "ended"
        return [f"interrupted ({name}): `{line}` {how}; `/upstream status` shows where things are"]

    def left_drained_lines(self, state: ReleaseState) -> list[str]:
        """What the release left drained, each with the command that puts it back."""
        app = state.plan.app
        left: list[tuple[NodeState, str]] = [(n, "") for n in state.left_drained]
        # A drain write in flight when the release was cancelled may have landed: say so, do not hide it.
        left += [
            (n, " (its drain was being written when the release stopped: it may be drained)")
            for n in state.nodes.values()
            if n.phase is Phase.DRAINING and not n.drained
        ]
        if not left:
            return [f"{state.plan.title}: nothing is left drained"]
        lines = [f"{state.plan.title}: {len(left)} node(s) left drained:"]
        for node, note in left:
            command = self.put_back_form.format(f"/undrain {node.address} {app}")
            if node.stopped:
                lines.append(f"  {node.address}{note}: also left stopped; start it first, then: {command}")
            else:
                lines.append(f"  {node.address}{note}: {command}")
        return lines

    async def repl(self, banner: str = "") -> bool:
        """The demo's chat prompt: read commands until `exit` or end of input. False when a second
        Ctrl-C (or SIGTERM) during a command left it."""
        if banner:
            self._print(banner)
        while True:
            line = await self.ask("upstream-bot> ")
            if line is None or line in ("exit", "quit", "/exit", "/quit"):
                self._print("bye")
                return True
            if not line:
                continue
            await self.run_interruptible(line)
            if self.signals >= 2:
                self._print("leaving the demo")
                return False


def to_devnull(fd: int) -> None:
    """Point the file descriptor at /dev/null."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def is_request(line: str, kinds: type | UnionType) -> bool:
    """`line` parses as one of these requests (a line that does not parse is none of them)."""
    try:
        return isinstance(parse_line(line), kinds)
    except UserError:
        return False


def hung_up_outputs() -> set[int]:
    """Standard output and error, those of the two whose terminal has hung up: each now points at /dev/null.
    An empty write to a hung-up terminal fails (EIO); to a live one, a file or a pipe it writes nothing."""
    gone = set()
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError:
            with contextlib.suppress(OSError):
                to_devnull(fd)
            gone.add(fd)
    return gone


@contextlib.contextmanager
def signals_handled(loop: asyncio.AbstractEventLoop, handler: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP go to `handler` inside the block; the handlers before are put
    back."""
    # A signal ignored by whoever started us stays ignored: `nohup upstream-bot run "/release ..." &` is
    # how a release is kept past a logout, and a closing session must not abort it.
    handled = [sig for sig in SIGNAL_NAMES if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.getsignal(sig) for sig in handled}
    for sig in handled:
        loop.add_signal_handler(sig, handler, sig)
    try:
        yield
    finally:
        for sig, old in previous.items():
            loop.remove_signal_handler(sig)
            # remove_signal_handler puts Python's default back; asyncio.run had its own SIGINT handler
            # there (Ctrl-C at the demo's prompt relies on it).
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, old)
