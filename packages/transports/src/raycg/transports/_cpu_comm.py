"""raycg's CPU communicator: tensors among the processes of one node, through shared memory.

A member opens ``CpuCommunicator(spec)`` with the ``spec`` of a :class:`CpuCommGroup`
(_cpu_comm_segment, which draws the shared segment) and calls ``initialize(rank)``.
Point to point goes through one ShmRing per ordered pair of ranks (tensors through
_serde: one copy in, one copy out). Collectives go through the group's segment.

Every collective is a sequence of *epochs* (one per piece of at most capacity_bytes),
numbered alike on every member because all call the same collectives in the same
order. In epoch ``e`` a member waits until every member is ``done`` with ``e - 1`` (its
region is free), copies its contribution into its region, says ``arrived = e``, waits
until everyone arrived, computes its output from the regions, and says ``done = e``.
A large allreduce splits the reduction: member ``r`` reduces chunk ``r`` of every region
into the result region (``reduced = e``), then everyone copies the result: each member
reads 2x the data instead of world_size x. Reductions run in rank order, so results
equal torch's reference (``reduce(torch.add, tensors)``) bit for bit.

A wait past its timeout aborts the group (sets ``aborted`` and wakes everyone, closes
the p2p rings) and raises ChannelTimeout; the others' waits then end with
ChannelClosed, so no thread stays blocked. An abort closes only the aborting member's
rings, so a p2p wait on a ring between two other members waits in slices
(:func:`sliced`) and looks at the group's ``aborted`` word between them.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from ._communicator import Allocator, Communicator, ReduceOp
from ._cpu_comm_segment import ARRIVED, DONE, REDUCED, CpuCommGroup, CpuCommSpec, MemberSegment
from ._deadline import deadline_after, remaining
from ._errors import ChannelBroken, ChannelClosed, ChannelError, ChannelTimeout
from ._shm_reader import ShmRingReader
from ._shm_writer import ShmRingWriter

__all__ = ["DEFAULT_TIMEOUT_S", "CpuCommGroup", "CpuCommSpec", "CpuCommunicator"]

DEFAULT_TIMEOUT_S = 30.0
# Up to this size every member reduces all contributions itself (one barrier less);
# above it the reduction is split by chunks.
_SPLIT_MIN_BYTES = 64 << 10
# How often a p2p wait looks at the group's aborted word (another member's abort).
_ABORT_POLL_S = 0.1


def _torch() -> Any:
    import torch  # only a member that exchanges tensors has torch

    return torch


class SegmentMember(Communicator):
    """What a member of raycg's CPU communicators (:class:`CpuCommunicator`, and the
    cross-node ``CpuNetCommunicator``) does the same way: its rank, its group's abort
    word, its buffers and timeouts. Subclasses set ``spec`` (with ``name`` and
    ``world_size``), ``timeout_s``, ``_rank`` and ``_seg`` (its ``MemberSegment``)."""

    spec: Any
    timeout_s: float | None
    _rank: int | None
    _seg: MemberSegment | None

    def get_rank(self) -> int | None:
        return self._rank

    def get_world_size(self) -> int:
        return int(self.spec.world_size)

    def get_transport_name(self) -> str:
        return "cpu"

    @property
    def aborted(self) -> bool:
        """Whether the group was aborted (or this member destroyed)."""
        return self._seg is None or self._seg.aborted

    def _aborted_error(self) -> ChannelClosed:
        return ChannelClosed(f"communicator {self.spec.name!r} was aborted")

    def _buffers(
        self, send_buf: Any, recv_buf: Any, ratio: int, op: ReduceOp | None, what: str
    ) -> tuple[Any, Any, Callable[[], None]]:
        self._check_open()
        return flat_buffers(send_buf, recv_buf, ratio, op, what, self.spec.world_size)

    def _timeout(self, timeout_s: float | None) -> float | None:
        return self.timeout_s if timeout_s is None else timeout_s

    def _guard(self, call: Callable[[], Any], what: str) -> Any:
        """A ring (or link) call: a timeout aborts the communicator; an aborted one says so."""
        try:
            return call()
        except ChannelTimeout as e:
            self.abort()
            raise ChannelTimeout(
                f"communicator {self.spec.name!r}: rank {self._rank} timed out in {what}; "
                f"the communicator is aborted ({e})"
            ) from e
        except ChannelClosed as e:
            raise self._aborted_error() from e

    def _received(
        self,
        reader: Any,
        shape: tuple[int, ...],
        dtype: Any,
        peer_rank: int,
        allocator: Allocator | None,
        timeout_s: float | None,
    ) -> Any:
        """``recv``'s common half: the next value of ``reader`` (the ring or link from
        ``peer_rank``), checked to be a ``shape`` ``dtype`` tensor, in ``allocator``'s
        tensor if given.

        Raises:
            ChannelBroken: the peer sent something else.
            ChannelTimeout: nothing came in time (the communicator is aborted).
        """
        got = self._guard(
            lambda: sliced(
                lambda t: reader.read(t, copy=True), self._timeout(timeout_s), lambda: self.aborted
            ),
            f"recv from rank {peer_rank}",
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

    def _check_open(self) -> None:
        if self._seg is None or self._rank is None:
            raise ChannelClosed(f"communicator {self.spec.name!r}: not initialized, or destroyed")
        if self._seg.aborted:
            self._abort_seen()
            raise self._aborted_error()

    def _abort_seen(self) -> None:
        """This member met its group's abort (a hook: nothing more to do by default)."""


class CpuCommunicator(SegmentMember):
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
        self._seg: MemberSegment | None = None
        self._epoch = 0
        self._writers: dict[int, ShmRingWriter] = {}
        self._readers: dict[int, ShmRingReader] = {}
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
        self._seg = MemberSegment(spec, rank)
        self._rank = rank
        try:
            for (src, dst), ring in spec.p2p.items():
                if src == rank:
                    self._writers[dst] = ShmRingWriter(ring)
                elif dst == rank:
                    self._readers[src] = ShmRingReader(ring, 0)
        except BaseException:
            self.destroy()
            raise

    # --- point to point ---------------------------------------------------------

    def send(self, tensor: Any, peer_rank: int, timeout_s: float | None = None) -> None:
        """Send ``tensor`` (CPU) to ``peer_rank``: one copy into their ring.

        Raises:
            ValueError: a bad peer rank, or a tensor not on the CPU.
            ChannelTimeout: the peer did not take earlier sends in time (aborted).
        """
        writer = self._peer(self._writers, peer_rank, "send to")
        _check_cpu(tensor, "send")
        value = tensor.detach()
        self._guard(
            lambda: sliced(lambda t: writer.write(value, t), self._timeout(timeout_s), lambda: self.aborted),
            f"send to rank {peer_rank}",
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
        return self._received(reader, shape, dtype, peer_rank, allocator, timeout_s)

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
        sync(REDUCED)
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

        seg = self._seg
        assert seg is not None

        def sync(field: int) -> None:
            seg.mark(field, e)
            seg.wait_all(field, e, deadline, what, self.abort)

        seg.wait_all(DONE, e - 1, deadline, what, self.abort)  # the last epoch's regions are free
        regions = seg.regions(dtype)
        put(regions[self._rank])  # type: ignore[index]
        sync(ARRIVED)
        take(regions, sync)
        seg.mark(DONE, e)

    # --- the end ----------------------------------------------------------------

    def abort(self) -> None:
        """Stop every member's calls (ChannelClosed) and wake their waits. Idempotent."""
        if self._seg is not None:
            self._seg.abort()
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
        seg, self._seg = self._seg, None
        if seg is not None:
            seg.close()


def sliced(call: Callable[[float], Any], timeout_s: float | None, aborted: Callable[[], bool]) -> Any:
    """``call(t)``, a ring read or write that does nothing when it times out, in waits of
    at most _ABORT_POLL_S until ``timeout_s``: another member's abort wakes no ring of
    ours, so between waits we look at ``aborted()``.

    Raises:
        ChannelClosed: the group was aborted.
        ChannelTimeout: nothing came (or no room) until ``timeout_s``.
    """
    deadline = deadline_after(timeout_s)
    while True:
        try:
            return call(min(remaining(deadline), _ABORT_POLL_S))
        except ChannelTimeout:
            if aborted():
                raise ChannelClosed("the communicator was aborted") from None
            if remaining(deadline) <= 0:
                raise


def flat_buffers(
    send_buf: Any, recv_buf: Any, ratio: int, op: ReduceOp | None, what: str, world_size: int
) -> tuple[Any, Any, Callable[[], None]]:
    """Flat views of a collective's buffers, checked; ``finish()`` copies a staged result
    back (into a non-contiguous ``recv_buf``).

    ``ratio``: send elements = ratio x recv elements (negative: recv = -ratio x send).

    Raises:
        TypeError: not CPU torch tensors, different dtypes, AVG of integers.
        ValueError: the element counts do not match ``ratio``.
    """
    _check_cpu(send_buf, what)
    _check_cpu(recv_buf, what)
    if send_buf.dtype != recv_buf.dtype:
        raise TypeError(f"{what}: send_buf is {send_buf.dtype} but recv_buf is {recv_buf.dtype}")
    n_send, n_recv = send_buf.numel(), recv_buf.numel()
    if (ratio > 0 and n_send != ratio * n_recv) or (ratio < 0 and n_recv != -ratio * n_send):
        want = f"{ratio} x" if ratio > 0 else f"1/{-ratio} of"
        raise ValueError(
            f"{what}: send_buf has {n_send} elements, recv_buf {n_recv}: send_buf must have {want} "
            f"recv_buf's (world_size {world_size})"
        )
    torch = _torch()
    if op is ReduceOp.AVG and not (send_buf.dtype.is_floating_point or send_buf.dtype.is_complex):
        raise TypeError(f"{what}: AVG of {send_buf.dtype} tensors: use a floating-point dtype")
    send = send_buf.detach().reshape(-1)
    if recv_buf.is_contiguous():
        return send, recv_buf.view(-1), lambda: None
    staged = torch.empty(n_recv, dtype=recv_buf.dtype)
    return send, staged, lambda: recv_buf.copy_(staged.view(recv_buf.shape))


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
