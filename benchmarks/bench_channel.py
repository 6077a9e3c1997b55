"""Channel benchmark: a value there and back between two processes.

Three transports side by side, in one run, each with its own echo child (spawned):

a. raycg's ShmRing: one ring each way. The parent writes to ring "ping", the child reads
   it and writes the value it got (for an array: the zero-copy view) to ring "pong",
   then drops it before its next read, as a task drops its arguments when it is done.
b. the floor: the least a Python ping-pong over shared memory can do. One memfd, a u32
   sequence number each way that is also the futex word, a brief spin then a futex
   sleep, an 8-byte store for an int and one copy in per hop for an array.
c. multiprocessing's Pipe (send/recv), the usual baseline.

Then, alone: a child blocked in ShmRingReader.read on an idle channel, and the CPU it uses.

Fairness on a small machine: only the parent and one child are busy at any time (the
other children sleep in their read), the parent and the children run on two different
CPUs, the transports take turns in short batches so that drift is shared, each batch
starts with unrecorded trips (the child slept since its last batch), and the garbage
collector is off while timing.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from raycg.transports import ChannelClosed, ShmRing, ShmRingReader, ShmRingWriter

from . import _util
from ._floor import SPIN_NS, FloorPair

SECTION = "Channel"
SMALL_VALUE = 42
ARRAY_BYTES = 8 << 20
NSLOTS = 4  # as a graph with a few executions in flight
SMALL_WARMUP, ARRAY_WARMUP = 20, 2  # unrecorded trips at the start of every batch
MAX_WARMUP_TRIPS = 2_000
IDLE_SETTLE_S = 0.5  # let the idle reader get past its spin before measuring

A, B, C = "a. ShmRing", "b. floor", "c. Pipe"
MEMCPY = "two memcpy"


@dataclasses.dataclass(frozen=True)
class Plan:
    small_trips: int = 20_000
    small_batch: int = 1_000
    array_trips: int = 200
    array_batch: int = 20
    idle_s: float = 10.0


QUICK = Plan(small_trips=2_000, small_batch=500, array_trips=40, array_batch=10, idle_s=5.0)


# --- a. ShmRing ---------------------------------------------------------------------


def _ring_echo(ping: Any, pong: Any) -> None:
    reader, writer = ShmRingReader(ping, 0), ShmRingWriter(pong)
    try:
        while (value := reader.read()) is not None:
            writer.write(value)
            del value  # drop the zero-copy view before waiting: its slot is free again
    finally:
        reader.close()
        writer.close()


class _RingPair:
    settled_ns = SPIN_NS  # a trip shorter than the spin slept nowhere

    def __init__(self, ctx: Any, cpu: int | None):
        self._rings = [ShmRing(NSLOTS, 1, name="bench.ping"), ShmRing(NSLOTS, 1, name="bench.pong")]
        ping, pong = self._rings
        args = (cpu, _ring_echo, ping.spec, pong.spec)
        self.proc = ctx.Process(target=_util.run_pinned, args=args, daemon=True)
        self.proc.start()
        self._writer, self._reader = ping.open_writer(), pong.open_reader(0)

    def round_trip(self, value: object) -> object:
        self._writer.write(value)
        return self._reader.read()

    def stop(self) -> None:
        self._writer.write(None)
        _util.join_or_kill(self.proc)
        self._writer.close()
        self._reader.close()
        for ring in self._rings:
            ring.close()


# --- c. Pipe ------------------------------------------------------------------------


def _pipe_echo(conn: Connection) -> None:
    while (value := conn.recv()) is not None:
        conn.send(value)
    conn.close()


class _PipePair:
    settled_ns = None  # recv always sleeps in the kernel: there is no awake state to reach

    def __init__(self, ctx: Any, cpu: int | None):
        self._conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_util.run_pinned, args=(cpu, _pipe_echo, child_conn), daemon=True)
        self.proc.start()
        child_conn.close()

    def round_trip(self, value: object) -> object:
        self._conn.send(value)
        return self._conn.recv()

    def stop(self) -> None:
        self._conn.send(None)
        _util.join_or_kill(self.proc)
        self._conn.close()


# --- measuring ----------------------------------------------------------------------


def _warm_up(round_trip: Callable[[Any], object], value: object, trips: int, settled_ns: int | None) -> None:
    """``trips`` unrecorded trips before a batch. With ``settled_ns``: until ``trips``
    in a row each took less, so that both processes are awake and spinning.

    The child has slept since its last batch, and on a VM waking a process can take
    longer than the spin: then each side sleeps before the other answers, trip after
    trip, until one wakes up in time. A fixed count of trips may not get out of that.
    """
    clock = time.perf_counter_ns
    in_a_row = done = 0
    while in_a_row < trips and done < MAX_WARMUP_TRIPS:
        t0 = clock()
        round_trip(value)
        done += 1
        in_a_row = in_a_row + 1 if settled_ns is None or clock() - t0 < settled_ns else 0


def _runner(
    round_trip: Callable[[Any], object], value: object, warmup: int, settled_ns: int | None = None
) -> _util.Runner:
    def run(n: int) -> list[int]:
        _warm_up(round_trip, value, warmup, settled_ns)
        with _util.gc_disabled():
            return _util.time_calls(round_trip, value, n)

    return run


def _check_echo(label: str, round_trip: Callable[[Any], object], value: Any, trips: int) -> None:
    """Warm a transport up (page in its memory, grow the ring) and check what it echoes."""
    for _ in range(trips):
        out = round_trip(value)
    same = out == value if isinstance(value, int) else np.array_equal(_as_bytes(out), _as_bytes(value))
    if not same:
        raise AssertionError(f"{label} echoed something other than what it was sent")


def _as_bytes(array: Any) -> np.ndarray:
    return np.frombuffer(array, dtype=np.uint8)


def _two_copies(src: np.ndarray) -> Callable[[object], None]:
    """Two 8 MiB copies in one process: what an echo through shared memory must do."""
    mid, dst = np.empty_like(src), np.empty_like(src)

    def copy_twice(_: object) -> None:
        np.copyto(mid, src)
        np.copyto(dst, mid)

    return copy_twice


def _measure_round_trips(pairs: dict[str, Any], plan: Plan) -> tuple[dict, dict]:
    """Small-value and 8 MiB samples (ns) per transport, and of two memcpy."""
    array = np.ones(ARRAY_BYTES // 8)
    for label, pair in pairs.items():
        _check_echo(label, pair.round_trip, SMALL_VALUE, 2 * SMALL_WARMUP)
        _check_echo(label, pair.round_trip, array, 2 * NSLOTS)
    small = {
        label: _runner(p.round_trip, SMALL_VALUE, SMALL_WARMUP, p.settled_ns) for label, p in pairs.items()
    }
    large = {label: _runner(p.round_trip, array, ARRAY_WARMUP) for label, p in pairs.items()}
    large[MEMCPY] = _runner(_two_copies(array), None, ARRAY_WARMUP)
    return (
        _util.interleave(small, plan.small_trips, plan.small_batch),
        _util.interleave(large, plan.array_trips, plan.array_batch),
    )


def _run_ping_pong(plan: Plan) -> tuple[dict, dict]:
    # The parent on one CPU, the echo children on another. Left alone, the scheduler may
    # put both sides on one CPU (it favours the waker's), where a spinning waiter only
    # delays the peer it waits for: that measures placement, not the channel.
    parent_cpu, child_cpu = _util.two_cpus()
    ctx = mp.get_context("spawn")
    pairs: dict[str, Any] = {}
    with _util.pinned_to(parent_cpu):
        try:
            pairs[A] = _RingPair(ctx, child_cpu)
            pairs[B] = FloorPair(ctx, child_cpu, ARRAY_BYTES)
            pairs[C] = _PipePair(ctx, child_cpu)
            return _measure_round_trips(pairs, plan)
        finally:
            for pair in pairs.values():
                pair.stop()


def _idle_reader(spec: Any, ready: Any) -> None:
    reader = ShmRingReader(spec, 0)
    ready.set()
    try:
        reader.read()  # nothing comes: the parent closes the ring when it has measured
    except ChannelClosed:
        pass
    finally:
        reader.close()


def _measure_idle_reader(duration_s: float) -> tuple[float, float]:
    """(% of one core, sleeps per second) of a child blocked reading an idle ring."""
    ctx = mp.get_context("spawn")
    with ShmRing(NSLOTS, 1, name="bench.idle") as ring:
        # A writer is attached, as on a real channel: the reader checks its liveness
        # between sleeps, and that check is part of the idle cost.
        writer = ring.open_writer()
        ready = ctx.Event()
        proc = ctx.Process(target=_idle_reader, args=(ring.spec, ready), daemon=True)
        proc.start()
        ready.wait()
        time.sleep(IDLE_SETTLE_S)
        cpu0, switches0, t0 = _util.cpu_seconds(proc.pid), _util.context_switches(proc.pid), time.monotonic()
        time.sleep(duration_s)
        cpu1, switches1, t1 = _util.cpu_seconds(proc.pid), _util.context_switches(proc.pid), time.monotonic()
        writer.close()
    _util.join_or_kill(proc)
    return 100 * (cpu1 - cpu0) / (t1 - t0), (switches1 - switches0) / (t1 - t0)


# --- reporting ----------------------------------------------------------------------


def _p(samples: dict[str, list[int]], label: str, q: float) -> float:
    return _util.percentile_us(samples[label], q)


def _row(what: str, samples: dict[str, list[int]], q: float, reference: str = "-") -> list[str]:
    """One row: the transports' percentile ``q``, ShmRing over the floor, a reference."""
    cells = [_util.format_number(_p(samples, label, q)) for label in (A, B, C)]
    return [f"{what}, p{q} (µs)", *cells, f"{_p(samples, A, q) / _p(samples, B, q):.2f}x", reference]


def _round_trip_table(small: dict, large: dict, idle_pct: float) -> str:
    rows = [_row("small value round trip", small, q) for q in (50, 90, 99)]
    rows += [
        _row("8 MiB array round trip", large, q, _util.format_number(_p(large, MEMCPY, q))) for q in (50, 90)
    ]
    rows.append(["idle reader, CPU (% of one core)", f"{idle_pct:.3f}", "-", "-", "-", "-"])
    return _util.format_table(["Measurement", A, B, C, "a/b", MEMCPY], rows)


def _targets(small: dict, large: dict, idle_pct: float) -> list[_util.Target]:
    small_ratio = _p(small, A, 50) / _p(small, B, 50)
    large_ratio = _p(large, A, 50) / _p(large, MEMCPY, 50)
    return [
        _util.Target("small round trip p50: ShmRing within 4x of the floor", small_ratio, 4.0, "x"),
        _util.Target("8 MiB round trip p50: ShmRing within 1.5x of two memcpy", large_ratio, 1.5, "x"),
        _util.Target("idle reader: under 1% of one core", idle_pct, 1.0, "%"),
    ]


def _run_line(plan: Plan, quick: bool, load: float, sleeps_per_s: float) -> str:
    return (
        f"{plan.small_trips:,} small round trips (batches of {plan.small_batch:,}), "
        f"{plan.array_trips:,} 8 MiB round trips (batches of {plan.array_batch:,}), "
        f"idle reader {plan.idle_s:g} s ({sleeps_per_s:.1f} sleeps/s); "
        f"1-minute load average before the run {load:.2f}" + (" — quick run" if quick else "")
    )


def main(argv: list[str]) -> int:
    parser = _util.make_parser("channel", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    load = _util.warn_if_busy()
    small, large = _run_ping_pong(plan)
    idle_pct, sleeps_per_s = _measure_idle_reader(plan.idle_s)
    entry = "\n\n".join(
        [
            f"### {_util.now_utc()}",
            f"Machine: {_util.describe_machine()}.\nRun: {_run_line(plan, args.quick, load, sleeps_per_s)}.",
            _round_trip_table(small, large, idle_pct),
            _util.format_targets(_targets(small, large, idle_pct)),
        ]
    )
    print(entry)
    if args.record:
        _util.record_run(SECTION, entry)
        print(f"\nrecorded in {_util.RESULTS_PATH}")
    return 0  # a missed target is a result, not a failure to run
