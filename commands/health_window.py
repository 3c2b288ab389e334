"""The probe window, shared by the release engine and the health watch.

A node is healthy after `rise` consecutive passes. It has failed its window when it has not become
healthy within `window` of the window's start (release) or has failed continuously for `window`
(watch). A failure shorter than the window is a flap, not an alert.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from commands.interfaces import ProbeResult


class Verdict(enum.Enum):
    PENDING = "pending"  # not decided yet: keep probing
    HEALTHY = "healthy"  # `rise` consecutive passes
    FAILED = "failed"  # the window ran out


@dataclass
class HealthWindow:
    window: float
    rise: int
    started_at: float
    passes: int = 0
    failing_since: float | None = None  # the first failure of the current failing run
    last: ProbeResult | None = None

    def record(self, at: float, result: ProbeResult) -> Verdict:
        """Add a probe result taken at `at`; the verdict for a release's window."""
        self.last = result
        if result.healthy:
            self.passes += 1
            self.failing_since = None
        else:
            self.passes = 0
            if self.failing_since is None:
                self.failing_since = at
        if self.passes >= self.rise:
            return Verdict.HEALTHY
        if at - self.started_at >= self.window:
            return Verdict.FAILED
        return Verdict.PENDING

    def failed_continuously(self, at: float) -> bool:
        """The watch's rule: failing without a break for the whole window."""
        return self.failing_since is not None and at - self.failing_since >= self.window

    @property
    def recovered(self) -> bool:
        return self.passes >= self.rise
