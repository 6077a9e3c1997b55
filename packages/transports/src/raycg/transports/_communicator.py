"""The communicator interface: tensors between the ranks of a group, point to point and
in collectives.

Shaped like Ray's ``ray.experimental.channel.communicator.Communicator`` (initialize,
ranks, send/recv with an allocator, streams, allreduce/allgather/reducescatter, destroy,
transport name), so that the runtime can hand raycg's communicators to code written for
Ray's, and put a user's own Ray ``Communicator`` behind this interface
(:class:`ForeignCommunicator`), without this package importing Ray. The differences:

- ranks, not actor handles: ``get_rank()`` is this member's rank, and the runtime
  keeps the rank <-> actor map (``get_actor_handles``/``get_rank(actor)`` are Ray's);
- every blocking call takes ``timeout_s`` (None: the communicator's default), and a
  wait that runs past it raises ChannelTimeout and *aborts* the communicator;
- ``abort()``: idempotent, never blocks, wakes every waiter of every member (they
  raise ChannelClosed); ``broadcast`` besides Ray's three collectives.

Errors (``_errors``): ChannelTimeout (a member did not join in time: the communicator
is aborted), ChannelClosed (aborted or destroyed), ChannelBroken (a member died),
ValueError/TypeError (bad arguments, named as given).
"""

from __future__ import annotations

import abc
import enum
import uuid
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

# allocator(shape, dtype) -> the tensor to receive into (Ray's TorchTensorAllocator).
Allocator = Callable[[tuple[int, ...], Any], Any]


class ReduceOp(enum.Enum):
    """The reductions of allreduce and reducescatter (Ray's ``ReduceOp`` names)."""

    SUM = "sum"
    PRODUCT = "product"
    MAX = "max"
    MIN = "min"
    AVG = "avg"

    @classmethod
    def of(cls, op: object) -> ReduceOp:
        """``op`` as a ReduceOp: one already, a name ("sum", "SUM") or any enum member of
        that name (Ray's ``ReduceOp.SUM``).

        Raises:
            ValueError: naming ``op`` and the choices.
        """
        if isinstance(op, cls):
            return op
        name = getattr(op, "name", op)
        if isinstance(name, str) and name.upper() in cls.__members__:
            return cls[name.upper()]
        raise ValueError(f"unknown reduce op {op!r}: use one of {', '.join(cls.__members__)}")


class Communicator(abc.ABC):
    """One member of a group of ``world_size`` ranks that exchange tensors.

    Every member calls the same collectives in the same order; a send to rank ``p`` is
    matched by ``p``'s recv from this rank, in order.
    """

    @abc.abstractmethod
    def initialize(self, rank: int) -> None:
        """Join the group as ``rank`` (once, before any other call)."""

    @abc.abstractmethod
    def get_rank(self) -> int | None:
        """This member's rank, None before :meth:`initialize`."""

    def get_self_rank(self) -> int | None:
        """Ray's name for :meth:`get_rank`."""
        return self.get_rank()

    @abc.abstractmethod
    def get_world_size(self) -> int:
        """How many ranks the group has."""

    @abc.abstractmethod
    def send(self, tensor: Any, peer_rank: int, timeout_s: float | None = None) -> None:
        """Send ``tensor`` to ``peer_rank``. May return once the data is queued; the
        caller must not change ``tensor`` until the peer received it."""

    def send_each(self, tensor: Any, peer_ranks: list[int], timeout_s: float | None = None) -> None:
        """Send ``tensor`` to each of ``peer_ranks`` (NCCL groups them: one send per
        reader, never deadlocking on their order)."""
        for peer in peer_ranks:
            self.send(tensor, peer, timeout_s)

    @abc.abstractmethod
    def recv(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        peer_rank: int,
        allocator: Allocator | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """The next tensor from ``peer_rank`` (of ``shape`` and ``dtype``), in a tensor
        from ``allocator(shape, dtype)`` if given. Safe to read when this returns."""

    def send_batch(self, sends: list[tuple[Any, int]], timeout_s: float | None = None) -> None:
        """Each ``(tensor, peer_rank)`` in order, as one batch (NCCL: one group, so
        that paired operations never deadlock on their order); one after another here."""
        for tensor, peer in sends:
            self.send(tensor, peer, timeout_s)

    def recv_batch(
        self,
        recvs: list[tuple[tuple[int, ...], Any, int, Allocator | None]],
        timeout_s: float | None = None,
    ) -> list[Any]:
        """Each ``(shape, dtype, peer_rank, allocator)`` in order, as one batch (NCCL: one
        group); the tensors, complete when this returns."""
        return [
            self.recv(shape, dtype, peer, allocator, timeout_s) for shape, dtype, peer, allocator in recvs
        ]

    @property
    def send_stream(self) -> Any:
        """The stream sends run on (a CUDA stream; None where there is none)."""
        return None

    @property
    def recv_stream(self) -> Any:
        """The stream receives run on (a CUDA stream; None where there is none)."""
        return None

    @abc.abstractmethod
    def allreduce(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: float | None = None
    ) -> None:
        """``recv_buf`` = the reduction of every member's ``send_buf`` (same shape)."""

    @abc.abstractmethod
    def allgather(self, send_buf: Any, recv_buf: Any, timeout_s: float | None = None) -> None:
        """``recv_buf`` (world_size times ``send_buf``'s elements) = every member's
        ``send_buf``, in rank order."""

    @abc.abstractmethod
    def reducescatter(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: float | None = None
    ) -> None:
        """``recv_buf`` = chunk ``rank`` of the reduction of every ``send_buf`` (whose
        elements are world_size times ``recv_buf``'s)."""

    @abc.abstractmethod
    def broadcast(self, buf: Any, root_rank: int, timeout_s: float | None = None) -> None:
        """``buf`` = ``root_rank``'s ``buf``, on every member."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop the group: every waiter of every member wakes (ChannelClosed), every later
        call raises ChannelClosed. Idempotent; never blocks."""

    @abc.abstractmethod
    def destroy(self) -> None:
        """Release this member's resources. Idempotent."""

    @abc.abstractmethod
    def get_transport_name(self) -> str:
        """``"cpu"`` or ``"nccl"`` (Ray's "cpu" / "accelerator" distinction)."""

    @classmethod
    def generate_communicator_id(cls) -> str:
        """A fresh id for a group (Ray's classmethod of the same name)."""
        return uuid.uuid4().hex


@runtime_checkable
class RayStyleCommunicator(Protocol):
    """What a user's own Ray ``Communicator`` subclass offers (duck-typed: no Ray import)."""

    def initialize(self, rank: int) -> None: ...
    def get_self_rank(self) -> int | None: ...
    def get_world_size(self) -> int: ...
    def send(self, value: Any, peer_rank: int) -> None: ...
    def recv(self, shape: Any, dtype: Any, peer_rank: int, allocator: Any = None) -> Any: ...
    def allreduce(self, send_buf: Any, recv_buf: Any, op: Any) -> None: ...
    def allgather(self, send_buf: Any, recv_buf: Any) -> None: ...
    def reducescatter(self, send_buf: Any, recv_buf: Any, op: Any) -> None: ...
    def destroy(self) -> None: ...
    def get_transport_name(self) -> str: ...


class ForeignCommunicator(Communicator):
    """A Ray-style communicator (a user's ``Communicator`` subclass) behind this interface.

    Args:
        impl: the object; it is called with Ray's signatures.
        reduce_op: our ReduceOp -> the op ``impl`` takes (the runtime passes Ray's enum
            lookup, ``lambda op: ray...ReduceOp[op.name]``); the identity if None.

    Its calls cannot be bounded from here: ``timeout_s`` is not passed on, and
    ``abort()`` calls ``impl.abort()`` if it has one (else ``destroy()``). broadcast
    uses ``impl.broadcast(buf, root_rank)`` if it has one, else send/recv from the root.
    """

    def __init__(self, impl: Any, reduce_op: Callable[[ReduceOp], Any] | None = None):
        missing = [
            m for m in ("send", "recv", "allreduce", "get_world_size") if not callable(getattr(impl, m, None))
        ]
        if missing:
            raise TypeError(
                f"{type(impl).__qualname__} is not a communicator: it has no {', '.join(missing)} "
                "(subclass ray.experimental.channel.communicator.Communicator)"
            )
        self.impl = impl
        self._op = reduce_op or (lambda op: op)

    def initialize(self, rank: int) -> None:
        self.impl.initialize(rank)

    def get_rank(self) -> int | None:
        return self.impl.get_self_rank()

    def get_world_size(self) -> int:
        return int(self.impl.get_world_size())

    def send(self, tensor: Any, peer_rank: int, timeout_s: float | None = None) -> None:
        self.impl.send(tensor, peer_rank)

    def recv(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        peer_rank: int,
        allocator: Allocator | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        return self.impl.recv(shape, dtype, peer_rank, allocator)

    @property
    def send_stream(self) -> Any:
        return getattr(self.impl, "send_stream", None)

    @property
    def recv_stream(self) -> Any:
        return getattr(self.impl, "recv_stream", None)

    def allreduce(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: float | None = None
    ) -> None:
        self.impl.allreduce(send_buf, recv_buf, self._op(ReduceOp.of(op)))

    def allgather(self, send_buf: Any, recv_buf: Any, timeout_s: float | None = None) -> None:
        self.impl.allgather(send_buf, recv_buf)

    def reducescatter(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: float | None = None
    ) -> None:
        self.impl.reducescatter(send_buf, recv_buf, self._op(ReduceOp.of(op)))

    def broadcast(self, buf: Any, root_rank: int, timeout_s: float | None = None) -> None:
        if callable(getattr(self.impl, "broadcast", None)):
            self.impl.broadcast(buf, root_rank)
            return
        rank, world = self.get_rank(), self.get_world_size()
        if rank == root_rank:
            for peer in range(world):
                if peer != root_rank:
                    self.impl.send(buf, peer)
        else:
            buf.copy_(self.impl.recv(tuple(buf.shape), buf.dtype, root_rank, None))

    def abort(self) -> None:
        stop = getattr(self.impl, "abort", None)
        (stop if callable(stop) else self.impl.destroy)()

    def destroy(self) -> None:
        self.impl.destroy()

    def get_transport_name(self) -> str:
        return str(self.impl.get_transport_name())


def as_communicator(obj: Any, reduce_op: Callable[[ReduceOp], Any] | None = None) -> Communicator:
    """``obj`` if it is a Communicator, else ``obj`` (Ray-style) wrapped in one.

    Raises:
        TypeError: ``obj`` is neither.
    """
    return obj if isinstance(obj, Communicator) else ForeignCommunicator(obj, reduce_op)
