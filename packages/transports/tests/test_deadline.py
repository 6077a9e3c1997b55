"""Timeouts become monotonic deadlines once, at entry."""

from __future__ import annotations

import math
import time

import pytest

from raycg.transports._deadline import deadline_after, remaining


def test_none_waits_forever() -> None:
    assert deadline_after(None) == math.inf
    assert remaining(math.inf) == math.inf


def test_zero_is_already_due() -> None:
    assert remaining(deadline_after(0)) == 0.0


def test_remaining_counts_down_and_never_goes_negative() -> None:
    deadline = deadline_after(3600)
    assert 0 < remaining(deadline) <= 3600
    assert remaining(time.monotonic() - 5) == 0.0


def test_a_deadline_is_shared_by_successive_waits() -> None:
    deadline = deadline_after(3600)
    first = remaining(deadline)
    time.sleep(0.01)
    assert remaining(deadline) < first  # one budget, not a fresh timeout per wait


@pytest.mark.parametrize("timeout_s", [-1, -0.001])
def test_negative_timeout_is_refused(timeout_s: float) -> None:
    # Ray's -1 ("forever") is converted by the caller; here it is a mistake.
    with pytest.raises(ValueError, match="timeout_s"):
        deadline_after(timeout_s)
