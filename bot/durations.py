"""Durations in the config: `500ms`, `10s`, `2m`, `1h` (a bare number is seconds)."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_SECONDS = 366 * 86400.0  # no wait, window or timeout here needs more; timers (APScheduler) overflow far out
# Also the config schema's pattern for a duration (an editor checks what is typed with it).
DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$"
_PATTERN = re.compile(DURATION_PATTERN)


def parse_duration(value: object) -> float:
    """Seconds (finite: YAML's .inf and .nan are refused; at most a year), or ValueError with a message
    that shows the accepted form."""
    if isinstance(value, bool):
        raise _not_a_duration(value)
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range
            raise _not_a_duration(value) from None
    else:
        match = _PATTERN.match(str(value))
        if not match:
            raise _not_a_duration(value)
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds):  # before the sign: -inf is not a duration either
        raise _not_a_duration(value)
    if seconds < 0:  # only a number can be: the pattern has no sign
        raise ValueError(f"{value!r} is negative; a duration is 0 or more")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{value!r} is longer than a year (366 days): no duration here needs that much")
    return seconds


def _not_a_duration(value: object) -> ValueError:
    return ValueError(f"{value!r} is not a duration (use e.g. 500ms, 10s, 2m, 1h)")


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s".replace(".0s", "s")
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
