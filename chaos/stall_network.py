"""Stall a gRPC stream between nodes (the stream fault hook, in the remote stage only,
through RAYCG_FAULTS): the caller gets RayChannelTimeoutError within the bound, then the
late result, and the graph goes on."""

from __future__ import annotations

import json
import random
import time

import ray
from ray.dag import InputNode
from ray.exceptions import RayChannelTimeoutError

import raycg

from . import _nodes
from ._harness import Outcome, expect_error, kill_all, no_leaks


def run(seed: int) -> Outcome:
    rng = random.Random(seed)
    after, node = rng.randint(0, 10), rng.choice(_nodes.NODES)
    fault = {"op": "stream", "channel": "", "after": after, "kind": "stall", "seconds": 1.5}
    stages = _nodes.on(node, runtime_env={"env_vars": {"RAYCG_FAULTS": json.dumps([fault])}})
    try:
        with no_leaks(stages):
            with InputNode() as inp:
                dag = stages[0].work.bind(inp, 0.0)
            graph = raycg.compile(dag, get_timeout=0.3)
            for i in range(after):
                assert ray.get(graph.execute(i)) == i
            since = time.monotonic()
            ref = graph.execute("late")
            err, took = expect_error(lambda: ray.get(ref), RayChannelTimeoutError, since)
            assert ray.get(ref, timeout=10) == "late"  # the stall ended: nothing was lost
            assert ray.get(graph.execute(1), timeout=10) == 1
            graph.teardown()
        return Outcome(
            "stall_network", seed, f"stall {node}'s stream after {after}", type(err).__name__, took
        )
    finally:
        kill_all(stages)


if __name__ == "__main__":
    _nodes.cli(run)
