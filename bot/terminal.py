"""The terminal front end: the demo's chat prompt and `upstream-bot run`. Same events, as lines."""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

from bot.text_render import event_lines
from commands.errors import UserError
from commands.events import (
    AbortRequested,
    ApprovalRequested,
    ConfirmationNeeded,
    DecisionNeeded,
    Event,
    Problem,
    ReleasePlanned,
)
from commands.grammar import parse_line
from commands.service import CommandService, Outcome

Ask = Callable[[str], Awaitable[str | None]]  # prompt -> answer, None at end of input


async def ask_stdin(prompt: str) -> str | None:
    def read() -> str | None:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        line = sys.stdin.readline()
        return None if line == "" else line.strip()

    return await asyncio.to_thread(read)


def terminal_user() -> str:
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return "local:unknown"


class TerminalFrontEnd:
    """Runs one command line at a time; confirmations are asked at the prompt (or given by --yes)."""

    def __init__(
        self,
        service: CommandService,
        ask: Ask = ask_stdin,
        out: TextIO | None = None,
        assume_yes: bool = False,
        user: str | None = None,
    ) -> None:
        self.service = service
        self.ask = ask
        self.out = out or sys.stdout
        self.assume_yes = assume_yes
        self.user = user or terminal_user()
        self._pending: ConfirmationNeeded | ReleasePlanned | AbortRequested | None = None

    async def emit(self, event: Event) -> None:
        if isinstance(event, ConfirmationNeeded | ReleasePlanned | AbortRequested):
            self._pending = event
        for line in event_lines(event):
            print(line, file=self.out, flush=True)
        if isinstance(event, ApprovalRequested):
            print(
                f"Refused here: {event.plan.app} has approval: required, and a terminal cannot collect a "
                "second person's approval. Run the release from Slack.",
                file=self.out,
                flush=True,
            )
        elif isinstance(event, DecisionNeeded):
            await self._decide(event)

    async def _decide(self, event: DecisionNeeded) -> None:
        if event.kind == "canary":
            go = self.assume_yes or (await self.ask("Continue with the rest? [y/N] ") or "").lower() in ("y", "yes")
            choice = "continue" if go else "abort"
        elif self.assume_yes:
            choice = "leave"  # unattended: the safe choice; the node stays drained, nothing else is touched
        else:
            answer = (await self.ask("retry, restore (put it back anyway) or leave it drained? [leave] ") or "").lower()
            choice = answer if answer in ("retry", "restore", "leave") else "leave"
        print(f"decision: {choice}", file=self.out, flush=True)
        await self.service.decide(event.state.plan.app, event.decision_id, choice, self.user, self)

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
                print("Cancelled; nothing was changed.", file=self.out, flush=True)
                return Outcome.REFUSED
            if isinstance(pending, ConfirmationNeeded):
                outcome = await self.service.confirm(pending.plan, pending.stage, self.user, self)
            elif isinstance(pending, ReleasePlanned):
                outcome = await self.service.start_release(pending.plan, pending.stage, self.user, self)
            else:
                outcome = await self.service.abort_release(pending.app, pending.release_id, self.user, self)
        return outcome

    async def _confirmed(self, pending: ConfirmationNeeded) -> bool:
        if self.assume_yes:
            print(
                f"confirmed by --yes ({'second ' if pending.stage > 1 else ''}confirmation)", file=self.out, flush=True
            )
            return True
        if pending.stage >= 2:
            answer = await self.ask('Type "yes" to go ahead anyway, anything else cancels: ')
            return answer == "yes"
        answer = await self.ask("Confirm? [y/N] ")
        if answer is None:
            print("No answer (end of input); pass --yes to confirm from a script.", file=self.out, flush=True)
            return False
        return answer.lower() in ("y", "yes")

    async def repl(self, banner: str = "") -> None:
        """The demo's chat prompt: read commands until `exit` or end of input."""
        if banner:
            print(banner, file=self.out, flush=True)
        while True:
            line = await self.ask("upstream-bot> ")
            if line is None or line in ("exit", "quit", "/exit", "/quit"):
                print("bye", file=self.out, flush=True)
                return
            if not line:
                continue
            await self.run_line(line)
