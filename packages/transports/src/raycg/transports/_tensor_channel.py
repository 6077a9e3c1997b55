"""Tensors over a communicator: one writer rank, several reader ranks.

The data goes with the communicator's send/recv (ncclSend/ncclRecv on a NCCL
communicator: GPU to GPU, no host copy; the CPU communicator is its twin for CI), one
send per reader, grouped where the communicator groups (NCCL). The metadata (shape,
dtype) goes first over an existing channel (``meta``: a ShmRing, a gRPC channel), unless
the shape is *static* (``_static_shape``): then both ends know it and only the data
moves. A write that breaks the static promise raises ValueError naming both shapes,
before anything is sent.
"""

from __future__ import annotations

import sys
from typing import Any

from ._channel import Channel, wrong_end
from ._communicator import Allocator, Communicator
from ._deadline import deadline_after, remaining
from ._errors import ChannelBroken

# (shape, dtype) both ends agree on, when the shape is static.
Static = tuple[tuple[int, ...], Any]


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


class TensorWriter(Channel):
    """The write end: ``write(tensor)`` sends it to every reader rank.

    Args:
        comm: this member's communicator.
        reader_ranks: the readers' ranks in ``comm``.
        meta: the write end of a channel to every reader (None only with ``static``).
        static: ``(shape, dtype)`` of every tensor, if fixed.
    """

    def __init__(
        self,
        comm: Communicator,
        reader_ranks: list[int],
        meta: Channel | None = None,
        *,
        static: Static | None = None,
    ):
        if meta is None and static is None:
            raise ValueError("a tensor channel needs a metadata channel unless its shape is static")
        self._comm, self._readers, self._meta, self._static = comm, list(reader_ranks), meta, static

    def write(self, value: object, timeout_s: float | None = None) -> None:
        """Send tensor ``value`` to every reader.

        Raises:
            TypeError: ``value`` is not a tensor.
            ValueError: it breaks the static shape/dtype promise.
        """
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(value, torch.Tensor):
            raise TypeError(
                "a tensor channel carries torch tensors, got "
                f"{type(value).__module__}.{type(value).__qualname__}"
            )
        deadline = deadline_after(timeout_s)
        shape, dtype = tuple(value.shape), value.dtype
        if self._static is not None:
            promised = (tuple(self._static[0]), self._static[1])
            if (shape, dtype) != promised:
                raise ValueError(
                    f"a tensor of shape {shape} and {dtype} broke the static shape promise {promised}: "
                    "keep the shape fixed or drop _static_shape"
                )
        else:
            assert self._meta is not None
            self._meta.write((shape, _dtype_name(dtype)), _left(deadline))
        self._comm.send_each(value, self._readers, _left(deadline))

    def read(self, timeout_s: float | None = None) -> object:
        raise wrong_end(self, "read")

    def close(self) -> None:
        """Close the metadata channel (the communicator is the owner's to end)."""
        if self._meta is not None:
            self._meta.close()


class TensorReader(Channel):
    """A read end: ``read()`` receives the writer's next tensor.

    Args:
        comm: this member's communicator.
        writer_rank: the writer's rank in ``comm``.
        meta: this reader's end of the metadata channel (None only with ``static``).
        static: ``(shape, dtype)`` of every tensor, if fixed.
        allocator: ``allocator(shape, dtype)`` makes the tensor to receive into (e.g. on
            this reader's GPU); the communicator's default if None.
    """

    def __init__(
        self,
        comm: Communicator,
        writer_rank: int,
        meta: Channel | None = None,
        *,
        static: Static | None = None,
        allocator: Allocator | None = None,
    ):
        if meta is None and static is None:
            raise ValueError("a tensor channel needs a metadata channel unless its shape is static")
        self._comm, self._writer, self._meta = comm, writer_rank, meta
        self._static, self._allocator = static, allocator

    def read(self, timeout_s: float | None = None) -> object:
        """The next tensor.

        Raises:
            ChannelTimeout: nothing came in time (from the metadata channel, or the
                communicator, which is then aborted).
            ChannelBroken: the metadata is not a (shape, dtype) pair.
        """
        deadline = deadline_after(timeout_s)
        if self._static is not None:
            shape, dtype = self._static
        else:
            assert self._meta is not None
            meta: Any = self._meta.read(_left(deadline))
            try:
                shape, name = meta
                import torch

                dtype = getattr(torch, str(name))
            except (TypeError, ValueError, AttributeError) as e:
                raise ChannelBroken(f"tensor channel: metadata {meta!r} is not a (shape, dtype) pair") from e
        return self._comm.recv(tuple(shape), dtype, self._writer, self._allocator, _left(deadline))

    def write(self, value: object, timeout_s: float | None = None) -> None:
        raise wrong_end(self, "write")

    def close(self) -> None:
        if self._meta is not None:
            self._meta.close()


def _left(deadline: float) -> float | None:
    left = remaining(deadline)
    return None if left == float("inf") else left
