"""Timeouts as deadlines.

Ray's ``-1 / 0 / seconds`` is converted once, at the caller (the runtime). Inside the
transports a timeout is ``None`` (wait forever) or seconds >= 0, turned into a
``time.monotonic()`` deadline at entry, so that waits on several channels share one
budget (trio's ``move_on_after`` does the same).
"""

from __future__ import annotations

import math
import time


def deadline_after(timeout_s: float | None) -> float:
    """The monotonic time at which a wait of ``timeout_s`` seconds ends (inf: never)."""
    if timeout_s is None:
        return math.inf
    if timeout_s < 0:
        raise ValueError(f"timeout_s must be None or >= 0, got {timeout_s!r}")
    return time.monotonic() + timeout_s


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (never negative; inf for no deadline)."""
    if deadline == math.inf:
        return math.inf
    return max(0.0, deadline - time.monotonic())
