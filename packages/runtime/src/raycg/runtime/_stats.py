"""The recorders behind ``graph.stats()``: counts and latency percentiles.

Gathered always, cheaply: each executor keeps, per task and per channel it reads, a
count and the last ``SAMPLES`` durations in a preallocated ring (two
``perf_counter_ns`` calls and a list store per event, no allocation). The caller
fetches their summaries from every actor only when asked (``_stats_report``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

SAMPLES = 1024
now_ns = time.perf_counter_ns

#: On by default; ``RAYCG_STATS=0`` in an actor's environment turns its recording off
#: (read when the actor sets a graph up). What it costs is in docs/benchmarks.md.
STATS_ENABLED = os.environ.get("RAYCG_STATS", "1") != "0"


class Recorder:
    """A count, an error count and the last SAMPLES durations (ns) of one thing."""

    __slots__ = ("count", "errors", "samples")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.samples = [0] * SAMPLES

    def add(self, duration_ns: int) -> None:
        self.samples[self.count % SAMPLES] = duration_ns
        self.count += 1

    def summary(self) -> dict[str, Any]:
        import numpy as np  # here, not at import: actors would pay ~40 ms at their first setup

        kept = np.asarray(self.samples[: min(self.count, SAMPLES)], dtype=np.float64) / 1e3
        pct = np.percentile(kept, [50, 90, 99]) if len(kept) else [float("nan")] * 3
        return {
            "count": self.count,
            "errors": self.errors,
            "p50_us": round(float(pct[0]), 2),
            "p90_us": round(float(pct[1]), 2),
            "p99_us": round(float(pct[2]), 2),
        }


def timed(fn: Callable[..., Any], rec: Recorder) -> Callable[..., Any]:
    """``fn``, recording how long each call takes (the executor's loop stays plain)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        t0 = now_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            rec.add(now_ns() - t0)

    return call
