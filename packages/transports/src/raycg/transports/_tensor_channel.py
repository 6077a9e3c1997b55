"""Values whose tensors go over a communicator: one writer rank, several reader ranks.

A value (a tensor, or tuples, lists and dicts holding tensors at any depth, or anything
else) is split in one walk: its tensors go with the communicator's ``send_batch`` /
``recv_batch`` (ncclSend/ncclRecv on a NCCL communicator: GPU to GPU, no host copy, one
send per reader, all in one NCCL group so that paired operations never deadlock; the
CPU communicator is its twin for CI); the rest of the value, with each tensor replaced
by a placeholder, and the tensors' metadata (shape, dtype) go first over an existing
channel (``meta``: the edge's ShmRing or gRPC channel), as one small message.

- Header first, then the data: a reader that has the header knows the writer is
  sending, so its receive may be bounded (``recv_timeout_s``) without ever timing out
  on a slow upstream; a writer that stalls after its header makes the reader time out,
  which aborts the communicator.
- ``static_shape`` (the runtime's ``_static_shape``): the metadata travels with the first
  value and then only when it changes (a failure in between, which holds no tensor),
  so the header of a static edge is the placeholder skeleton alone.
- A value the communicator cannot take (a tensor on another device than ``device``)
  is refused before anything is written: ValueNotSerializable, the channel stays in step.
- A value's tensors are received even where the rest of it cannot be unpickled (a
  class the reader lacks): that part, where it holds more than builtin containers and
  scalars, travels pickled apart (``_Packed``), unpickled once the tensors came, so
  its failure is that value's alone and the next value's tensors are never taken for
  its own.
- The communicator belongs to the caller: closing a channel closes ``meta`` only.

Subclasses of lists and dicts (an OrderedDict such as a state_dict, a defaultdict) and
namedtuples come back as themselves. Tensors inside objects other than tuples, lists and
dicts are not looked for: they
travel inside the value, through ``meta``, as that channel carries any value.
"""

from __future__ import annotations

import copy
import pickle
import sys
from typing import Any

from . import _serde
from ._channel import Channel, wrong_end
from ._communicator import Allocator, Communicator
from ._errors import ChannelBroken, ChannelError, ValueNotSerializable

# (shape, dtype name) of each tensor of a value, in walk order.
Meta = list[tuple[tuple[int, ...], str]]


class _At:
    """Where tensor ``i`` of the value was (the placeholder in the header)."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (_At, (self.i,))


class _Packed:
    """A header's skeleton, pickled apart from the tensors' metadata: a reader that
    cannot rebuild it still receives the tensors (see the module's docstring). Its
    buffers travel out of band, without a copy more."""

    __slots__ = ("buffers", "stream")

    def __init__(self, stream: bytes, buffers: list[Any]):
        self.stream, self.buffers = stream, buffers

    @classmethod
    def of(cls, skeleton: Any) -> _Packed:
        """Raises: ValueNotSerializable (nothing was written)."""
        return cls(*_serde.encode(skeleton))

    def load(self) -> Any:
        """The skeleton; raises whatever its unpickling raises."""
        return _serde.decode(self.stream, self.buffers)

    def __reduce__(self) -> tuple[Any, tuple[bytes, list[pickle.PickleBuffer]]]:
        return (_Packed, (self.stream, [pickle.PickleBuffer(b) for b in self.buffers]))


_BUILTIN_LEAVES = frozenset({_At, str, int, float, bool, type(None), bytes})


def _builtin(skeleton: Any) -> bool:
    """Whether ``skeleton`` is plain tuples, lists and dicts of builtin scalars and
    placeholders: something every reader unpickles, so it needs no ``_Packed``."""
    kind = type(skeleton)
    if kind in _BUILTIN_LEAVES:
        return True
    if kind is dict:
        return all(type(k) in _BUILTIN_LEAVES and _builtin(v) for k, v in skeleton.items())
    if kind is list or kind is tuple:
        return all(_builtin(v) for v in skeleton)
    return False


def _split(value: Any, torch: Any, out: list[Any]) -> Any:
    """``value`` with every tensor in it (and its tuples, lists, dicts) replaced by an
    ``_At``, appended to ``out``; containers without tensors are kept as they are."""
    if isinstance(value, torch.Tensor):
        out.append(value)
        return _At(len(out) - 1)
    if isinstance(value, (tuple, list)):
        n = len(out)
        items = [_split(v, torch, out) for v in value]
        if len(out) == n:
            return value
        if isinstance(value, list):
            return _like(value, items)
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, dict):
        n = len(out)
        pairs = [(k, _split(v, torch, out)) for k, v in value.items()]
        return value if len(out) == n else _like(value, pairs)
    return value


def _like(container: Any, items: list[Any]) -> Any:
    """``items`` (a list's items, a dict's pairs) in a container of ``container``'s
    type: a subclass (an OrderedDict such as a state_dict, a defaultdict and its
    factory, a user's list) keeps its type and state; a plain list or dict if it
    cannot be copied."""
    if type(container) is list:
        return items
    if type(container) is not dict:
        try:
            new = copy.copy(container)
            if isinstance(new, dict):
                new.clear()
                new.update(items)
            else:
                new[:] = items
            return new
        except Exception:  # a subclass that cannot be copied or refilled: its plain base
            pass
    return dict(items) if isinstance(container, dict) else list(items)


def _join(skeleton: Any, tensors: list[Any]) -> Any:
    """The value again: every ``_At`` in ``skeleton`` replaced by its tensor."""
    if isinstance(skeleton, _At):
        return tensors[skeleton.i]
    if isinstance(skeleton, list):
        return _like(skeleton, [_join(v, tensors) for v in skeleton])
    if isinstance(skeleton, tuple):
        items = [_join(v, tensors) for v in skeleton]
        return type(skeleton)(*items) if hasattr(skeleton, "_fields") else tuple(items)
    if isinstance(skeleton, dict):
        return _like(skeleton, [(k, _join(v, tensors)) for k, v in skeleton.items()])
    return skeleton


def _plain(t: Any) -> Any:
    """What is sent of tensor ``t``: its values, contiguous, no autograd state, lazy
    conjugate/negative views resolved."""
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t.contiguous()


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


class TensorWriter(Channel):
    """The write end: ``write(value)`` sends its tensors to every reader rank.

    Args:
        comm: this member's communicator (initialized).
        reader_ranks: the readers' ranks in ``comm``, in the order of ``meta``'s readers.
        meta: the write end of a channel to every reader: headers.
        static_shape: send the metadata only when it changes.
        device: the device type the communicator takes tensors on (``"cpu"``,
            ``"cuda"``), or None to let it judge.
    """

    def __init__(
        self,
        comm: Communicator,
        reader_ranks: list[int],
        meta: Channel,
        *,
        static_shape: bool = False,
        device: str | None = None,
    ):
        self._comm, self._readers, self._meta = comm, list(reader_ranks), meta
        self._static, self._device = static_shape, device
        self._last: Meta | None = None  # the metadata the readers have

    def write(self, value: object, timeout_s: float | None = None) -> None:
        """Send ``value``: its header through ``meta``, then its tensors.

        Raises:
            ValueNotSerializable: a tensor on another device than the communicator's
                (nothing was written), or ``meta`` cannot take the rest of the value.
            ChannelTimeout, ChannelClosed, ChannelBroken: from ``meta`` or the
                communicator (a communicator that fails otherwise is ChannelBroken).
        """
        torch = sys.modules.get("torch")
        tensors: list[Any] = []
        skeleton = value if torch is None else _split(value, torch, tensors)
        for i, t in enumerate(tensors):
            if self._device is not None and t.device.type != self._device:
                raise ValueNotSerializable(
                    f"tensor {i} of the value is on {t.device}, and this edge's communicator "
                    f"({self._comm.get_transport_name()}) carries {self._device} tensors: move it there "
                    "before returning it"
                )
        sent = [_plain(t) for t in tensors]
        if sent and not _builtin(skeleton):  # a class the reader may lack: pickled apart
            skeleton = _Packed.of(skeleton)
        meta: Meta = [(tuple(t.shape), _dtype_name(t.dtype)) for t in sent]
        header = (skeleton, None if self._static and meta == self._last else meta)
        self._meta.write(header, timeout_s)
        self._last = meta
        if sent:
            _guard(
                lambda: self._comm.send_batch([(t, r) for t in sent for r in self._readers]),
                self._comm,
                "send",
            )

    def read(self, timeout_s: float | None = None) -> object:
        raise wrong_end(self, "read")

    def close(self) -> None:
        """Close the metadata channel (the communicator is the owner's to end)."""
        self._meta.close()


class TensorReader(Channel):
    """A read end: ``read()`` receives the writer's next value.

    Args:
        comm: this member's communicator (initialized).
        writer_rank: the writer's rank in ``comm``.
        meta: this reader's end of the header channel.
        allocator: ``allocator(shape, dtype)`` makes the tensor to receive into (Ray's
            ``TorchTensorAllocator``: e.g. on this reader's GPU); the communicator's
            default if None.
        recv_timeout_s: bound on receiving a value's tensors once its header came
            (None: the communicator's default).
    """

    def __init__(
        self,
        comm: Communicator,
        writer_rank: int,
        meta: Channel,
        *,
        allocator: Allocator | None = None,
        recv_timeout_s: float | None = None,
    ):
        self._comm, self._writer, self._meta = comm, writer_rank, meta
        self._allocator, self._recv_timeout_s = allocator, recv_timeout_s
        self._last: Meta | None = None
        self._dtypes: dict[str, Any] = {}

    def read(self, timeout_s: float | None = None) -> object:
        """The next value, its tensors received from the writer.

        Raises:
            ChannelTimeout: no header within ``timeout_s`` (the channel is usable), or
                no tensors within ``recv_timeout_s`` after it (the communicator is aborted).
            ChannelBroken: the header is not one, or the communicator failed.
            ChannelClosed: ``meta`` was closed or the communicator aborted.
            Exception: what unpickling the value's non-tensor part raised (its tensors
                were received: the channel stays in step).
        """
        skeleton, recvs = self._header(timeout_s)
        if not recvs:
            return skeleton
        tensors = _guard(lambda: self._comm.recv_batch(recvs, self._recv_timeout_s), self._comm, "recv")
        return _complete(skeleton, tensors)

    def read_pending(self, timeout_s: float | None = None) -> Pending:
        """The next value's header, and its tensors' receive started: the value is
        ``result()`` of what this returns (``overlap_gpu_communication``).

        A communicator that can queue a receive and wait for it later
        (``recv_batch_queued``: NCCL, on its receive stream) returns at once, and the
        transfer runs while the caller computes; any other receives here, as :meth:`read`.

        Raises:
            ChannelTimeout, ChannelBroken, ChannelClosed: as :meth:`read` (from
                ``result()`` too, for a queued receive).
        """
        skeleton, recvs = self._header(timeout_s)
        if not recvs:
            return Pending(lambda: skeleton)
        queued = getattr(self._comm, "recv_batch_queued", None)
        if queued is None:
            tensors = _guard(lambda: self._comm.recv_batch(recvs, self._recv_timeout_s), self._comm, "recv")
            return Pending(lambda: _complete(skeleton, tensors))  # unpickled at result(), as when queued
        tensors, wait = _guard(lambda: queued(recvs, self._recv_timeout_s), self._comm, "recv")

        def finish() -> object:
            _guard(wait, self._comm, "recv")
            return _complete(skeleton, tensors)

        return Pending(finish)

    def _header(self, timeout_s: float | None) -> tuple[Any, list[tuple[Any, ...]]]:
        """The next header: the value's skeleton, and a receive per tensor it left out."""
        header: Any = self._meta.read(timeout_s)
        try:
            skeleton, meta = header
            if meta is None:
                meta = self._last
            if meta is None:
                raise ValueError("no metadata was ever sent")
            recvs = [(tuple(shape), self._dtype(name), self._writer, self._allocator) for shape, name in meta]
        except (TypeError, ValueError, AttributeError) as e:
            raise ChannelBroken(f"tensor channel: {header!r:.200} is not a header ({e})") from e
        self._last = meta
        return skeleton, recvs

    def _dtype(self, name: str) -> Any:
        dtype = self._dtypes.get(name)
        if dtype is None:
            import torch  # a reader of tensors has torch

            dtype = self._dtypes[name] = getattr(torch, name)
        return dtype

    def write(self, value: object, timeout_s: float | None = None) -> None:
        raise wrong_end(self, "write")

    def close(self) -> None:
        self._meta.close()


class Pending:
    """A value being received: ``result()`` waits for its tensors (once) and returns it.

    Raises (from ``result()``): what the receive or the unpickling raised.
    """

    __slots__ = ("_finish",)

    def __init__(self, finish: Any):
        self._finish = finish

    def result(self) -> object:
        return self._finish()


def _complete(skeleton: Any, tensors: list[Any]) -> object:
    if isinstance(skeleton, _Packed):
        skeleton = skeleton.load()  # may raise: this value's failure, the edge in step
    return _join(skeleton, tensors)


def _guard(call: Any, comm: Communicator, what: str) -> Any:
    """A communicator call: its channel errors as they are; anything else a user's
    communicator raises (the pairing of sends and receives is lost) is ChannelBroken."""
    try:
        return call()
    except ChannelError:
        raise
    except Exception as e:
        raise ChannelBroken(
            f"communicator {comm.get_transport_name()!r} failed in {what}: {type(e).__name__}: {e}"
        ) from e
