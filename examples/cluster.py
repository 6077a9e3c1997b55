"""raycg on a Ray cluster of several nodes (deploy/compose.yaml): a plain Ray task on
every node, then a compiled graph pipelined across the nodes, one stage per node, with
the time per execution.

    docker compose -f deploy/compose.yaml exec head python examples/cluster.py [--n 500]

Every node of deploy/compose.yaml offers a custom resource ``node:<name>``; a stage is
pinned to a node by asking for a sliver of it. ``--local`` pins every stage to the
driver's own node instead (a graph within one node, for a cluster whose raycg does not
span nodes).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.dag import InputNode

import raycg

PREFIX = "node:"  # deploy/compose.yaml's per-node resources: node:head, node:w1, ...


@ray.remote(num_cpus=0)
class Stage:
    def forward(self, x: object) -> object:
        return x

    def where(self) -> str:
        return socket.gethostname()


@ray.remote(num_cpus=0)
def hostname() -> str:
    return socket.gethostname()


def node_names() -> list[str]:
    """The ``node:<name>`` resources of the live nodes, head first (Ray's own ``node:<ip>``
    resources have an address, not a name, after the prefix)."""
    names = {
        key[len(PREFIX) :]
        for n in ray.nodes()
        if n["Alive"]
        for key in n["Resources"]
        if key.startswith(PREFIX) and not key[len(PREFIX)].isdigit() and not key.startswith("node:__")
    }
    return sorted(names, key=lambda name: (name != "head", name))


def pinned(name: str) -> dict[str, object]:
    return {"resources": {PREFIX + name: 0.001}}


def edges(graph: Any) -> list[tuple[str, str]]:
    """Each channel of the graph's plan and its transport's name (SHM within a node,
    GRPC between nodes)."""
    out = []
    for ch in graph.plan.channels:
        names = ch.DESCRIPTOR.fields_by_name["transport"].enum_type.values_by_number
        out.append((ch.label or ch.channel_id, names[ch.transport].name))
    return out


def per_execution_us(run_once: Callable[[int], object], n: int) -> float:
    """Median of ``n`` timed round trips (one execution at a time), after a warm-up."""
    for i in range(min(100, n)):
        run_once(i)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        run_once(i)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def pipelined_us(graph: Any, n: int, depth: int) -> float:
    """Wall time per execution with ``depth`` executions in flight."""
    t0 = time.perf_counter()
    refs = [graph.execute(i) for i in range(depth)]
    for i in range(depth, n):
        ray.get(refs.pop(0))
        refs.append(graph.execute(i))
    for ref in refs:
        ray.get(ref)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="executions timed")
    parser.add_argument("--local", action="store_true", help="every stage on the driver's node")
    args = parser.parse_args()
    ray.init(log_to_driver=False)  # RAY_ADDRESS (set in the containers): the head

    names = node_names()
    print("nodes:", ", ".join(names))
    hosts = ray.get([hostname.options(**pinned(name)).remote() for name in names])  # type: ignore[attr-defined]
    for name, host in zip(names, hosts):
        print(f"  a plain Ray task pinned to node:{name} ran on {host}")

    here = socket.gethostname()
    stage_nodes = [here, here, here] if args.local else names
    stages = [Stage.options(**pinned(name)).remote() for name in stage_nodes]  # type: ignore[attr-defined]
    print("stages on:", " -> ".join(ray.get([s.where.remote() for s in stages])))

    with InputNode() as inp:
        dag = inp
        for stage in stages:
            dag = stage.forward.bind(dag)
    graph = raycg.compile(dag, max_inflight_executions=len(stages) * 2)
    for label, transport in edges(graph):
        print(f"  {label}: {transport}")
    assert ray.get(graph.execute("hello")) == "hello"
    one_us = per_execution_us(lambda i: ray.get(graph.execute(i)), args.n)
    depth = len(stages) * 2
    piped_us = pipelined_us(graph, args.n, depth)
    graph.teardown()
    span = "within node " + here if args.local else f"across {len(set(stage_nodes))} nodes"
    print(f"graph of {len(stages)} stages {span}, median of {args.n}:")
    print(f"  one execution at a time: {one_us:9.1f} us per execution")
    print(f"  {depth} in flight (pipelined): {piped_us:9.1f} us per execution")
    ray.shutdown()


if __name__ == "__main__":
    main()
