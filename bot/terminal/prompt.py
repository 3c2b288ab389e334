"""The demo's prompt on a terminal, through prompt_toolkit: line editing, history (up/down), Ctrl-L, lines
of any length (the terminal is in raw mode while the prompt waits: no 4,095-character canonical limit),
and output printed above the prompt, which is then drawn again with what was typed so far.

Everything the front end prints goes through `print_lines`, on the event loop: straight to the terminal
when no prompt is shown, above it when one is (prompt_toolkit's `run_in_terminal`, which erases the prompt,
writes and draws it again). Other writers (a warning, a log record, a stray print, possibly from another
thread) are sent the same way by `output_to_console` for as long as the prompt runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol, TextIO, cast

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.utils import is_dumb_terminal


class CtrlC(Exception):
    """Ctrl-C at the prompt: in raw mode the terminal sends it as a key, not as SIGINT."""

    def __init__(self, typed: str = "") -> None:
        super().__init__("Ctrl-C")
        self.typed = typed  # what the line held when it was pressed


class CtrlD(Exception):
    """Ctrl-D on an empty line (`closed` False: the terminal is still there), or the input closed."""

    def __init__(self, closed: bool = False) -> None:
        super().__init__("end of input")
        self.closed = closed


class Withdrawn(Exception):
    """The prompt was taken down (`withdraw`) to show another one: nothing was entered."""


class LineReader(Protocol):
    """One prompt at a time. The interactive front end needs only this (tests drive it with a fake)."""

    on_text_changed: Callable[[], None]

    async def read(self, prompt: str, command: bool) -> str:
        """The line entered at `prompt`; raises CtrlC, CtrlD or Withdrawn."""
        ...

    def typed(self) -> str | None:
        """The text of the prompt shown now; None when none is shown."""
        ...

    def withdraw(self) -> None:
        """Take the prompt shown now down (its `read` raises Withdrawn); nothing when none is shown."""
        ...

    def remember(self, line: str) -> None:
        """Put `line` into the commands' history (a command typed at a question's prompt)."""
        ...

    def print_lines(self, lines: list[str]) -> None:
        """Print above the prompt (or plainly, when none is shown), in the order of the calls."""
        ...

    async def drain(self) -> None:
        """Until everything printed so far is on the terminal."""
        ...


_WITHDRAWN = object()  # the result a withdrawn prompt ends with


class PromptReader:
    """`LineReader` on the process's terminal. Commands and answers have their own sessions: the answers
    ("y", "retry") are kept out of the commands' history, so up-arrow recalls commands only."""

    def __init__(self) -> None:
        self.commands = self._session()
        self.answers = self._session()
        self._shown: PromptSession[object] | None = None
        self.on_text_changed: Callable[[], None] = lambda: None
        self._deferred: list[str] | None = None  # text waiting for its turn above the prompt
        self._last_write: Awaitable[None] | None = None

    def _session(self) -> PromptSession[object]:
        session: PromptSession[object] = PromptSession(
            history=InMemoryHistory(), interrupt_exception=CtrlC, eof_exception=CtrlD
        )
        session.default_buffer.on_text_changed += lambda _buffer: self.on_text_changed()
        return session

    async def read(self, prompt: str, command: bool) -> str:
        session = self.commands if command else self.answers
        session.app.erase_when_done = False  # a withdrawn prompt set it: an entered line stays on screen
        self._shown = session
        try:
            # SIGINT (kill -INT, or Ctrl-C while no prompt is shown) stays with the front end's handler;
            # an error in another task must not be shown by prompt_toolkit, which waits for Enter.
            result = await session.prompt_async(prompt, handle_sigint=False, set_exception_handler=False)
        except CtrlC:
            raise CtrlC(session.default_buffer.text) from None
        except (CtrlD, EOFError):  # EOFError: prompt_toolkit's own, when the input closes
            raise CtrlD(closed=session.app.input.closed) from None
        except OSError:  # drawing the prompt failed: the terminal hung up (EIO)
            raise CtrlD(closed=True) from None
        finally:
            self._shown = None
        if result is _WITHDRAWN:
            raise Withdrawn()
        return str(result)

    def typed(self) -> str | None:
        return None if self._shown is None else self._shown.default_buffer.text

    def withdraw(self) -> None:
        app = self._shown.app if self._shown is not None else None
        if app is None or not app.is_running or app.future is None or app.future.done():
            return
        app.erase_when_done = True  # nothing was entered: leave no prompt line behind
        app.exit(result=_WITHDRAWN)

    def remember(self, line: str) -> None:
        self.commands.history.append_string(line)

    def _prompt_running(self) -> bool:
        return self._shown is not None and self._shown.app.is_running

    def print_lines(self, lines: list[str]) -> None:
        text = "".join(f"{line}\n" for line in lines)
        if self._deferred is not None:  # a write above the prompt waits for its turn: after it, in order
            self._deferred.append(text)
        elif not self._prompt_running():
            self._write(text)
        else:
            # Lines printed in the same turn of the loop are drawn together: one redraw, not one per line.
            self._deferred = [text]
            self._last_write = run_in_terminal(self._write_deferred)

    def _write_deferred(self) -> None:
        text, self._deferred = "".join(self._deferred or []), None
        self._write(text)

    def _write(self, text: str) -> None:
        output = self.commands.app.output
        output.write(text)  # escape sequences in it are neutralised: a line cannot move the cursor
        with contextlib.suppress(OSError):  # the terminal hung up: the front end logs what it prints then
            output.flush()

    async def drain(self) -> None:
        if self._last_write is not None:
            with contextlib.suppress(Exception):
                await self._last_write
        if self._deferred is not None:
            self._write_deferred()


class ConsoleStream(io.TextIOBase):
    """A text stream whose complete lines go to `print_lines` on the loop (from any thread)."""

    def __init__(self, reader: LineReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._reader = reader
        self._loop = loop
        self._partial = ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        if lines:
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
                self._loop.call_soon_threadsafe(self._reader.print_lines, lines)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.write("\n")

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def output_to_console(reader: LineReader) -> Iterator[None]:
    """sys.stdout, sys.stderr and the log go above the prompt while it runs (not across the prompt line)."""
    stream = cast(TextIO, ConsoleStream(reader, asyncio.get_running_loop()))
    originals = (sys.stdout, sys.stderr)
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream in (*originals, sys.__stdout__, sys.__stderr__)
    ]
    previous = [h.setStream(stream) for h in handlers]
    sys.stdout = sys.stderr = stream
    try:
        yield
    finally:
        stream.flush()
        sys.stdout, sys.stderr = originals
        for handler, old in zip(handlers, previous, strict=True):
            if old is not None:
                handler.setStream(old)


def on_terminal() -> bool:
    """True when the prompt is a person at a terminal that can edit a line (not a pipe, a file, a test's
    stdin, or TERM=dumb, where prompt_toolkit falls back to a plain prompt that cannot give way)."""
    try:
        return sys.stdin.isatty() and sys.stdout.isatty() and not is_dumb_terminal()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
