"""Durations in the config: `500ms`, `10s`, `2m`, `1h` (a bare number is seconds)."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_SECONDS = 366 * 86400.0  # no wait, window or timeout here needs more; timers (APScheduler) overflow far out
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: object) -> float:
    """Seconds (finite: YAML's .inf and .nan are refused), or ValueError with a message that shows the
    accepted form."""
    not_a_duration = ValueError(f"{value!r} is not a duration (use e.g. 500ms, 10s, 2m, 1h)")
    if isinstance(value, bool):
        raise not_a_duration
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range
            raise not_a_duration from None
        if not math.isfinite(seconds):
            raise not_a_duration
        if seconds < 0:
            raise ValueError(f"{value!r} is negative; a duration is 0 or more")
        return _bounded(value, seconds)
    match = _PATTERN.match(str(value))
    if not match:
        raise not_a_duration
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds):  # digits past float's range
        raise not_a_duration
    return _bounded(value, seconds)


def _bounded(value: object, seconds: float) -> float:
    if seconds > MAX_SECONDS:
        raise ValueError(f"{value!r} is longer than a year (366 days): no duration here needs that much")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s".replace(".0s", "s")
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
