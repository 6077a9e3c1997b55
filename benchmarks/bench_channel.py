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

import ctypes
import dataclasses
import mmap
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from raycg.transports import ChannelClosed, ShmRing, ShmRingReader, ShmRingWriter
from raycg.transports._futex import fence, futex_wait, futex_wake

from . import _util

SECTION = "Channel"
SMALL_VALUE = 42
ARRAY_BYTES = 8 << 20
NSLOTS = 4  # slack: an echo child pins the array it echoes until its next read
SMALL_WARMUP, ARRAY_WARMUP = 20, 2  # unrecorded trips at the start of every batch
MAX_WARMUP_TRIPS = 2_000
# The floor spins as long as the ring does by default (its DEFAULT_SPIN_S, 50 µs)
# before it sleeps, so both wait alike.
SPIN_NS = 50_000
JOIN_TIMEOUT_S = 10.0
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
        _join(self.proc)
        self._writer.close()
        self._reader.close()
        for ring in self._rings:
            ring.close()


# --- b. the floor -------------------------------------------------------------------
#
# One memfd mapped by both processes. Direction d is 0 for parent -> child, 1 for
# child -> parent; each 64-byte line has one writer:
#
#   line 2d    @128d        sender:   u32 seq (the futex word) | u32 pad | u64 value | u64 nbytes
#   line 2d+1  @128d + 64   receiver: u32 waiting (1 while it sleeps on seq)
#   data d     @4096 + d * capacity   the bytes of an array value
#
# nbytes 0: ``value`` holds an int; _STOP: the parent is done; else an array's size.

_STOP = (1 << 64) - 1
_DATA_AT = 4096
_SLICE_S = 0.1
_GIVE_UP_S = 30.0  # a dead peer must end the run, not hang it


class _FloorEnd:
    """One process's end: it sends in one direction and receives in the other."""

    def __init__(self, fd: int, capacity_bytes: int, send_dir: int):
        self._mm = mmap.mmap(fd, _DATA_AT + 2 * capacity_bytes)
        self._anchor = ctypes.c_char.from_buffer(self._mm)  # pins the address for futex
        addr = ctypes.addressof(self._anchor)
        self._q, self._i = memoryview(self._mm).cast("Q"), memoryview(self._mm).cast("I")
        out, inn = 128 * send_dir, 128 * (1 - send_dir)
        self._out_seq, self._out_waiting, self._out_addr = out // 4, (out + 64) // 4, addr + out
        self._out_value, self._out_nbytes = out // 8 + 1, out // 8 + 2
        self._in_seq, self._in_waiting, self._in_addr = inn // 4, (inn + 64) // 4, addr + inn
        self._in_value, self._in_nbytes = inn // 8 + 1, inn // 8 + 2
        self._out_data = np.frombuffer(
            self._mm, np.uint8, capacity_bytes, _DATA_AT + send_dir * capacity_bytes
        )
        self._in_data = np.frombuffer(
            self._mm, np.uint8, capacity_bytes, _DATA_AT + (1 - send_dir) * capacity_bytes
        )
        self._sent = self._seen = 0

    def send(self, value: int | np.ndarray | None) -> None:
        q, i = self._q, self._i
        if value is None:
            q[self._out_nbytes] = _STOP
        elif type(value) is int:
            q[self._out_value] = value
            q[self._out_nbytes] = 0
        else:
            n = value.nbytes
            np.copyto(self._out_data[:n], value.view(np.uint8))
            q[self._out_nbytes] = n
        self._sent = (self._sent + 1) & 0xFFFFFFFF
        i[self._out_seq] = self._sent
        fence()  # Dekker: our seq store must precede our load of the peer's waiting flag
        if i[self._out_waiting]:
            futex_wake(self._out_addr)

    def receive(self) -> int | np.ndarray | None:
        if self._i[self._in_seq] == self._seen:
            self._wait()
        self._seen = self._i[self._in_seq]
        n = self._q[self._in_nbytes]
        if n == 0:
            return self._q[self._in_value]
        if n == _STOP:
            return None
        return self._in_data[:n]  # a view, as the ring's zero-copy read returns

    def _wait(self) -> None:
        i, seen = self._i, self._seen
        spin_end = time.perf_counter_ns() + SPIN_NS
        give_up = time.monotonic() + _GIVE_UP_S
        while i[self._in_seq] == seen:
            if time.perf_counter_ns() < spin_end:
                continue
            i[self._in_waiting] = 1
            fence()  # Dekker: our waiting store must precede our load of seq
            if i[self._in_seq] == seen:
                futex_wait(self._in_addr, seen, _SLICE_S)
            i[self._in_waiting] = 0
            if time.monotonic() > give_up:
                raise TimeoutError(f"floor: no message for {_GIVE_UP_S} s; is the peer alive?")

    def close(self) -> None:
        # Drop every export of the mapping first: mmap.close() refuses while they live.
        del self._out_data, self._in_data, self._anchor
        self._q.release()
        self._i.release()
        self._mm.close()


def _floor_echo(pid: int, fd: int, capacity_bytes: int) -> None:
    own_fd = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
    try:
        end = _FloorEnd(own_fd, capacity_bytes, send_dir=1)
    finally:
        os.close(own_fd)  # the mapping keeps the memory
    while (value := end.receive()) is not None:
        end.send(value)
    end.close()


class _FloorPair:
    settled_ns = SPIN_NS

    def __init__(self, ctx: Any, cpu: int | None, capacity_bytes: int):
        self._fd = os.memfd_create("bench.floor", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, _DATA_AT + 2 * capacity_bytes)
        self._end = _FloorEnd(self._fd, capacity_bytes, send_dir=0)
        args = (cpu, _floor_echo, os.getpid(), self._fd, capacity_bytes)
        self.proc = ctx.Process(target=_util.run_pinned, args=args, daemon=True)
        self.proc.start()

    def round_trip(self, value: Any) -> object:
        self._end.send(value)
        return self._end.receive()

    def stop(self) -> None:
        self._end.send(None)
        _join(self.proc)
        self._end.close()
        os.close(self._fd)


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
        _join(self.proc)
        self._conn.close()


def _join(proc: Any) -> None:
    proc.join(JOIN_TIMEOUT_S)
    if proc.is_alive():
        proc.kill()
        proc.join()


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
            pairs[B] = _FloorPair(ctx, child_cpu, ARRAY_BYTES)
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
    _join(proc)
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
