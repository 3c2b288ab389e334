"""The demo's prompt on a terminal: a release runs in the background and the prompt keeps taking commands
(`/release status app`, `/release abort app`, `/upstream status app`, ...).

Who gets a line. One loop (`repl`) shows one prompt at a time, and a line goes to the prompt it was
typed at, never to another:
- with no question pending, the command prompt `upstream-bot> ` (held while a typed command runs, as
  before; a release stops holding it once it has started: it runs on in the background);
- with questions pending, the first of them, its text as the prompt; the next line answers it. The
  questions of the command being typed (Confirm?) come before those of running releases (a canary's
  end, a failed node), then oldest first.
- A question never takes the place of a prompt holding typed text: it is asked once that line is entered
  (or cleared). An empty prompt gives way at once, so the question is seen as soon as it is asked.
- At a release's question a line starting with `/` is a command, not an answer (answers are words, and
  abort is never one of them): `/release abort app` is typed there; the question is asked again after it.

Ctrl-C (a key while a prompt waits, SIGINT otherwise) means what the prompt it is pressed at is about:
- with text typed at a prompt other than a confirmation: the line is cleared, nothing else (as in a
  shell); with a release running a hint says what Ctrl-C on an empty prompt would do;
- at a confirmation (Confirm?, Type "yes"), typed at or not: "no"; at a command's own, the command is cancelled, nothing
  is done, and it says so; at a release's (the second ask of a dangerous answer: `restore_unhealthy`) the
  dangerous answer is not taken and the safe default is, saying so;
- on an empty command prompt, at a release's own question (node failed: retry | restore | leave?) and
  while a typed command holds the prompt, it is frontend.py's signal, as SIGINT and SIGTERM from outside
  are: the first aborts every running release, in the background or not, and lets it finish that abort
  (the release's question is moot then, and is taken down saying so; with no release running it cancels
  the command in progress); the second cancels everything at once and leaves the demo, listing what is
  left drained. With nothing running, Ctrl-C on an empty command prompt leaves the demo (as before), and
  so does SIGTERM.

Leaving (`exit`, Ctrl-D) while a release runs is refused, naming `/release abort`: leaving would stop the
demo with a node drained and maybe stopped. If the terminal itself goes away (SIGHUP: the window was
closed, ssh dropped; or its input closed), nobody is left to answer: the running releases are aborted and
waited for, at most HANG_UP_WAIT (then cancelled, as by a second signal, CANCEL_GRACE for their cleanup),
what is left drained is listed, and the demo ends. Once the terminal is gone, what would have been printed
is logged instead (stderr may be a file); a SIGHUP that comes again is the same hang-up, and a SIGINT or
SIGTERM after it stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.terminal.frontend import CANCEL_GRACE, SIGNAL_NAMES, TerminalFrontEnd, is_request, signals_handled
from bot.terminal.prompt import CtrlC, CtrlD, LineReader, Withdrawn, output_to_console
from commands.events import DecisionNeeded, Event, ReleaseFinished, ReleaseUpdate
from commands.release_state import ReleaseState
from commands.requests import ReleaseRequest, ReleaseResumeRequest
from commands.service import CommandService

log = logging.getLogger(__name__)
COMMAND_PROMPT = "upstream-bot> "
EXIT_WORDS = ("exit", "quit", "/exit", "/quit")
# The terminal went away: how long the aborted releases may take to finish their abort (the demo's steps
# and health window take up to 30 s each) before they are cancelled and what they leave is listed.
HANG_UP_WAIT = 60.0


def is_release(line: str) -> bool:
    """The command runs a release (or takes one up) once confirmed."""
    return is_request(line, ReleaseRequest | ReleaseResumeRequest)


@dataclass(eq=False)
class Question:
    prompt: str
    first: bool  # the typed command's own (a confirmation): before the releases' questions
    confirmation: bool  # Confirm?, Type "yes" (the command's, or a release's for a dangerous answer)
    answer: asyncio.Future[str | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    hinted: bool = False  # how to answer it (and how not to) was printed
    waiting_told: bool = False  # "a question waits" was printed


class Questions:
    """The questions waiting for a line, in the order they are put to the prompt."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self._pending: list[Question] = []
        self._changed = changed

    async def ask(self, prompt: str, first: bool, confirmation: bool) -> str | None:
        question = Question(prompt, first, confirmation)
        self._pending.append(question)
        self._changed()
        try:
            return await question.answer
        finally:  # answered, or given up on by its asker (the release moved on, Ctrl-C)
            self._pending.remove(question)
            self._changed()

    def current(self) -> Question | None:
        open_ = [q for q in self._pending if not q.answer.done()]
        return next((q for q in open_ if q.first), None) or next(iter(open_), None)


@dataclass(eq=False)
class Job:
    """A command typed at the prompt, running; `app` once it has become a running release."""

    line: str
    task: asyncio.Task[Any]
    app: str | None = None
    over: bool = False  # its release has ended (what follows is its audit entries): no reason to stay
    interrupted: str | None = None  # "Ctrl-C" / "SIGTERM" when a signal came while it ran
    reported: bool = False


class _CommandPrompt:
    """What `_shown` holds while the command prompt is up."""


COMMAND = _CommandPrompt()


class InteractiveFrontEnd(TerminalFrontEnd):
    """The terminal front end with a prompt_toolkit prompt and releases in the background (see above)."""

    def __init__(self, service: CommandService, reader: LineReader, **options: Any) -> None:
        self.questions = Questions(self._changed)
        super().__init__(service, ask=self._ask_command, **options)
        self.reader = reader
        reader.on_text_changed = self._give_way
        self.states: dict[str, ReleaseState] = {}  # the latest state of each app's release seen here
        self.foreground: Job | None = None  # the command holding the prompt
        self.background: list[Job] = []  # releases started here, running on
        self._change = asyncio.Event()
        self._shown: Question | _CommandPrompt | None = None
        self._leaving: str | None = None  # "bye", "now" (second signal), "closed" (the terminal went away)
        self._gone_why = ""  # what told that the terminal went away: "SIGHUP", "end of input"
        self._console = contextlib.ExitStack()  # the output sent above the prompt (output_to_console)

    # -- output and questions -------------------------------------------------------------------------

    def _write_line(self, line: str) -> None:
        self.reader.print_lines([line])

    def _lose_output(self, why: str) -> None:
        self._console.close()  # first: the log goes to stderr again, not above a prompt that is gone
        super()._lose_output(why)

    def _end_prompt_line(self) -> None:
        pass  # the prompt of a question given up on is taken down (and said so) by `_answer`

    async def _ask_command(self, prompt: str) -> str | None:
        return await self.questions.ask(prompt, first=True, confirmation=True)

    async def _ask_release(self, prompt: str, confirmation: bool = False) -> str | None:
        return await self.questions.ask(prompt, first=False, confirmation=confirmation)

    def _decision_prompt(self, event: DecisionNeeded, options: tuple[str, ...], default: str) -> str:
        # Asked while other things are printed and typed: the prompt itself says what it is about.
        about = f"{event.state.plan.app} {event.node}" if event.node else event.state.plan.app
        return f"[{about}] {super()._decision_prompt(event, options, default)}"

    async def emit(self, event: Event) -> None:
        if isinstance(event, ReleaseUpdate | ReleaseFinished | DecisionNeeded):
            self.states[event.state.plan.app] = event.state
        await super().emit(event)
        if isinstance(event, ReleaseUpdate) and not event.state.status.finished:
            self._to_background(event.state.plan.app)
        elif isinstance(event, ReleaseFinished):
            for job in self.background:
                job.over = job.over or job.task is asyncio.current_task()

    def _to_background(self, app: str) -> None:
        """The typed command has started a release: it runs on, and the prompt comes back."""
        job = self.foreground
        if job is None or asyncio.current_task() is not job.task:
            return
        job.app, self.foreground = app, None
        self.background.append(job)
        self._print(
            f"(the release of {app} runs in the background; the prompt takes commands: /release status {app}, "
            f"/release abort {app}; Ctrl-C aborts it)"
        )
        self._changed()

    # -- the loop ---------------------------------------------------------------------------------

    async def repl(self, banner: str = "") -> bool:
        """Until `exit` (True) or a second Ctrl-C/SIGTERM while something runs (False)."""
        if banner:
            self._print(banner)
        try:
            with self._console, signals_handled(asyncio.get_running_loop(), self._on_signal):
                self._console.enter_context(output_to_console(self.reader))
                while True:
                    ended = await self._step()
                    if ended is not None:
                        return ended
        finally:
            for job in self._jobs():  # left by an error or a cancel of the demo itself: not left running
                job.task.cancel()
            await self.reader.drain()

    async def _step(self) -> bool | None:
        self._change.clear()
        if self._leaving is not None:
            return await self._leave()
        question = self.questions.current()
        if question is not None:
            await self._answer(question)
        elif self.foreground is not None:
            await self._change.wait()  # the command runs: its end, a question or a signal wakes us
        else:
            await self._read_command()
        return None

    async def _read_command(self) -> None:
        self._shown = COMMAND
        try:
            line = (await self.reader.read(COMMAND_PROMPT, command=True)).strip()
        except Withdrawn:
            return
        except CtrlC as key:
            if key.typed:
                self._line_cleared()
            else:
                self._interrupt_by("Ctrl-C")
            return
        except CtrlD as eof:
            if eof.closed:
                self._hang_up("end of input")
            else:
                self._exit()
            return
        finally:
            self._shown = None
        if line in EXIT_WORDS:
            self._exit()
        elif line:
            self.foreground = self._start(line)

    async def _answer(self, question: Question) -> None:
        if not question.first and not question.hinted:
            question.hinted = True
            self._print(
                "(answer at the prompt; a line starting with / runs as a command instead, e.g. "
                "/release status <app> or /release abort <app>, and the question is asked again)"
            )
        self._shown = question
        try:
            answer: str | None = (await self.reader.read(question.prompt, command=False)).strip()
        except Withdrawn:
            if question.answer.cancelled():
                self._print(f"{question.prompt}(no longer asked)")
            return
        except CtrlC as key:
            if question.confirmation:  # Ctrl-C is "no": what asked says what that means (cancelled)
                self._print("(Ctrl-C: no)")  # under the prompt's line, left on the screen as it was
                answer = ""
            elif key.typed:
                self._line_cleared()  # the question is asked again
                return
            else:  # a release's question: the first signal (its abort answers the question)
                self._interrupt_by("Ctrl-C")
                return
        except CtrlD as eof:
            answer = None  # as at the end of piped input: the safe answer
            if eof.closed:
                self._hang_up("end of input")
        finally:
            self._shown = None
        if answer is not None and answer.startswith("/") and not question.first:
            self._command_at_question(answer)
        elif not question.answer.done():
            question.answer.set_result(answer)

    def _command_at_question(self, line: str) -> None:
        self.reader.remember(line)
        if self.foreground is not None:
            self._print(f"`{self.foreground.line}` is still running: type `{line}` once it has ended.")
        else:
            self.foreground = self._start(line)

    def _changed(self) -> None:
        self._change.set()
        self._give_way()

    def _give_way(self) -> None:
        """Take the shown prompt down when another should be shown and nothing is typed in it (or its
        question was given up on); with text typed it stays until Enter (see the module's doc)."""
        shown = self._shown
        if shown is None:
            return
        if isinstance(shown, Question) and shown.answer.done():
            self.reader.withdraw()  # given up on by its asker
            return
        wanted = self.questions.current() or (COMMAND if self.foreground is None else None)
        if wanted is shown:
            return
        if not self.reader.typed():
            self.reader.withdraw()
        elif isinstance(wanted, Question) and not wanted.waiting_told:
            wanted.waiting_told = True
            self._print("(a question waits: it is asked once the line being typed is entered or cleared)")

    # -- jobs, signals, leaving -----------------------------------------------------------------------

    def _jobs(self) -> list[Job]:
        return [*([self.foreground] if self.foreground else []), *self.background]

    def _start(self, line: str) -> Job:
        job = Job(line, asyncio.ensure_future(self.run_line(line)))
        job.task.add_done_callback(lambda _task: self._ended(job))
        return job

    def _ended(self, job: Job) -> None:
        if job is self.foreground:
            self.foreground = None
        elif job in self.background:
            self.background.remove(job)
        self._report(job)
        if not self._jobs() and self._leaving is None:
            self._reset_signals()  # nothing runs any more: the next Ctrl-C is a first one again
        self._changed()

    def _report(self, job: Job) -> None:
        """An error of a command, or what an interrupted one left (drained nodes)."""
        if job.reported:
            return
        job.reported = True
        task = job.task
        error = task.exception() if task.done() and not task.cancelled() else None
        if error is not None:
            log.error("`%s` failed", job.line, exc_info=error)
            self._print(f"error: {type(error).__name__}: {error}")
        if job.interrupted:
            state = self.states.get(job.app) if job.app else None
            finished = task.done() and not task.cancelled()
            for line in self.interrupted_lines(job.line, finished, state, job.interrupted):
                self._print(line)

    def _line_cleared(self) -> None:
        """Ctrl-C with text typed: the line is cleared, nothing else; with a release running, a hint."""
        if self.signals:
            self._print("(line cleared; Ctrl-C on an empty prompt stops everything at once and leaves the demo)")
        elif self._running():
            self._print("(line cleared; Ctrl-C on an empty prompt aborts the running release)")

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            self._hang_up("SIGHUP")
        else:
            self._interrupt_by(SIGNAL_NAMES.get(sig, sig.name))

    def _hang_up(self, why: str) -> None:
        """The terminal went away: leave as the module's doc says (once: a closing terminal may say it twice)."""
        if self.hung_up:
            log.info("%s: the terminal's going away is being handled already", why)
            return
        self.hung_up = True
        self._hang_up_outputs()  # printing fails now: lines go to the log, and the log to stderr again
        if self._leaving == "now":
            return  # stopping at once already
        self._gone_why = why
        self._leaving = "closed" if self._jobs() else "bye"
        self.signals = max(self.signals, 1)  # a SIGINT or SIGTERM from here on is a second signal
        self._changed()
        self.reader.withdraw()

    def _interrupt_by(self, name: str) -> None:
        jobs = self._jobs()
        if not jobs:
            self._leaving = "bye"
            self._changed()
            self.reader.withdraw()
            return
        self.signals += 1
        self.interrupted = self.interrupted or name
        self._interrupt.set()  # open release questions stop waiting: the abort answers them
        if self.signals == 1:
            self._first_signal(name)
            return
        self._print(f"{name}: stopping at once")
        for job in jobs:
            job.interrupted = job.interrupted or name
            job.task.cancel()
        self._leaving = "now"
        self._changed()
        self.reader.withdraw()

    def _first_signal(self, name: str) -> None:
        """Releases running: each is aborted and left to finish its abort (a command typed meanwhile runs
        on). None: the command in progress is cancelled. As frontend.py's module doc says."""
        if self._abort_releases(name):
            for job in self._jobs():
                if job.app is not None or is_release(job.line):  # a foreground one may not have said so yet
                    job.interrupted = job.interrupted or name
            return
        if self.foreground is not None:
            self.foreground.interrupted = name
            self._print(f"{name}: stopping at once")
            self.foreground.task.cancel()

    def _exit(self) -> None:
        running = sorted({job.app for job in self.background if job.app and not job.over})
        if not running:
            self._leaving = "bye"
        else:
            app = running[0]
            self._print(
                f"A release of {', '.join(running)} is running: leaving now would stop the demo with a node "
                f"drained (and maybe stopped). `/release abort {app}` (or Ctrl-C) stops it safely; "
                "exit once it has ended."
            )

    async def _leave(self) -> bool:
        jobs = self._jobs()
        if self._leaving == "closed":
            why = self._gone_why
            self._print(
                f"{why}: the terminal went away; aborting the running release(s), waiting for the abort "
                f"(at most {HANG_UP_WAIT:g} s) before leaving"
            )
            for job in jobs:
                job.interrupted = job.interrupted or why
            self._interrupt.set()
            self._abort_releases(why)
            if self.foreground is not None:
                self.foreground.task.cancel()  # its questions would never be answered
            # The last job may have ended since the hang-up was seen: nothing to wait for then.
            _done, pending = await asyncio.wait({job.task for job in jobs}, timeout=HANG_UP_WAIT) if jobs else ((), ())
            if pending and self._leaving == "closed":
                self._print(f"{why}: the abort has not ended after {HANG_UP_WAIT:g} s: stopping at once")
                for job in jobs:
                    job.task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CANCEL_GRACE)  # their cleanup; bounded
        elif jobs:  # "now": their cleanup after the cancel; "bye": ended releases writing their audit entries
            await asyncio.wait({job.task for job in jobs}, timeout=CANCEL_GRACE)  # bounded
        for job in jobs:
            self._report(job)  # those still cleaning up after the grace: what they leave, as of now
        if self._leaving == "now":
            self._print("leaving the demo")
            return False
        self._print("bye")
        return True
