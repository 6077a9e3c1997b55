"""Stall the writer of a point-to-point tensor edge over a communicator (the CPU
twin of a NCCL edge: ``raycg.runtime.testing.CpuTwin``) at a random execution, through
the communicator's fault hook (RAYCG_COMM_FAULTS, in that actor only): it has sent the
value's header through the ring and never sends the tensors. The caller must get
RayChannelTimeoutError within the get timeout (plus the bound); teardown must return,
abort the communicator and leave no thread blocked in it; the actors then serve a new
graph. The twin of ``stall_communicator`` for transfers."""

from __future__ import annotations

import json
import random
import time

import ray
import torch
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import RayChannelTimeoutError

import raycg
from raycg.runtime.testing import CpuTwin

from ._harness import Outcome, cli, expect_error, kill_all, make_stages, no_leaks

GET_TIMEOUT_S = 0.5


def run(seed: int) -> Outcome:
    rng = random.Random(seed)
    after, fan_out = rng.randint(0, 10), rng.choice((1, 2))
    # The writer is rank 0 of the edge's group; one send per reader per execution.
    stall = {"rank": 0, "op": "send", "after": fan_out * after, "seconds": 3600}
    env = {"env_vars": {"RAYCG_COMM_FAULTS": json.dumps([stall])}}
    stages = [*make_stages(1, runtime_env=env), *make_stages(fan_out)]
    try:
        with no_leaks(stages):
            with InputNode() as inp:
                sent = stages[0].work.bind(inp, 0.0).with_tensor_transport(transport=CpuTwin(stages))
                dag = MultiOutputNode([s.work.bind(sent, 0.0) for s in stages[1:]])
            graph = raycg.compile(dag, get_timeout=GET_TIMEOUT_S)
            x = {"t": torch.arange(6, dtype=torch.float32), "step": 0}
            for _ in range(after):  # healthy executions: not bound by the stall's short timeout
                assert len(ray.get(graph.execute(x), timeout=60)) == fan_out
            refs = graph.execute(x)
            since = time.monotonic() + GET_TIMEOUT_S
            err, took = expect_error(lambda: ray.get(refs[0]), RayChannelTimeoutError, since)
            graph.teardown()  # returns: the communicator is aborted, nothing stays blocked
        with InputNode() as inp:  # the actors serve a new graph
            dag = stages[-1].work.bind(stages[0].work.bind(inp, 0.0), 0.0)
        graph = raycg.compile(dag)
        assert ray.get(graph.execute(7)) == 7
        graph.teardown()
        fault = f"the writer to {fan_out} reader(s) stalls in its send at execution {after}"
        return Outcome("stall_transfer", seed, fault, type(err).__name__, took)
    finally:
        kill_all(stages)


if __name__ == "__main__":
    cli(run)
