"""Tensors and collectives inside compiled graphs, side by side in one run on a local Ray:

- CPU allreduce of 1 KiB and 4 MiB float32 among 4 actors: raycg (its CPU communicator)
  vs Ray's Compiled Graph (``ray.experimental.collective.allreduce`` with Ray's
  ``CPUCommunicator`` as transport) vs torch.distributed gloo called in the same actors
  (no graph: its floor). One execution: the driver sends an int, each member returns
  its preallocated tensor, the allreduce runs, each member returns the result's length.
- An 8 MiB CPU torch tensor echoed through a one-actor graph on raycg, vs the same bytes
  as a numpy array on raycg, vs the tensor on Ray's Compiled Graph.

Each case runs in short batches, the cases taking turns, warm-up calls unrecorded.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from . import _util

SECTION = "Tensors and collectives in graphs"
WORLD = 4
SIZES = {"1 KiB": 1 << 10, "4 MiB": 4 << 20}
ECHO_BYTES = 8 << 20
WARMUP = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _actor_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class Member:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(1)  # several members on a small machine
            self.bufs: dict[int, Any] = {}

        def make(self, n: int) -> Any:
            import torch

            if n not in self.bufs:
                self.bufs[n] = torch.ones(n)
            return self.bufs[n]

        def size(self, t: Any) -> int:
            return int(t.numel())

        def echo(self, x: Any) -> Any:
            return x

        def gloo_init(self, rank: int, port: int) -> None:
            import torch.distributed as dist

            dist.init_process_group(
                "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
            )

        def gloo_times(self, n: int, calls: int) -> list[int]:
            import torch
            import torch.distributed as dist

            x = torch.ones(n)
            for _ in range(WARMUP):
                dist.all_reduce(x)
            out = []
            for _ in range(calls):
                t0 = time.perf_counter_ns()
                dist.all_reduce(x)
                out.append(time.perf_counter_ns() - t0)
            return out

        def gloo_done(self) -> None:
            import torch.distributed as dist

            dist.destroy_process_group()

    return Member


def _allreduce_graph(members: list, which: str) -> Any:
    from ray.dag import InputNode, MultiOutputNode
    from ray.experimental import collective as ray_collective
    from ray.experimental.channel.cpu_communicator import CPUCommunicator

    import raycg
    import raycg.collective

    with InputNode() as inp:
        made = [m.make.bind(inp) for m in members]
        if which == "raycg":
            outs = raycg.collective.allreduce.bind(made)
        else:
            outs = ray_collective.allreduce.bind(made, transport=CPUCommunicator(WORLD, members))
        dag = MultiOutputNode([m.size.bind(o) for m, o in zip(members, outs)])
    return raycg.compile(dag) if which == "raycg" else dag.experimental_compile()


def _time(graph: Any, arg: object, calls: int) -> list[int]:
    import ray

    for _ in range(WARMUP):
        ray.get(graph.execute(arg))
    out = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        ray.get(graph.execute(arg))
        out.append(time.perf_counter_ns() - t0)
    return out


def _measure(plan: dict[str, tuple[int, int]], echo: tuple[int, int]) -> dict[str, list[int]]:
    import numpy as np
    import ray
    import torch
    from ray.dag import InputNode

    import raycg

    Member = _actor_class()
    members = [Member.remote() for _ in range(WORLD)]
    ray.get([m.size.remote(torch.ones(1)) for m in members])
    samples: dict[str, list[int]] = {}
    try:
        port = _free_port()
        ray.get([m.gloo_init.remote(r, port) for r, m in enumerate(members)])
        for label, nbytes in SIZES.items():
            n = nbytes // 4
            total, batch = plan[label]
            graphs = {w: _allreduce_graph(members, w) for w in ("raycg", "ray")}
            try:
                for b in range(-(-total // batch)):
                    k = min(batch, total - b * batch)
                    for w in ("raycg", "ray") if b % 2 == 0 else ("ray", "raycg"):
                        samples.setdefault(f"{label} {w}", []).extend(_time(graphs[w], n, k))
                    gloo = ray.get([m.gloo_times.remote(n, k) for m in members])
                    samples.setdefault(f"{label} gloo", []).extend(gloo[0])
            finally:
                for g in graphs.values():
                    g.teardown()
        ray.get([m.gloo_done.remote() for m in members])
        total, batch = echo
        tensor = torch.ones(ECHO_BYTES // 4)
        array = np.ones(ECHO_BYTES // 4, dtype=np.float32)
        with InputNode() as inp:
            dag = members[0].echo.bind(inp)
        ours = raycg.compile(dag)
        cases = {"echo raycg tensor": tensor, "echo raycg numpy": array}
        try:
            # Short batches, the two taking turns first: the scheduler's noise on a
            # 2-core machine (tens of percent from one minute to the next) falls on both.
            for b in range(-(-total // batch)):
                for key in cases if b % 2 == 0 else reversed(cases):
                    samples.setdefault(key, []).extend(_time(ours, cases[key], batch))
        finally:
            ours.teardown()
        with InputNode() as inp:
            dag = members[0].echo.bind(inp)
        theirs = dag.experimental_compile()
        try:
            samples["echo ray tensor"] = _time(theirs, tensor, total)
        finally:
            theirs.teardown()
    finally:
        for m in members:
            ray.kill(m)
    return samples


def main(argv: list[str]) -> int:
    import ray

    parser = _util.make_parser("tensors", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    plan = {"1 KiB": (40, 20), "4 MiB": (10, 5)} if args.quick else {"1 KiB": (300, 50), "4 MiB": (40, 10)}
    echo = (10, 5) if args.quick else (400, 5)
    load = _util.warn_if_busy()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        samples = _measure(plan, echo)
    finally:
        ray.shutdown()
    p = {k: {q: _util.percentile_us(v, q) for q in (50, 90)} for k, v in samples.items()}
    fmt = _util.format_number
    rows = [
        [
            f"{label} allreduce",
            *(fmt(p[f"{label} {w}"][q]) for w in ("raycg", "ray", "gloo") for q in (50, 90)),
        ]
        for label in SIZES
    ]
    echo_rows = [
        [k.removeprefix("echo "), fmt(p[k][50]), fmt(p[k][90])] for k in samples if k.startswith("echo")
    ]
    targets = [
        *(
            _util.Target(
                f"{label} allreduce p50: raycg / Ray CG",
                p[f"{label} raycg"][50] / p[f"{label} ray"][50],
                1.0,
                "x",
            )
            for label in SIZES
        ),
        *(
            _util.Target(
                f"{label} allreduce p50: raycg graph / bare gloo",
                p[f"{label} raycg"][50] / p[f"{label} gloo"][50],
                1.0,
                "x",
            )
            for label in SIZES
        ),
        _util.Target(
            "8 MiB echo p50: tensor / numpy", p["echo raycg tensor"][50] / p["echo raycg numpy"][50], 1.1, "x"
        ),
        _util.Target(
            "8 MiB echo p50: raycg / Ray CG", p["echo raycg tensor"][50] / p["echo ray tensor"][50], 0.15, "x"
        ),
    ]
    runs = ", ".join(f"{label}: {n} executions each (batches of {b})" for label, (n, b) in plan.items())
    entry = "\n\n".join(
        [
            f"### {_util.now_utc()}",
            f"Machine: {_util.describe_machine()}.\nRun: {WORLD} actors on a local Ray, float32 SUM; {runs}; "
            f"echo: {echo[0]} executions each (batches of {echo[1]}, the kinds taking turns); "
            f"1-minute load average before the run {load:.2f}"
            + (" — quick run" if args.quick else "")
            + ". One allreduce execution = driver -> make -> allreduce -> size -> driver; gloo is "
            "dist.all_reduce called in the same actors, no graph (rank 0's times).",
            _util.format_table(
                [
                    "4 members",
                    "raycg p50 µs",
                    "p90",
                    "Ray CG (CPUCommunicator) p50 µs",
                    "p90",
                    "gloo p50 µs",
                    "p90",
                ],
                rows,
            ),
            _util.format_table(["8 MiB echo, one actor", "p50 µs", "p90 µs"], echo_rows),
            _util.format_targets(targets),
        ]
    )
    print(entry)
    if args.record:
        _util.record_run(SECTION, entry)
        print(f"\nrecorded in {_util.RESULTS_PATH}")
    return 0
