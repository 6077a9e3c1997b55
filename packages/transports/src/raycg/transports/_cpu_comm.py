"""raycg's CPU communicator: tensors among the processes of one node, through shared memory.

An owner (the runtime's driver, a test) creates a :class:`CpuCommGroup`; its picklable
``spec`` goes to every member, which opens ``CpuCommunicator(spec)`` and calls
``initialize(rank)``. Point to point goes through one ShmRing per ordered pair of ranks
(zero copy, tensors through _serde). Collectives go through one segment (a memfd)::

    @0          u64 magic | u64 world_size | u64 capacity_bytes
    @64         u32 aborted (0 -> 1 once) | u32 futex (bumped atomically on every change)
    @128 + 64r  rank r's line, written by rank r only:
                u64 arrived | u64 reduced | u64 done | u32 pid | u32 pad | u64 start_time
    @DATA       world_size contribution regions of capacity_bytes, then a result region

Every collective is a sequence of *epochs* (one per piece of at most capacity_bytes),
numbered alike on every member because all call the same collectives in the same
order. In epoch ``e`` a member waits until every member is ``done`` with ``e - 1`` (its
region is free), copies its contribution into its region, says ``arrived = e``, waits
until everyone arrived, computes its output from the regions, and says ``done = e``.
A large allreduce splits the reduction: member ``r`` reduces chunk ``r`` of every region
into the result region (``reduced = e``), then everyone copies the result: each member
reads 2x the data instead of world_size x. Reductions run in rank order, so results
equal torch's reference (``reduce(torch.add, tensors)``) bit for bit.

Waiting spins briefly, then sleeps on the futex in slices, checking between slices that
the members it waits for are alive. A wait past its timeout aborts the group (sets
``aborted`` and wakes everyone, closes the p2p rings) and raises ChannelTimeout; the
others' waits then end with ChannelClosed, so no thread stays blocked.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from . import _futex, _liveness
from ._communicator import Allocator, Communicator, ReduceOp
from ._deadline import deadline_after, remaining
from ._errors import ChannelBroken, ChannelClosed, ChannelError, ChannelTimeout
from ._segment import PAGE_BYTES, Segment, round_up
from ._shm_reader import ShmRingReader
from ._shm_ring import ShmRing, ShmRingSpec
from ._shm_writer import ShmRingWriter

_MAGIC = int.from_bytes(b"RAYCGCOM", "little")
_ABORTED, _FUTEX, _RANKS, _LINE = 64, 68, 128, 64
_ARRIVED, _REDUCED, _DONE, _PID, _START = 0, 8, 16, 24, 32
DEFAULT_CAPACITY_BYTES = 8 << 20  # per member; memfd pages cost nothing until touched
DEFAULT_TIMEOUT_S = 30.0
_SPIN_S = 50e-6
_LIVENESS_INTERVAL_S = 0.1
# Up to this size every member reduces all contributions itself (one barrier less);
# above it the reduction is split by chunks.
_SPLIT_MIN_BYTES = 64 << 10


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


def _torch() -> Any:
    import torch  # only a member that exchanges tensors has torch

    return torch


class CpuCommunicator(Communicator):
    """One member of a :class:`CpuCommGroup`.

    Args:
        spec: the group's ``spec``.
        rank: join at once as this rank (else call :meth:`initialize`).
        timeout_s: the default timeout of every blocking call (None: wait forever).
    """

    def __init__(
        self, spec: CpuCommSpec, rank: int | None = None, *, timeout_s: float | None = DEFAULT_TIMEOUT_S
    ):
        self.spec = spec
        self.timeout_s = timeout_s
        self._rank: int | None = None
        self._seg: Segment | None = None
        self._epoch = 0
        self._writers: dict[int, ShmRingWriter] = {}
        self._readers: dict[int, ShmRingReader] = {}
        self._regions: list[Any] = []  # uint8 tensors over the contribution regions
        self._result: Any = None  # ... and over the result region
        self._views: dict[Any, list[Any]] = {}  # dtype -> typed views of all of them
        self._q: Any = None
        self._i: Any = None
        if rank is not None:
            self.initialize(rank)

    def __repr__(self) -> str:
        return f"CpuCommunicator({self.spec.name!r}, rank={self._rank}, world_size={self.spec.world_size})"

    # --- membership -------------------------------------------------------------

    def initialize(self, rank: int) -> None:
        """Join as ``rank``.

        Raises:
            ValueError: ``rank`` out of range, or already initialized.
            ChannelBroken: the group's owner is gone or the segment is not a group's.
        """
        spec = self.spec
        if self._rank is not None:
            raise ValueError(f"{self!r} is initialized already")
        if not 0 <= rank < spec.world_size:
            raise ValueError(f"rank {rank} out of range for a group of {spec.world_size}")
        seg = Segment.open(spec.pid, spec.fd, spec.size_bytes)
        try:
            magic, world, capacity = struct.unpack_from("<3Q", seg.view, 0)  # type: ignore[arg-type]
            if (magic, world, capacity) != (_MAGIC, spec.world_size, spec.capacity_bytes):
                raise ChannelBroken(f"communicator {spec.name!r}: the shared segment is not this group's")
            q = seg.view.cast("Q")  # type: ignore[union-attr]
            line = (_RANKS + _LINE * rank) // 8
            q[line + _START // 8] = _liveness.process_start_time(os.getpid()) or 0
            seg.view.cast("I")[(_RANKS + _LINE * rank + _PID) // 4] = os.getpid()  # type: ignore[union-attr]
            self._q = q
            self._i = seg.view.cast("I")  # type: ignore[union-attr]
            self._line = line
            self._futex_addr = seg.address + _FUTEX
            self._seg, self._rank = seg, rank
            for (src, dst), ring in spec.p2p.items():
                if src == rank:
                    self._writers[dst] = ShmRingWriter(ring)
                elif dst == rank:
                    self._readers[src] = ShmRingReader(ring, 0)
        except BaseException:
            self._seg = seg
            self.destroy()
            raise

    def get_rank(self) -> int | None:
        return self._rank

    def get_world_size(self) -> int:
        return self.spec.world_size

    def get_transport_name(self) -> str:
        return "cpu"

    # --- point to point ---------------------------------------------------------

    def send(self, tensor: Any, peer_rank: int, timeout_s: float | None = None) -> None:
        """Send ``tensor`` (CPU) to ``peer_rank``: one copy into their ring.

        Raises:
            ValueError: a bad peer rank, or a tensor not on the CPU.
            ChannelTimeout: the peer did not take earlier sends in time (aborted).
        """
        writer = self._peer(self._writers, peer_rank, "send to")
        _check_cpu(tensor, "send")
        self._guard(
            lambda: writer.write(tensor.detach(), self._timeout(timeout_s)), f"send to rank {peer_rank}"
        )

    def recv(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        peer_rank: int,
        allocator: Allocator | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """The next tensor from ``peer_rank``; in ``allocator(shape, dtype)`` if given.

        Raises:
            ValueError: a bad peer rank.
            ChannelBroken: the peer sent something else than a ``shape`` ``dtype`` tensor.
            ChannelTimeout: nothing came in time (the communicator is aborted).
        """
        reader = self._peer(self._readers, peer_rank, "receive from")
        got = self._guard(
            lambda: reader.read(self._timeout(timeout_s), copy=True), f"recv from rank {peer_rank}"
        )
        torch = _torch()
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(shape) or got.dtype != dtype:
            what = (
                f"a {tuple(got.shape)} {got.dtype} tensor"
                if isinstance(got, torch.Tensor)
                else type(got).__name__
            )
            raise ChannelBroken(
                f"communicator {self.spec.name!r}: rank {self._rank} expected a {tuple(shape)} {dtype} "
                f"tensor from rank {peer_rank}, got {what}: the two sides disagree on the transfer"
            )
        if allocator is None:
            return got
        buf = allocator(tuple(shape), dtype)
        buf.copy_(got)
        return buf

    def _peer(self, ends: dict[int, Any], peer_rank: int, what: str) -> Any:
        self._check_open()
        if peer_rank == self._rank or peer_rank not in ends:
            if not self.spec.p2p:
                raise ValueError(f"communicator {self.spec.name!r} was made without p2p rings")
            raise ValueError(
                f"rank {self._rank} cannot {what} rank {peer_rank}: peers are 0..{self.spec.world_size - 1}, "
                "other than itself"
            )
        return ends[peer_rank]

    # --- collectives ------------------------------------------------------------

    def allreduce(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: float | None = None
    ) -> None:
        """``recv_buf`` = the reduction of every member's ``send_buf``, in rank order.

        Raises:
            ValueError/TypeError: mismatched buffers, AVG of integers, an unknown op.
            ChannelTimeout: a member did not join in time (the communicator is aborted).
        """
        op = ReduceOp.of(op)
        send, out, finish = self._buffers(send_buf, recv_buf, 1, op, "allreduce")
        per = self.spec.capacity_bytes // send.element_size()
        for p in range(0, send.numel(), per):
            k = min(per, send.numel() - p)
            put = functools.partial(_put, send[p : p + k])
            take = functools.partial(self._allreduce_piece, out[p : p + k], k, op)
            self._collective("allreduce", timeout_s, send.dtype, put, take)
        finish()

    def _allreduce_piece(self, out: Any, k: int, op: ReduceOp, regions: list[Any], sync: Callable) -> None:
        world = self.spec.world_size
        contributions, result = regions[:world], regions[world]
        if k * out.element_size() <= _SPLIT_MIN_BYTES or world == 1:
            _reduce(op, [r[:k] for r in contributions], out, world)
            return
        rank = self._rank
        assert rank is not None
        lo, hi = k * rank // world, k * (rank + 1) // world
        _reduce(op, [r[lo:hi] for r in contributions], result[lo:hi], world)
        sync(_REDUCED)
        out.copy_(result[:k])

    def allgather(self, send_buf: Any, recv_buf: Any, timeout_s: float | None = None) -> None:
        """``recv_buf`` = every member's ``send_buf``, in rank order (world_size x the
        elements of ``send_buf``).

        Raises:
            ValueError/TypeError: mismatched buffers.
            ChannelTimeout: a member did not join in time (the communicator is aborted).
        """
        send, out, finish = self._buffers(send_buf, recv_buf, -self.spec.world_size, None, "allgather")
        m = send.numel()
        per = self.spec.capacity_bytes // send.element_size()

        def gather(p: int, k: int, regions: list[Any], sync: Callable) -> None:
            for i, r in enumerate(regions[: self.spec.world_size]):
                out[i * m + p : i * m + p + k].copy_(r[:k])

        for p in range(0, m, per):
            k = min(per, m - p)
            put = functools.partial(_put, send[p : p + k])
            self._collective("allgather", timeout_s, send.dtype, put, functools.partial(gather, p, k))
        finish()

    def reducescatter(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: float | None = None
    ) -> None:
        """``recv_buf`` = chunk ``rank`` of the reduction of every ``send_buf`` (which has
        world_size x the elements of ``recv_buf``).

        Raises:
            ValueError/TypeError: mismatched buffers, AVG of integers, an unknown op.
            ChannelTimeout: a member did not join in time (the communicator is aborted).
        """
        op = ReduceOp.of(op)
        world, rank = self.spec.world_size, self._rank
        send, out, finish = self._buffers(send_buf, recv_buf, world, op, "reducescatter")
        m = out.numel()
        per = self.spec.capacity_bytes // send.element_size() // world

        def put(p: int, k: int, mine: Any) -> None:
            for i in range(world):
                mine[i * k : (i + 1) * k].copy_(send[i * m + p : i * m + p + k])

        def take(p: int, k: int, regions: list[Any], sync: Callable) -> None:
            assert rank is not None
            _reduce(op, [r[rank * k : (rank + 1) * k] for r in regions[:world]], out[p : p + k], world)

        for p in range(0, m, max(per, 1)):
            k = min(per, m - p)
            put_p, take_p = functools.partial(put, p, k), functools.partial(take, p, k)
            self._collective("reducescatter", timeout_s, send.dtype, put_p, take_p)
        finish()

    def broadcast(self, buf: Any, root_rank: int, timeout_s: float | None = None) -> None:
        """``buf`` = ``root_rank``'s ``buf``, on every member.

        Raises:
            ValueError: a bad root rank.
            ChannelTimeout: a member did not join in time (the communicator is aborted).
        """
        if not 0 <= root_rank < self.spec.world_size:
            raise ValueError(f"root_rank {root_rank} out of range for a group of {self.spec.world_size}")
        flat, out, finish = self._buffers(buf, buf, 1, None, "broadcast")
        per = self.spec.capacity_bytes // flat.element_size()
        is_root = root_rank == self._rank

        def put(p: int, k: int, mine: Any) -> None:
            if is_root:
                mine[:k].copy_(flat[p : p + k])

        def take(p: int, k: int, regions: list[Any], sync: Callable) -> None:
            if not is_root:
                out[p : p + k].copy_(regions[root_rank][:k])

        for p in range(0, flat.numel(), per):
            k = min(per, flat.numel() - p)
            put_p, take_p = functools.partial(put, p, k), functools.partial(take, p, k)
            self._collective("broadcast", timeout_s, flat.dtype, put_p, take_p)
        finish()

    # --- the epoch protocol -----------------------------------------------------

    def _collective(
        self,
        name: str,
        timeout_s: float | None,
        dtype: Any,
        put: Callable[[Any], object],
        take: Callable[[list[Any], Callable[[int], None]], None],
    ) -> None:
        """One epoch: contribute with ``put(my_region)``, then ``take(regions, sync)``,
        the regions viewed as ``dtype``; ``sync(field)`` says this member reached
        ``field`` and waits until every member has."""
        self._check_open()
        self._epoch += 1
        e = self._epoch
        deadline = deadline_after(self._timeout(timeout_s))
        what = f"{name} #{e}"

        def mark(field: int) -> None:
            _futex.fence()  # our data stores before the flag that publishes them
            self._q[self._line + field // 8] = e
            _futex.bump_and_wake(self._futex_addr)

        def sync(field: int) -> None:
            mark(field)
            self._wait_all(field, e, deadline, what)

        self._wait_all(_DONE, e - 1, deadline, what)  # the last epoch's regions are free
        regions = self._typed(dtype)
        put(regions[self._rank])  # type: ignore[index]
        sync(_ARRIVED)
        take(regions, sync)
        mark(_DONE)

    def _typed(self, dtype: Any) -> list[Any]:
        """The contribution regions and the result region, viewed as ``dtype``."""
        typed = self._views.get(dtype)
        if typed is None:
            typed = self._views[dtype] = [r.view(dtype) for r in (*self._regions, self._result)]
        return typed

    def _wait_all(self, field: int, epoch: int, deadline: float, what: str) -> None:
        """Until every member's ``field`` >= ``epoch``; abort on a timeout or a death."""
        if epoch <= 0:
            return
        q, i = self._q, self._i
        world = self.spec.world_size
        offs = [(_RANKS + _LINE * r + field) // 8 for r in range(world)]

        def behind() -> list[int]:
            return [r for r in range(world) if q[offs[r]] < epoch]

        end_spin = time.monotonic() + _SPIN_S
        while True:
            if i[_ABORTED // 4]:
                raise self._aborted()
            if not behind():
                return
            if time.monotonic() >= end_spin:
                break
            os.sched_yield()
        addr = self._seg.address + _FUTEX  # type: ignore[union-attr]
        while True:
            seen = i[_FUTEX // 4]
            _futex.fence()  # Dekker: our read of the word before our reads of the flags
            late = behind()
            if not late:
                return
            if i[_ABORTED // 4]:
                raise self._aborted()
            left = remaining(deadline)
            if left <= 0:
                self.abort()
                raise ChannelTimeout(
                    f"communicator {self.spec.name!r}: rank {self._rank} timed out in {what}: "
                    f"rank(s) {', '.join(map(str, late))} never joined; the communicator is aborted"
                )
            _futex.futex_wait(addr, seen, min(left, _LIVENESS_INTERVAL_S))
            self._check_alive(late)

    def _check_alive(self, ranks: list[int]) -> None:
        for r in ranks:
            line = _RANKS + _LINE * r
            pid, start = self._i[(line + _PID) // 4], self._q[(line + _START) // 8]
            if pid and not _liveness.is_alive(pid, start):
                self.abort()
                raise ChannelBroken(f"communicator {self.spec.name!r}: rank {r} (pid {pid}) died")

    @property
    def aborted(self) -> bool:
        """Whether the group was aborted (or this member destroyed)."""
        return self._i is None or bool(self._i[_ABORTED // 4])

    def _aborted(self) -> ChannelClosed:
        return ChannelClosed(f"communicator {self.spec.name!r} was aborted")

    # --- buffers ----------------------------------------------------------------

    def _buffers(
        self, send_buf: Any, recv_buf: Any, ratio: int, op: ReduceOp | None, what: str
    ) -> tuple[Any, Any, Callable[[], None]]:
        """Flat views of the buffers, checked; ``finish()`` copies a staged result back.

        ``ratio``: send elements = ratio x recv elements (negative: recv = -ratio x send).
        """
        self._check_open()
        _check_cpu(send_buf, what)
        _check_cpu(recv_buf, what)
        if send_buf.dtype != recv_buf.dtype:
            raise TypeError(f"{what}: send_buf is {send_buf.dtype} but recv_buf is {recv_buf.dtype}")
        n_send, n_recv = send_buf.numel(), recv_buf.numel()
        if (ratio > 0 and n_send != ratio * n_recv) or (ratio < 0 and n_recv != -ratio * n_send):
            want = f"{ratio} x" if ratio > 0 else f"1/{-ratio} of"
            raise ValueError(
                f"{what}: send_buf has {n_send} elements, recv_buf {n_recv}: send_buf must have {want} "
                f"recv_buf's (world_size {self.spec.world_size})"
            )
        torch = _torch()
        if op is ReduceOp.AVG and not (send_buf.dtype.is_floating_point or send_buf.dtype.is_complex):
            raise TypeError(f"{what}: AVG of {send_buf.dtype} tensors: use a floating-point dtype")
        send = send_buf.detach().reshape(-1)
        if recv_buf.is_contiguous():
            return send, recv_buf.view(-1), lambda: None
        staged = torch.empty(n_recv, dtype=recv_buf.dtype)
        return send, staged, lambda: recv_buf.copy_(staged.view(recv_buf.shape))

    def _timeout(self, timeout_s: float | None) -> float | None:
        return self.timeout_s if timeout_s is None else timeout_s

    def _guard(self, call: Callable[[], Any], what: str) -> Any:
        """A ring call: a timeout aborts the communicator; an aborted one says so."""
        try:
            return call()
        except ChannelTimeout as e:
            self.abort()
            raise ChannelTimeout(
                f"communicator {self.spec.name!r}: rank {self._rank} timed out in {what}; "
                f"the communicator is aborted ({e})"
            ) from e
        except ChannelClosed as e:
            raise self._aborted() from e

    def _check_open(self) -> None:
        if self._seg is None or self._rank is None:
            raise ChannelClosed(f"communicator {self.spec.name!r}: not initialized, or destroyed")
        if self._i[_ABORTED // 4]:
            raise self._aborted()
        if not self._regions:
            self._map_regions()

    def _map_regions(self) -> None:
        torch = _torch()
        seg, spec = self._seg, self.spec
        assert seg is not None and seg.view is not None
        base, cap = _data_offset(spec.world_size), spec.capacity_bytes
        regions = [
            torch.frombuffer(seg.view, dtype=torch.uint8, count=cap, offset=base + r * cap)
            for r in range(spec.world_size + 1)
        ]
        self._regions, self._result = regions[:-1], regions[-1]

    # --- the end ----------------------------------------------------------------

    def abort(self) -> None:
        """Stop every member's calls (ChannelClosed) and wake their waits. Idempotent."""
        seg = self._seg
        if seg is not None and seg.view is not None:
            _futex_abort(seg)
        for end in [*self._writers.values(), *self._readers.values()]:
            end.close()  # a ring close wakes its waiters at once, in every process

    def destroy(self) -> None:
        """Leave: close this member's ring ends, unmap the segment. Idempotent.

        Closing a ring closes it for the peer too, so destroy once every peer has
        received what this member sent (at teardown, as Ray's destroy is called).
        """
        for end in [*self._writers.values(), *self._readers.values()]:
            try:
                end.close()
            except ChannelError:
                pass
        self._writers.clear()
        self._readers.clear()
        self._regions, self._result = [], None  # views of the segment: gone before it is
        self._views.clear()
        self._q = self._i = None
        seg, self._seg = self._seg, None
        if seg is not None:
            seg.close()


def _check_cpu(tensor: Any, what: str) -> None:
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"{what} takes torch tensors, got {type(tensor).__module__}.{type(tensor).__qualname__}"
        )
    if tensor.device.type != "cpu":
        raise ValueError(f"{what}: the CPU communicator takes CPU tensors, got one on {tensor.device}")


def _put(src: Any, mine: Any) -> None:
    mine[: src.numel()].copy_(src)


def _reduce(op: ReduceOp, inputs: list[Any], out: Any, world: int) -> None:
    """``out`` = ``inputs`` reduced in order (as ``functools.reduce`` over torch's op)."""
    torch = _torch()
    fn = _OPS[op](torch)
    out.copy_(inputs[0])
    for x in inputs[1:]:
        fn(out, x, out=out)
    if op is ReduceOp.AVG:
        out.div_(world)


_OPS: dict[ReduceOp, Callable[[Any], Callable[..., Any]]] = {
    ReduceOp.SUM: lambda t: t.add,
    ReduceOp.AVG: lambda t: t.add,
    ReduceOp.PRODUCT: lambda t: t.mul,
    ReduceOp.MAX: lambda t: t.maximum,
    ReduceOp.MIN: lambda t: t.minimum,
}


if os.environ.get("RAYCG_COMM_FAULTS"):  # chaos runs only: see _communicator_faults
    from ._communicator_faults import install_from_env

    install_from_env(CpuCommunicator)
