"""Fill a graph pipelined across head, w1 and w2 past its capacity, with and without
zero-copy results (numpy arrays, read in place from the head's ring) held by the
caller. RayCgraphCapacityExceeded must come at once, naming the held value in the
second case, and the graph must run again once the results are fetched or dropped."""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import ray
from ray.exceptions import RayCgraphCapacityExceeded

import raycg

from .._harness import Outcome
from . import _drive

BOUND_S = 2.0  # "at once": no wait for a timeout


def drive(seed: int, args: argparse.Namespace) -> None:
    rng = random.Random(seed)
    inflight, buffered = rng.randint(1, 4), rng.randint(1, 8)
    stages = list(_drive.make_stages().values())
    from ray.dag import InputNode

    with InputNode() as inp:
        dag = inp
        for s in stages:
            dag = s.work.bind(dag, 0.0)
    graph = raycg.compile(
        dag, max_inflight_executions=inflight, max_buffered_results=max(buffered, inflight), submit_timeout=-1
    )
    value = np.zeros(1 << 17)  # 1 MB
    assert ray.get(graph.execute(value)).shape == value.shape
    _drive.say("READY")
    held = ray.get(graph.execute(value)) if args.hold else None
    refs: list[object] = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 60:
            refs.append(graph.execute(value))
        raise AssertionError("no RayCgraphCapacityExceeded within 60 s")
    except RayCgraphCapacityExceeded as e:
        took = time.monotonic() - t0
        err = e
    if args.hold:
        assert "numpy.ndarray(shape=(131072,)" in str(err), str(err)
    del held
    for ref in refs:  # one at a time: each result dropped before the next
        ray.get(ref)
    assert ray.get(graph.execute(1)) == 1  # running again
    graph.teardown()
    _drive.wait_idle(stages)
    _drive.result(
        error=type(err).__name__, took=round(took, 4), refs=len(refs), inflight=inflight, buffered=buffered
    )


def run(seed: int, variant: str | None = None) -> Outcome:
    """``variant``: "hold" (a zero-copy result held) or "free"; by default the seed chooses."""
    from ._host import clean, cluster, outcome, start  # host only: Docker SDK

    c = cluster()
    hold = random.Random(seed).random() < 0.5 if variant is None else variant == "hold"
    driver = start(c, "exhaust_capacity", seed, *(["--hold"] if hold else []))
    res = driver.result(120)
    # Submitting is all on the driver: its own clock times it.
    assert res["took"] <= BOUND_S + 0.5 * res["refs"], res
    clean(c)
    kind = "held zero-copy result, across nodes" if hold else "inflight and buffered full, across nodes"
    detail = f"inflight={res['inflight']} buffered={res['buffered']}, {res['refs']} executions accepted"
    return outcome("exhaust_capacity", seed, kind, str(res["error"]), float(res["took"]), detail)


if __name__ == "__main__":
    _drive.main(drive, lambda p: p.add_argument("--hold", action="store_true"))
