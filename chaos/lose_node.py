"""Lose a node while a get waits (``Cluster.remove_node``, no grace): the caller gets
ActorDiedError naming the lost node's stage (the stream notices first; the caller then
finds the node's raylet gone, seconds before Ray's actor table says so), teardown returns
with the node gone, and a stage on a surviving node takes a new graph."""

from __future__ import annotations

import random
import time

import ray
from ray.dag import InputNode
from ray.exceptions import ActorDiedError

import raycg

from . import _nodes
from ._harness import Outcome, kill_all

# A removed node's processes are killed: its streams fail on the kernel's reset, then the
# caller asks who died (raycg.runtime._remote_death: the node's raylet refuses
# connections at once): the bound for the caller's error.
NODE_LOSS_BOUND_S = 8.0


def run(seed: int) -> Outcome:
    rng = random.Random(seed)
    after, survivor_node = rng.randint(0, 2), rng.choice(_nodes.NODES)
    cluster = _nodes.cluster()
    node = cluster.add_node(num_cpus=1, resources={"doomed": 10})
    cluster.wait_for_nodes()
    survivor = _nodes.on(survivor_node)
    doomed = _nodes.on("doomed")
    try:
        with InputNode() as inp:
            dag = survivor[0].inc.bind(doomed[0].work.bind(inp, 2.0))  # busy when the node goes
        graph = raycg.compile(dag, get_timeout=30)
        for i in range(after):
            assert ray.get(graph.execute(i)) == i + 1
        ref = graph.execute(0)
        since = time.monotonic()
        cluster.remove_node(node, allow_graceful=False)
        try:
            ray.get(ref)
            raise AssertionError("a get on a lost node's stage returned")
        except ActorDiedError as e:
            err, took = e, time.monotonic() - since
        assert err.actor_id == doomed[0]._actor_id.hex(), f"{err} names another actor"
        assert took <= NODE_LOSS_BOUND_S, f"{type(err).__name__} came {took:.2f} s after the node loss"
        graph.teardown()  # returns with the node gone
        with InputNode() as inp:
            dag = survivor[0].inc.bind(inp)
        again = raycg.compile(dag, get_timeout=30)
        assert ray.get(again.execute(1)) == 2
        again.teardown()
        return Outcome("lose_node", seed, f"remove the node after {after}", type(err).__name__, took)
    finally:
        kill_all([*survivor, *doomed])


if __name__ == "__main__":
    _nodes.cli(run)
