"""Collective benchmark: float32 allreduce among 4 processes, raycg's CPU communicator vs
torch.distributed's gloo, in the same processes, in one run.

Four spawned members join both a CpuCommunicator (shared memory) and a gloo process
group (TCP on 127.0.0.1). They run in-place SUM allreduces of 1 KiB and of 4 MiB, the
two communicators taking turns in short batches so that the machine's drift is shared;
each batch starts with unrecorded warm-up calls. Rank 0 times each call (the members
are in step: an allreduce returns only once every member contributed).
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from typing import Any

from . import _util

SECTION = "Collectives"
WORLD = 4
SIZES = {"1 KiB": 1 << 10, "4 MiB": 4 << 20}
WARMUP = 3


def _member(spec: Any, rank: int, port: int, plan: dict[str, tuple[int, int]], conn: Any) -> None:
    import torch
    import torch.distributed as dist

    from raycg.transports import CpuCommunicator

    torch.set_num_threads(1)  # four members on a small machine: no intra-op threads
    comm = CpuCommunicator(spec, rank, timeout_s=120)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    clock = time.perf_counter_ns
    samples: dict[str, list[int]] = {}
    try:
        for label, nbytes in SIZES.items():
            x = torch.ones(nbytes // 4)
            calls = {"raycg": lambda x=x: comm.allreduce(x, x), "gloo": lambda x=x: dist.all_reduce(x)}
            total, batch = plan[label]
            for b in range(-(-total // batch)):
                order = list(calls) if b % 2 == 0 else list(reversed(calls))
                for name in order:
                    for _ in range(WARMUP):
                        calls[name]()
                    times = samples.setdefault(f"{label} {name}", [])
                    for _ in range(min(batch, total - b * batch)):
                        t0 = clock()
                        calls[name]()
                        times.append(clock() - t0)
        conn.send(samples if rank == 0 else None)
    finally:
        dist.destroy_process_group()
        comm.destroy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _measure(plan: dict[str, tuple[int, int]]) -> dict[str, list[int]]:
    from raycg.transports import CpuCommGroup

    ctx = mp.get_context("spawn")
    port = _free_port()
    with CpuCommGroup(WORLD, p2p=False, name="bench.coll") as group:
        pipes, procs = [], []
        for r in range(WORLD):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_member, args=(group.spec, r, port, plan, child), daemon=True)
            p.start()
            child.close()
            pipes.append(parent)
            procs.append(p)
        try:
            results = [c.recv() for c in pipes]
        finally:
            for p in procs:
                _util.join_or_kill(p, 60)
    return results[0]


def main(argv: list[str]) -> int:
    parser = _util.make_parser("collective", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    plan = {"1 KiB": (100, 25), "4 MiB": (10, 5)} if args.quick else {"1 KiB": (1000, 100), "4 MiB": (60, 10)}
    load = _util.warn_if_busy()
    samples = _measure(plan)
    p = {k: {q: _util.percentile_us(v, q) for q in (50, 90)} for k, v in samples.items()}
    rows = [
        [
            f"{label} allreduce",
            *(_util.format_number(p[f"{label} {n}"][q]) for n in ("raycg", "gloo") for q in (50, 90)),
        ]
        for label in SIZES
    ]
    targets = [
        _util.Target(
            f"{label} allreduce p50: raycg / gloo", p[f"{label} raycg"][50] / p[f"{label} gloo"][50], 1.0, "x"
        )
        for label in SIZES
    ]
    runs = ", ".join(f"{label}: {n} calls each (batches of {b})" for label, (n, b) in plan.items())
    entry = "\n\n".join(
        [
            f"### {_util.now_utc()}",
            f"Machine: {_util.describe_machine()}.\nRun: {WORLD} processes, float32 in-place SUM; {runs}; "
            f"1-minute load average before the run {load:.2f}" + (" — quick run" if args.quick else "") + ".",
            _util.format_table(
                ["4 members", "raycg p50 µs", "raycg p90 µs", "gloo p50 µs", "gloo p90 µs"], rows
            ),
            _util.format_targets(targets),
        ]
    )
    print(entry)
    if args.record:
        _util.record_run(SECTION, entry)
        print(f"\nrecorded in {_util.RESULTS_PATH}")
    return 0
