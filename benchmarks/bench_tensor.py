"""Tensor benchmark: an 8 MiB CPU torch tensor vs the same bytes as numpy, through the ring.

One echo child (spawned) reads ring "ping" and writes what it got (the zero-copy view:
read-only for the array, copy-on-write for the tensor) to ring "pong", then drops it,
as a task drops its arguments. The parent times write + read back, the array and the
tensor taking turns in short batches (same processes, same rings, one run), and checks
what comes back. A second pair of figures has the child touch every byte it got (a sum)
before echoing it (numpy's sum for both, the same work): the cost a task that reads
its argument pays.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np

from raycg.transports import ShmRing, ShmRingReader, ShmRingWriter

from . import _util

SECTION = "Tensors"
NBYTES = 8 << 20
NSLOTS = 4
WARMUP = 2


def _echo(ping: Any, pong: Any) -> None:
    import torch  # noqa: F401  (serde recognises tensors once torch is imported)

    reader, writer = ShmRingReader(ping, 0), ShmRingWriter(pong)
    try:
        while (msg := reader.read()) is not None:
            touch, value = msg
            if touch:
                np.asarray(value).sum()  # numpy's sum for both: the same work
            writer.write((False, value))
            del msg, value
    finally:
        reader.close()
        writer.close()


def _runner(writer: Any, reader: Any, value: object, touch: bool) -> _util.Runner:
    def trip(_: object) -> None:
        writer.write((touch, value))
        reader.read()

    def run(n: int) -> list[int]:
        for _ in range(WARMUP):
            trip(None)
        with _util.gc_disabled():
            return _util.time_calls(trip, None, n)

    return run


def _measure(trips: int, batch: int) -> dict[str, list[int]]:
    import torch

    array = np.ones(NBYTES // 4, dtype=np.float32)
    tensor = torch.ones(NBYTES // 4, dtype=torch.float32)
    parent_cpu, child_cpu = _util.two_cpus()
    ctx = mp.get_context("spawn")
    rings = [ShmRing(NSLOTS, 1, name="bench.tping"), ShmRing(NSLOTS, 1, name="bench.tpong")]
    with _util.pinned_to(parent_cpu):
        proc = ctx.Process(target=_util.run_pinned, args=(child_cpu, _echo, rings[0].spec, rings[1].spec))
        proc.start()
        writer, reader = rings[0].open_writer(), rings[1].open_reader(0)
        try:
            for value in (array, tensor):
                writer.write((False, value))
                _, got = reader.read()  # type: ignore[misc]
                assert np.array_equal(np.asarray(got), np.asarray(value)), type(value)
                del got
            runners = {
                "numpy": _runner(writer, reader, array, False),
                "torch": _runner(writer, reader, tensor, False),
                "numpy, touched": _runner(writer, reader, array, True),
                "torch, touched": _runner(writer, reader, tensor, True),
            }
            return _util.interleave(runners, trips, batch)
        finally:
            writer.write(None)
            _util.join_or_kill(proc)
            writer.close()
            reader.close()
            for ring in rings:
                ring.close()


def main(argv: list[str]) -> int:
    parser = _util.make_parser("tensor", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    trips, batch = (40, 10) if args.quick else (200, 20)
    load = _util.warn_if_busy()
    samples = _measure(trips, batch)
    p = {k: {q: _util.percentile_us(v, q) for q in (50, 90)} for k, v in samples.items()}
    rows = [[k, _util.format_number(v[50]), _util.format_number(v[90])] for k, v in p.items()]
    ratio, touched = p["torch"][50] / p["numpy"][50], p["torch, touched"][50] / p["numpy, touched"][50]
    targets = [
        _util.Target("8 MiB echo p50: torch / numpy", ratio, 1.1, "x"),
        _util.Target("8 MiB echo, touched, p50: torch / numpy", touched, 1.1, "x"),
    ]
    entry = "\n\n".join(
        [
            f"### {_util.now_utc()}",
            f"Machine: {_util.describe_machine()}.\nRun: {trips} round trips of each kind (batches of "
            f"{batch}), one echo child; 1-minute load average before the run {load:.2f}"
            + (" — quick run" if args.quick else "")
            + ".",
            _util.format_table(["8 MiB float32 round trip", "p50 µs", "p90 µs"], rows),
            _util.format_targets(targets),
        ]
    )
    print(entry)
    if args.record:
        _util.record_run(SECTION, entry)
        print(f"\nrecorded in {_util.RESULTS_PATH}")
    return 0
