"""Stall or corrupt a channel inside a stage (the transports' fault hook, enabled in
that actor only through RAYCG_FAULTS). A stall must give the caller
RayChannelTimeoutError within the bound and the late results afterwards (the graph
keeps running); a corrupt header must give RayChannelError and a torn-down graph."""

from __future__ import annotations

import json
import random
import time

import ray
from ray.dag import InputNode
from ray.exceptions import RayChannelError, RayChannelTimeoutError

import raycg

from ._harness import Outcome, cli, expect_error, kill_all, make_stages, no_leaks


def run(seed: int) -> Outcome:
    rng = random.Random(seed)
    kind, after = rng.choice(["stall", "corrupt"]), rng.randint(0, 20)
    op = rng.choice(["read", "write"]) if kind == "stall" else "write"
    fault = {"op": op, "channel": "", "after": after, "kind": kind, "seconds": 1.5}
    faulty = make_stages(1, runtime_env={"env_vars": {"RAYCG_FAULTS": json.dumps([fault])}})
    stages = [*make_stages(1), *faulty]
    try:
        with no_leaks(stages):
            with InputNode() as inp:
                dag = stages[1].work.bind(stages[0].work.bind(inp, 0.0), 0.0)
            graph = raycg.compile(dag, get_timeout=0.3)
            for i in range(after):
                assert ray.get(graph.execute(i)) == i
            since = time.monotonic()
            if kind == "stall":
                ref = graph.execute("late")
                err, took = expect_error(lambda: ray.get(ref), RayChannelTimeoutError, since)
                assert ray.get(ref, timeout=10) == "late"  # the late result, then business as usual
                assert ray.get(graph.execute(1)) == 1
                graph.teardown()
            else:
                err, took = expect_error(lambda: ray.get(graph.execute(1)), RayChannelError, since)
                try:
                    graph.execute(1)
                    raise AssertionError("the graph still runs after a corrupt header")
                except RayChannelError:
                    pass  # torn down
        return Outcome("stall_channel", seed, f"{kind} {op} after {after}", type(err).__name__, took)
    finally:
        kill_all(stages)


if __name__ == "__main__":
    cli(run)
