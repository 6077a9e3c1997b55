"""Collectives across nodes: a float32 allreduce of 1 KiB and 4 MiB among 4 actors on 2
nodes, in a compiled graph on raycg (its cross-node CPU communicator) vs torch.distributed
gloo called in the same actors (no graph: its floor), side by side in one run.

A 3-node ``ray.cluster_utils.Cluster`` on this machine: the head (the driver's node) and
two worker nodes, ranks 0 and 1 on the first, 2 and 3 on the second. One execution, as
in bench_tensors: the driver sends an int, each member returns its preallocated tensor,
the allreduce runs, each member returns the result's length. raycg's gRPC servers and
gloo listen on loopback. The cases take turns in short batches, warm-up calls unrecorded.
"""

from __future__ import annotations

import os
from typing import Any

from . import _util
from .bench_tensors import SIZES, WORLD, _actor_class, _free_port, _time

SECTION = "Collectives across nodes"
NODES = ("n1", "n1", "n2", "n2")  # each rank's node


def _graph(members: list) -> Any:
    from ray.dag import InputNode, MultiOutputNode

    import raycg
    import raycg.collective

    with InputNode() as inp:
        outs = raycg.collective.allreduce.bind([m.make.bind(inp) for m in members])
        dag = MultiOutputNode([m.size.bind(o) for m, o in zip(members, outs)])
    return raycg.compile(dag, get_timeout=120)


def _measure(plan: dict[str, tuple[int, int]]) -> dict[str, list[int]]:
    import ray
    import torch

    Member = _actor_class()
    members = [Member.options(resources={node: 1}).remote() for node in NODES]
    ray.get([m.size.remote(torch.ones(1)) for m in members], timeout=300)
    samples: dict[str, list[int]] = {}
    try:
        port = _free_port()
        ray.get([m.gloo_init.remote(r, port) for r, m in enumerate(members)], timeout=120)
        for label, nbytes in SIZES.items():
            n = nbytes // 4
            total, batch = plan[label]
            graph = _graph(members)
            try:
                for b in range(-(-total // batch)):
                    k = min(batch, total - b * batch)
                    samples.setdefault(f"{label} raycg", []).extend(_time(graph, n, k))
                    gloo = ray.get([m.gloo_times.remote(n, k) for m in members])
                    samples.setdefault(f"{label} gloo", []).extend(gloo[0])
            finally:
                graph.teardown()
        ray.get([m.gloo_done.remote() for m in members])
    finally:
        for m in members:
            ray.kill(m)
    return samples


def main(argv: list[str]) -> int:
    import ray
    from ray.cluster_utils import Cluster

    parser = _util.make_parser("collective-multinode", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    plan = {"1 KiB": (40, 20), "4 MiB": (10, 5)} if args.quick else {"1 KiB": (300, 50), "4 MiB": (40, 10)}
    load = _util.warn_if_busy()
    os.environ["RAYCG_GRPC_HOST"] = "127.0.0.1"  # the nodes' processes inherit it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for name in ("n1", "n2"):
            cluster.add_node(num_cpus=1, resources={name: 10})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            samples = _measure(plan)
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    p = {k: {q: _util.percentile_us(v, q) for q in (50, 90)} for k, v in samples.items()}
    fmt = _util.format_number
    rows = [
        [f"{label} allreduce", *(fmt(p[f"{label} {w}"][q]) for w in ("raycg", "gloo") for q in (50, 90))]
        for label in SIZES
    ]
    targets = [
        _util.Target(
            f"{label} allreduce p50: raycg graph / bare gloo",
            p[f"{label} raycg"][50] / p[f"{label} gloo"][50],
            1.0,
            "x",
        )
        for label in SIZES
    ]
    runs = ", ".join(f"{label}: {n} executions each (batches of {b})" for label, (n, b) in plan.items())
    entry = "\n\n".join(
        [
            f"### {_util.now_utc()}",
            f"Machine: {_util.describe_machine()}.\nRun: {WORLD} actors on 2 worker nodes of a "
            f"ray.cluster_utils.Cluster (ranks 0, 1 on one, 2, 3 on the other), float32 SUM; {runs}; "
            f"1-minute load average before the run {load:.2f}"
            + (" — quick run" if args.quick else "")
            + ". One execution = driver -> make -> allreduce -> size -> driver; gloo is "
            "dist.all_reduce called in the same actors, no graph (rank 0's times).",
            _util.format_table(
                ["4 members, 2 nodes", "raycg p50 µs", "p90", "gloo p50 µs", "p90"],
                rows,
            ),
            _util.format_targets(targets),
        ]
    )
    print(entry)
    if args.record:
        _util.record_run(SECTION, entry)
        print(f"\nrecorded in {_util.RESULTS_PATH}")
    return 0
