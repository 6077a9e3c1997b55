"""The CPU communicator's shared memory: the owner's group, and a member's view of it.

A :class:`CpuCommGroup` (the owner: the runtime's driver, a test) creates one segment (a
memfd, never named in /dev/shm) and the p2p rings; its picklable ``spec`` goes to every
member. The segment::

    @0          u64 magic | u64 world_size | u64 capacity_bytes
    @64         u32 aborted (0 -> 1 once) | u32 futex (bumped atomically on every change)
    @128 + 64r  rank r's line, written by rank r only:
                u64 arrived | u64 reduced | u64 done | u32 pid | u32 pad | u64 start_time
    @DATA       world_size contribution regions of capacity_bytes, then a result region

A member's :class:`MemberSegment` says where it is (``mark``: store its epoch in one of
its fields, then bump the futex) and waits for the others (``wait_all``): a brief spin,
then futex sleeps in slices, checking between slices that the members it waits for are
alive. Memory ordering: a marker fences between its data stores and its flag store (and
the stores of a large copy may be non-temporal); a waiter reads the futex word, fences,
then reads the flags (Dekker's pattern, as in _futex), so a wake-up is never lost.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _futex, _liveness
from ._deadline import remaining
from ._errors import ChannelBroken, ChannelClosed, ChannelTimeout
from ._segment import PAGE_BYTES, Segment, round_up
from ._shm_ring import ShmRing, ShmRingSpec

_MAGIC = int.from_bytes(b"RAYCGCOM", "little")
_ABORTED, _FUTEX, _RANKS, _LINE = 64, 68, 128, 64
ARRIVED, REDUCED, DONE = 0, 8, 16  # a rank line's epoch fields
_PID, _START = 24, 32
DEFAULT_CAPACITY_BYTES = 8 << 20  # per member; memfd pages cost nothing until touched
_SPIN_S = 50e-6
_LIVENESS_INTERVAL_S = 0.1


def _data_offset(world_size: int) -> int:
    return round_up(_RANKS + _LINE * world_size, PAGE_BYTES)


@dataclasses.dataclass(frozen=True)
class CpuCommSpec:
    """Everything a member needs to join (picklable)."""

    name: str
    pid: int
    fd: int
    world_size: int
    capacity_bytes: int
    size_bytes: int
    p2p: dict[tuple[int, int], ShmRingSpec]  # (src, dst) -> ring


class CpuCommGroup:
    """The owner of a CPU communicator's shared memory: create it, hand ``spec`` to the
    members, close it once they are done (that also closes the p2p rings).

    Args:
        world_size: members (ranks 0 .. world_size - 1), at least 1.
        capacity_bytes: bytes each member contributes per epoch (larger tensors take
            several epochs).
        p2p: make the rings send/recv need (world_size * (world_size - 1) of them).
        name: shown in errors and in /proc/<pid>/fd.
    """

    def __init__(
        self,
        world_size: int,
        *,
        capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
        p2p: bool = True,
        name: str = "comm",
    ):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if capacity_bytes < 64:
            raise ValueError(f"capacity_bytes must be >= 64, got {capacity_bytes}")
        capacity_bytes = round_up(capacity_bytes, PAGE_BYTES)
        size = _data_offset(world_size) + (world_size + 1) * capacity_bytes
        self._seg = Segment.create(size, f"{name}.comm")
        self._rings: list[ShmRing] = []
        try:
            struct.pack_into("<3Q", self._seg.view, 0, _MAGIC, world_size, capacity_bytes)  # type: ignore[arg-type]
            p2p_specs = {}
            if p2p:
                for src, dst in itertools.permutations(range(world_size), 2):
                    ring = ShmRing(4, 1, slot_bytes=64 << 10, name=f"{name}.p2p.{src}-{dst}")
                    self._rings.append(ring)
                    p2p_specs[(src, dst)] = ring.spec
        except BaseException:
            self.close()
            raise
        self.spec = CpuCommSpec(name, os.getpid(), self._seg.fd, world_size, capacity_bytes, size, p2p_specs)

    def close(self) -> None:
        """Abort the group (members' waits end with ChannelClosed) and drop its memory."""
        if self._seg.view is not None:
            _futex_abort(self._seg)
        for ring in self._rings:
            ring.close()
        self._seg.close()

    def __enter__(self) -> CpuCommGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _futex_abort(seg: Segment) -> None:
    view = seg.view
    assert view is not None
    view.cast("I")[_ABORTED // 4] = 1
    _futex.fence()
    _futex.bump_and_wake(seg.address + _FUTEX)


class MemberSegment:
    """Rank ``rank``'s view of its group's segment: registers the member (pid), marks
    its progress, waits for the others'.

    Args:
        spec, rank: the group and this member's rank in it.
        labels: how errors name each rank (a cross-node group's ranks here are its
            members on one node: their ranks in the whole group); the ranks if None.

    Raises:
        ChannelBroken: the owner is gone, or the segment is not this group's.
    """

    def __init__(self, spec: CpuCommSpec, rank: int, labels: Sequence[int] | None = None):
        self.spec, self.rank = spec, rank
        self._labels = list(labels) if labels is not None else list(range(spec.world_size))
        self._seg = Segment.open(spec.pid, spec.fd, spec.size_bytes)
        view = self._seg.view
        assert view is not None
        if struct.unpack_from("<3Q", view, 0) != (_MAGIC, spec.world_size, spec.capacity_bytes):
            self._seg.close()
            raise ChannelBroken(f"communicator {spec.name!r}: the shared segment is not this group's")
        self._q, self._i = view.cast("Q"), view.cast("I")
        self._line = (_RANKS + _LINE * rank) // 8
        self._q[self._line + _START // 8] = _liveness.process_start_time(os.getpid()) or 0
        self._i[(_RANKS + _LINE * rank + _PID) // 4] = os.getpid()
        self._futex_addr = self._seg.address + _FUTEX
        self._regions: list[Any] = []  # uint8 tensors: the contribution regions, the result
        self._views: dict[Any, list[Any]] = {}  # dtype -> the regions viewed as it

    @property
    def aborted(self) -> bool:
        return self._i is None or bool(self._i[_ABORTED // 4])

    def abort(self) -> None:
        """Set ``aborted`` and wake every sleeper of every member. Idempotent."""
        if self._i is not None and self._seg.view is not None:
            _futex_abort(self._seg)

    def regions(self, dtype: Any) -> list[Any]:
        """The world_size contribution regions then the result region, as ``dtype``."""
        typed = self._views.get(dtype)
        if typed is None:
            if not self._regions:
                import torch  # only a member that reduces tensors has torch

                base, cap = _data_offset(self.spec.world_size), self.spec.capacity_bytes
                self._regions = [
                    torch.frombuffer(self._seg.view, dtype=torch.uint8, count=cap, offset=base + r * cap)
                    for r in range(self.spec.world_size + 1)
                ]
            typed = self._views[dtype] = [r.view(dtype) for r in self._regions]
        return typed

    def mark(self, field: int, epoch: int) -> None:
        """This member reached ``epoch`` in ``field``: publish it, wake the waiters."""
        _futex.fence()  # our data stores before the flag that publishes them
        self._q[self._line + field // 8] = epoch
        _futex.bump_and_wake(self._futex_addr)

    def wait_all(
        self,
        field: int,
        epoch: int,
        deadline: float,
        what: str,
        on_fault: Callable[[], None],
        poll: Callable[[], None] | None = None,
    ) -> None:
        """Until every member's ``field`` >= ``epoch``. ``on_fault()`` (the member's
        abort) runs before a timeout or a death is raised; ``poll()``, if given, runs
        between sleeps and may raise (a cross-node leader checks its links there).

        Raises:
            ChannelTimeout: past ``deadline``, naming the members that never joined.
            ChannelBroken: a member we wait for died.
            ChannelClosed: the group was aborted.
        """
        if epoch <= 0:
            return
        q, i, world = self._q, self._i, self.spec.world_size
        offs = [(_RANKS + _LINE * r + field) // 8 for r in range(world)]

        def behind() -> list[int]:
            return [r for r in range(world) if q[offs[r]] < epoch]

        end_spin = time.monotonic() + _SPIN_S
        while not i[_ABORTED // 4]:
            if not behind():
                return
            if time.monotonic() >= end_spin:
                break
            os.sched_yield()  # on a busy node, let the member we wait for run
        while True:
            seen = i[_FUTEX // 4]
            _futex.fence()  # Dekker: our read of the word before our reads of the flags
            late = behind()
            if not late:
                return
            if i[_ABORTED // 4]:
                raise ChannelClosed(f"communicator {self.spec.name!r} was aborted")
            left = remaining(deadline)
            if left <= 0:
                on_fault()
                raise ChannelTimeout(
                    f"communicator {self.spec.name!r}: rank {self._labels[self.rank]} timed out in "
                    f"{what}: rank(s) {', '.join(str(self._labels[r]) for r in late)} never joined; "
                    "the communicator is aborted"
                )
            _futex.futex_wait(self._futex_addr, seen, min(left, _LIVENESS_INTERVAL_S))
            self._check_alive(late, on_fault)
            if poll is not None:
                poll()

    def _check_alive(self, ranks: list[int], on_fault: Callable[[], None]) -> None:
        for r in ranks:
            line = _RANKS + _LINE * r
            pid, start = self._i[(line + _PID) // 4], self._q[(line + _START) // 8]
            if pid and not _liveness.is_alive(pid, start):
                on_fault()
                raise ChannelBroken(
                    f"communicator {self.spec.name!r}: rank {self._labels[r]} (pid {pid}) died"
                )

    def close(self) -> None:
        """Drop every view of the segment, then the segment. Idempotent."""
        self._regions, self._views = [], {}
        self._q = self._i = None  # type: ignore[assignment]
        self._seg.close()
