"""Tear a graph down from another thread while the caller is in the middle of
executions. The caller must get RayChannelError (never hang), the actors must be
reusable at once, and nothing is left behind."""

from __future__ import annotations

import collections
import random
import threading
import time

import ray
from ray.dag import InputNode
from ray.exceptions import RayChannelError

import raycg

from ._harness import Outcome, cli, expect_error, kill_all, make_stages, no_leaks


def run(seed: int) -> Outcome:
    rng = random.Random(seed)
    delay, inflight_max = rng.uniform(0.05, 0.5), rng.choice([1, 4, 8])
    stages = make_stages(2)
    torn_at: list[float] = []
    try:
        with no_leaks(stages):
            with InputNode() as inp:
                dag = stages[1].work.bind(stages[0].work.bind(inp))
            graph = raycg.compile(dag, max_inflight_executions=inflight_max, get_timeout=-1)
            inflight: collections.deque = collections.deque()

            def step() -> None:
                inflight.append(graph.execute(1))
                if len(inflight) >= inflight_max:
                    ray.get(inflight.popleft())

            def tearer() -> None:
                time.sleep(delay)
                torn_at.append(time.monotonic())
                graph.teardown()

            t = threading.Thread(target=tearer)
            t.start()
            err, took = expect_error(step, RayChannelError, torn_at)
            t.join(10)
            with InputNode() as inp:
                again = raycg.compile(stages[0].inc.bind(inp))  # reusable at once
            assert ray.get(again.execute(1)) == 2
            again.teardown()
        return Outcome(
            "teardown_midway",
            seed,
            f"teardown after {delay:.2f} s, {inflight_max} in flight",
            type(err).__name__,
            took,
        )
    finally:
        kill_all(stages)


if __name__ == "__main__":
    cli(run)
