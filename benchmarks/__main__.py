"""``python -m benchmarks NAME [options]``: run one benchmark.

To add one, write ``benchmarks/bench_<name>.py`` with ``main(argv: list[str]) -> int``
and list it in ``BENCHMARKS``.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one line for the list). Modules are imported only when chosen, so a
# benchmark's heavy imports (torch, Ray) never slow down another one.
BENCHMARKS = {
    "channel": (
        "benchmarks.bench_channel",
        "ping-pong between two processes: ShmRing vs a raw shm+futex floor vs a Pipe",
    ),
    "graph": (
        "benchmarks.bench_graph",
        "Ray core vs Ray's Compiled Graph vs raycg: latency, throughput, compile, idle CPU",
    ),
    "collective": (
        "benchmarks.bench_collective",
        "float32 allreduce among 4 processes: raycg's CPU communicator vs torch.distributed gloo",
    ),
    "tensor": (
        "benchmarks.bench_tensor",
        "an 8 MiB CPU torch tensor vs the same bytes as numpy, echoed through the ring",
    ),
    "tensors": (
        "benchmarks.bench_tensors",
        "in compiled graphs: 4-actor allreduce raycg vs Ray CG's CPUCommunicator vs gloo; 8 MiB tensor echo",
    ),
    "grpc": (
        "benchmarks.bench_grpc",
        "raycg's gRPC channel vs bare grpcio shapes (sync, asyncio, pull, its own): round trip, 64 MiB",
    ),
    "grpc-hops": (
        "benchmarks.bench_grpc_hops",
        "a small round trip over gRPC hop by hop: raycg's channel vs its shape bare, where the time goes",
    ),
    "multinode": (
        "benchmarks.bench_multinode",
        "a 2-node Cluster: echo and 64 MiB from the driver's node to another, Ray core vs Ray CG vs raycg",
    ),
    "collective-multinode": (
        "benchmarks.bench_collective_multinode",
        "a 3-node Cluster: 4-actor allreduce over 2 nodes in a graph, raycg vs gloo in the same actors",
    ),
    "stats": (
        "benchmarks.bench_stats",
        "what graph.stats() recording (on by default) costs per execution",
    ),
}


def _print_list(out: object) -> None:
    print("usage: python -m benchmarks NAME [--quick] [--record] [--help]\n\nbenchmarks:", file=out)
    for name, (_, summary) in BENCHMARKS.items():
        print(f"  {name:<10} {summary}", file=out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        _print_list(sys.stdout)
        return 0
    if argv[0] not in BENCHMARKS:
        print(f"unknown benchmark {argv[0]!r}\n", file=sys.stderr)
        _print_list(sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]][0])
    return module.main(argv[1:])


# The guard matters: multiprocessing's spawn re-imports this module in every child.
if __name__ == "__main__":
    sys.exit(main())
