"""Stall one member of a collective (the communicator's fault hook, enabled in that
actor only through RAYCG_COMM_FAULTS) at a random execution. The caller must get
RayChannelTimeoutError within the get timeout (plus the bound); teardown must return,
abort the communicator and leave no thread blocked in it; the actors then serve a new
graph."""

from __future__ import annotations

import json
import random
import time

import ray
import torch
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import RayChannelTimeoutError

import raycg
import raycg.collective

from ._harness import Outcome, cli, expect_error, kill_all, make_stages, no_leaks

GET_TIMEOUT_S = 0.5
KINDS = ("allreduce", "allgather", "reducescatter", "broadcast")


def run(seed: int) -> Outcome:
    rng = random.Random(seed)
    kind, victim, after = rng.choice(KINDS), rng.randrange(3), rng.randint(0, 10)
    # Each execution is two calls on every member (the failure flag, then the collective):
    # stalling call 2 * after is the member never joining execution `after`.
    stall = {"rank": victim, "op": "", "after": 2 * after, "seconds": 3600}
    env = {"env_vars": {"RAYCG_COMM_FAULTS": json.dumps([stall])}}
    stages = [*make_stages(victim), *make_stages(1, runtime_env=env), *make_stages(2 - victim)]
    try:
        with no_leaks(stages):
            with InputNode() as inp:
                made = [s.work.bind(inp, 0.0) for s in stages]
                bind = getattr(raycg.collective, kind).bind
                dag = MultiOutputNode(bind(made, src_rank=1) if kind == "broadcast" else bind(made))
            graph = raycg.compile(dag, get_timeout=GET_TIMEOUT_S)
            x = torch.arange(6, dtype=torch.float32)
            for _ in range(after):  # healthy executions: not bound by the stall's short timeout
                assert len(ray.get(graph.execute(x), timeout=60)) == 3
            refs = graph.execute(x)
            since = time.monotonic() + GET_TIMEOUT_S
            err, took = expect_error(lambda: ray.get(refs[0]), RayChannelTimeoutError, since)
            graph.teardown()  # returns: the communicator is aborted, nothing stays blocked
        with InputNode() as inp:  # the actors serve a new graph
            dag = stages[2].work.bind(stages[1].work.bind(stages[0].work.bind(inp, 0.0), 0.0), 0.0)
        graph = raycg.compile(dag)
        assert ray.get(graph.execute(7)) == 7
        graph.teardown()
        fault = f"{kind}, rank {victim} stalls at execution {after}"
        return Outcome("stall_communicator", seed, fault, type(err).__name__, took)
    finally:
        kill_all(stages)


if __name__ == "__main__":
    cli(run)
