"""Fill a graph past its capacity, with and without zero-copy results held by the
caller. RayCgraphCapacityExceeded must come at once (naming the held value in the
second case), and the graph must run again once results are fetched or dropped."""

from __future__ import annotations

import random
import time

import numpy as np
import ray
from ray.dag import InputNode
from ray.exceptions import RayCgraphCapacityExceeded

import raycg

from ._harness import Outcome, cli, expect_error, kill_all, make_stages, no_leaks


def run(seed: int) -> Outcome:
    rng = random.Random(seed)
    inflight, buffered = rng.randint(1, 4), rng.randint(1, 8)
    hold = rng.random() < 0.5
    if hold:
        buffered = max(buffered, inflight)  # so that the pin, not the buffer, is what blocks
    stages = make_stages(1)
    try:
        with no_leaks(stages):
            with InputNode() as inp:
                graph = raycg.compile(
                    stages[0].work.bind(inp, 0.0),
                    max_inflight_executions=inflight,
                    max_buffered_results=buffered,
                    submit_timeout=-1,
                )
            refs, held = [], None
            if hold:
                held = ray.get(graph.execute(np.zeros(1 << 17)))  # 1 MB, pins its slot
            since = time.monotonic()
            err, took = expect_error(
                lambda: refs.append(graph.execute(np.zeros(1 << 17))), RayCgraphCapacityExceeded, since
            )
            if hold:
                assert "numpy.ndarray(shape=(131072,)" in str(err), str(err)
                # Execution k writes slot k % inflight; execution `inflight` needs the held
                # slot, and the caller drains it during execute number 2 * inflight.
                expected = 2 * inflight - 1
            else:
                expected = inflight + buffered
            assert len(refs) == expected, (len(refs), expected)
            del held
            for ref in refs:  # one at a time: each result is dropped before the next
                ray.get(ref)
            assert ray.get(graph.execute(1)) == 1  # running again
            graph.teardown()
        return Outcome(
            "exhaust_capacity",
            seed,
            f"{'held zero-copy, ' if hold else ''}inflight={inflight} buffered={buffered}",
            type(err).__name__,
            took,
        )
    finally:
        kill_all(stages)


if __name__ == "__main__":
    cli(run)
