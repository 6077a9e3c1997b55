"""Cut a gRPC stream between nodes (the stream fault hook, in the remote stage only): the
caller gets RayChannelError within the bound (once it found every actor alive), the graph
is torn down, and the stage takes a new graph. (A lost message is noticed by the message
after it: test_grpc.py covers it; a graph whose last value is lost sees
RayChannelTimeoutError instead.)"""

from __future__ import annotations

import json
import random
import time

import ray
from ray.dag import InputNode
from ray.exceptions import RayChannelError

import raycg
from raycg.runtime._remote_death import PROBE_S

from . import _nodes
from ._harness import ERROR_BOUND_S, Outcome, expect_error, kill_all, no_leaks


def run(seed: int) -> Outcome:
    rng = random.Random(seed)
    kind, after, node = "cut", rng.randint(1, 10), rng.choice(_nodes.NODES)
    fault = {"op": "stream", "channel": "", "after": after, "kind": kind}
    stages = _nodes.on(node, runtime_env={"env_vars": {"RAYCG_FAULTS": json.dumps([fault])}})
    try:
        with no_leaks(stages):
            with InputNode() as inp:
                dag = stages[0].inc.bind(inp)
            graph = raycg.compile(dag, get_timeout=10)
            for i in range(after):
                assert ray.get(graph.execute(i)) == i + 1
            since = time.monotonic()
            # Everyone alive: the caller asks Ray who died for its whole bound first.
            bound = ERROR_BOUND_S + PROBE_S
            err, took = expect_error(lambda: ray.get(graph.execute(0)), RayChannelError, since, bound)
            graph.teardown()
            # The stage is fine: a new graph on it runs (its faults were spent).
            with InputNode() as inp:
                dag = stages[0].work.bind(inp, 0.0)
            again = raycg.compile(dag, get_timeout=10)
            assert ray.get(again.execute("again")) == "again"
            again.teardown()
        return Outcome("cut_network", seed, f"{kind} {node}'s stream after {after}", type(err).__name__, took)
    finally:
        kill_all(stages)


if __name__ == "__main__":
    _nodes.cli(run)
