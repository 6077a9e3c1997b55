"""Restart a worker container (docker restart: its Ray node stops, and a new one joins
under the same name) while a graph pipelined across head, w1 and w2 runs. The graph
fails with ActorDiedError naming the actor on that node; once the node is back, a new
graph compiles across the nodes on a new actor there and runs."""

from __future__ import annotations

import argparse
import random
import time

from ray.exceptions import ActorDiedError

from .._harness import Outcome
from . import _drive


def drive(seed: int, args: argparse.Namespace) -> None:
    stages = _drive.make_stages()
    ids = _drive.actor_ids(stages)
    old = _drive.node_ids(args.victim)
    graph = _drive.chain(list(stages.values()), get_timeout=60)
    _drive.warm(graph)
    _drive.say("READY")
    err = _drive.pump(graph)
    assert isinstance(err, ActorDiedError), repr(err)
    named = [node for node, actor_id in ids.items() if actor_id in str(err)]
    graph.teardown()
    _drive.wait_node(args.victim, old)
    t0 = time.monotonic()
    fresh = _drive.make_stages((args.victim,))
    new = [fresh[node] if node == args.victim else stages[node] for node in _drive.NODES]
    _drive.reuse(new)
    _drive.result(error=type(err).__name__, named=named, new_graph_s=round(time.monotonic() - t0, 3))


def run(seed: int) -> Outcome:
    from ._host import NODE_BOUND_S, clean, cluster, outcome, start, within  # host only: Docker SDK

    c = cluster()
    rng = random.Random(seed)
    victim, delay = rng.choice(["w1", "w2"]), rng.uniform(0.2, 1.5)
    driver = start(c, "restart_worker", seed, "--victim", victim)
    time.sleep(delay)
    t0 = time.monotonic()
    c.restart(victim)  # returns once the container runs again: Ray's node is new
    line = driver.expect("ERROR ", NODE_BOUND_S + 30)
    took = within(line.at - t0, NODE_BOUND_S, line.text)
    res = driver.result(180)
    assert res["named"] == [victim], f"ActorDiedError should name the actor on {victim}: {line.text}"
    clean(c)
    detail = f"{victim} after {delay:.2f} s; new graph on the new node in {res['new_graph_s']} s"
    return outcome("restart_worker", seed, "docker restart", str(res["error"]), took, detail)


if __name__ == "__main__":
    _drive.main(drive, lambda p: p.add_argument("--victim", required=True))
