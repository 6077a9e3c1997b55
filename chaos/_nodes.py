"""The multi-node Ray the network scenarios run on: ``ray.cluster_utils.Cluster`` with a
head (the caller's node) and two worker nodes on this machine (custom resources n1, n2),
raycg's gRPC streams on loopback (RAYCG_GRPC_HOST)."""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable
from typing import Any

import ray
from ray.cluster_utils import Cluster

from ._harness import Outcome

NODES = ("n1", "n2")
_cluster: Cluster | None = None


def start() -> Cluster:
    """Start the cluster and connect to it (a single-node Ray of this process goes down)."""
    global _cluster
    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAYCG_GRPC_HOST"] = "127.0.0.1"  # inherited by every node's processes
    _cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for name in NODES:
        _cluster.add_node(num_cpus=2, resources={name: 10})
    _cluster.wait_for_nodes()
    ray.init(address=_cluster.address, log_to_driver=False)
    return _cluster


def cluster() -> Cluster:
    assert _cluster is not None, "chaos._nodes.start() first"
    return _cluster


def stop() -> None:
    global _cluster
    ray.shutdown()
    if _cluster is not None:
        _cluster.shutdown()
        _cluster = None
    os.environ.pop("RAYCG_GRPC_HOST", None)


def on(node: str, **options: Any) -> list[Any]:
    """One Stage pinned to ``node``."""
    from ._harness import make_stages

    return make_stages(1, resources={node: 1}, **options)


def cli(scenario: Callable[[int], Outcome]) -> None:
    """``python -m chaos.<name> --seed N [--runs K]`` on a cluster of its own."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    start()
    try:
        for k in range(args.runs):
            seed = args.seed + k
            print(f"[chaos] seed={seed} (replay: --seed {seed})", flush=True)
            print(scenario(seed).line(), flush=True)
    finally:
        stop()
    sys.exit(0)
