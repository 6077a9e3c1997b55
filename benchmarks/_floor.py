"""The channel benchmark's floor: the least a Python ping-pong over shared memory can do.

One memfd mapped by both processes, a u32 sequence number each way that is also the
futex word, a brief spin then a futex sleep, an 8-byte store for an int and one copy in
per hop for an array. What raycg's ring costs above it is serialization, bookkeeping
and safety. (bench_channel.py runs it beside the ring and a Pipe.)
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from typing import Any

import numpy as np

from raycg.transports._futex import fence, futex_wait, futex_wake

from . import _util

# The floor spins as long as the ring does by default (its DEFAULT_SPIN_S, 50 µs)
# before it sleeps, so both wait alike.
SPIN_NS = 50_000

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


class FloorPair:
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
        _util.join_or_kill(self.proc)
        self._end.close()
        os.close(self._fd)
