"""A tensor edge's type hint, honoured on the actor side (``ChannelPlan.tensor``).

- **Promises**, checked by the writer on every value before it is written:
  ``_direct_return`` (the value is a tensor alone) and ``_static_shape`` (every
  execution's tensors have the shapes and dtypes of the first execution's). A broken
  promise becomes the execution's failure, a ``RayTaskError`` naming the producing node
  (actor class and method) and the promise, caused by :class:`TensorPromiseBroken`; the
  caller tears the graph down when its ``get`` meets one (``_graph``), as Ray does.
- **Device placement**, by the reader: ``"cpu"`` (and ``"default"`` on an actor without
  a GPU) keeps what the shared-memory ring delivers; ``"gpu"``/``"cuda"`` (and
  ``"default"`` on an actor Ray gave a GPU) moves every tensor of the value to the
  reader's current CUDA device, one host-to-device copy per tensor. On a communicator
  edge the tensors arrive where the communicator puts them (NCCL: the reader's GPU) and
  move only if the hint wants them elsewhere.
- **Communicator edges** (NCCL, a user's Communicator, raycg's CPU twin): the channel's
  ring carries each value's header, and ``raycg.transports.TensorWriter``/``TensorReader``
  over the edge's communicator its tensors (:func:`comm_writer`, :func:`comm_reader`).

Tensors are looked for in the value itself and inside tuples, lists and dicts, at any
depth (what a pipeline stage returns); tensors inside other objects travel unchecked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayTaskError

from raycg.proto import ChannelPlan, Device
from raycg.transports import (
    Channel,
    Communicator,
    CpuCommunicator,
    NcclCommunicator,
    TensorReader,
    TensorWriter,
)

from . import _errors
from ._comm_groups import EdgeRanks, device_of


class TensorPromiseBroken(ValueError):
    """A value broke its node's ``_static_shape`` or ``_direct_return`` promise."""


def _torch() -> Any:
    return sys.modules.get("torch")


def _walk(value: Any, path: str, out: list[tuple[str, Any]], torch: Any) -> None:
    if torch is not None and isinstance(value, torch.Tensor):
        out.append((path, value))
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _walk(v, f"{path}[{i}]", out, torch)
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk(v, f"{path}[{k!r}]", out, torch)


def tensors_of(value: Any) -> list[tuple[str, Any]]:
    """(where, tensor) for every tensor in ``value`` and its tuples, lists and dicts."""
    out: list[tuple[str, Any]] = []
    _walk(value, "value", out, _torch())
    return out


class PromiseCheck:
    """The writer's check of one node's promises.

    Args:
        direct_return: the value must be a torch tensor alone.
        static_shape: every value's tensors must match the first value's.
        node: the producing node, as errors name it (``Worker.echo``).
        written: the hint as the user wrote it.
    """

    def __init__(self, direct_return: bool, static_shape: bool, node: str, written: str):
        self.direct_return = direct_return
        self.static_shape = static_shape
        self.node, self.written = node, written
        self._first: list[tuple[str, tuple[int, ...], Any]] | None = None

    def check(self, value: Any) -> None:
        """Raises:
        TensorPromiseBroken: naming the node, the promise and what the value holds.
        """
        torch = _torch()
        if self.direct_return and (torch is None or not isinstance(value, torch.Tensor)):
            raise TensorPromiseBroken(
                f"{self.node} broke its _direct_return promise ({self.written}): it returned "
                f"{type(value).__module__}.{type(value).__qualname__}, not a torch.Tensor alone"
            )
        if not self.static_shape:
            return
        meta = [(where, tuple(t.shape), t.dtype) for where, t in tensors_of(value)]
        if self._first is None:
            self._first = meta
        elif meta != self._first:
            raise TensorPromiseBroken(
                f"{self.node} broke its _static_shape promise ({self.written}): the first execution "
                f"returned {_describe(self._first)}, this one {_describe(meta)}"
            )


def _describe(meta: list[tuple[str, tuple[int, ...], Any]]) -> str:
    if not meta:
        return "no tensor"
    return ", ".join(
        f"{where}: {list(shape)} {str(dtype).removeprefix('torch.')}" for where, shape, dtype in meta
    )


def promise_check(plans: list[ChannelPlan], node: str) -> PromiseCheck | None:
    """The check for a task whose output channels are ``plans`` (one hint per node), or
    None when it promises nothing."""
    for plan in plans:
        if plan.HasField("tensor") and (plan.tensor.static_shape or plan.tensor.direct_return):
            t = plan.tensor
            return PromiseCheck(t.direct_return, t.static_shape, node, t.written)
    return None


def checked(check: PromiseCheck, result: Any, display: str, actor_repr: str, actor_id: str) -> Any:
    """``result``, or the execution's failure if it breaks ``check``'s promises."""
    if isinstance(result, RayTaskError):
        return result
    try:
        check.check(result)
    except TensorPromiseBroken as e:
        return _errors.wrap_task_error(e, display, actor_repr, actor_id)
    return result


def broke_a_promise(value: Any) -> bool:
    """Whether a failure (a task's result) is a broken tensor promise."""
    return isinstance(value, RayTaskError) and isinstance(getattr(value, "cause", None), TensorPromiseBroken)


def load_torch(plans: list[ChannelPlan]) -> None:
    """Import torch now, at setup, if any of this actor's channels carries tensors by
    its hint: the first execution would otherwise pay the import (seconds on a busy
    machine) inside its ``get`` timeout, once per actor along the path.

    Raises:
        RuntimeError: a hinted channel's actor has no torch (refused at setup).
    """
    hinted = [p for p in plans if p.HasField("tensor")]
    if not hinted or _torch() is not None:
        return
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"{hinted[0].label}: its type hint carries torch tensors, and torch is not installed here"
        ) from e


def placement(plan: ChannelPlan, gpu_ids: list[str]) -> Callable[[Any], Any] | None:
    """What a reader applies to each value of ``plan`` to put its tensors on the planned
    device, or None (the CPU: the ring's value as it is).

    Raises:
        RuntimeError: the device is the GPU and CUDA is not available (refused at setup).
    """
    if not plan.HasField("tensor"):
        return None
    device = plan.tensor.device
    if device == Device.DEVICE_CPU or (device == Device.DEVICE_DEFAULT and not gpu_ids):
        return None
    import torch  # a reader of GPU tensors has torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{plan.label}: its tensors are planned onto this actor's GPU ({plan.tensor.written}), "
            "and CUDA is not available here"
        )
    return to_cuda


def comm_writer(plan: ChannelPlan, meta: Channel, comm: Communicator, ranks: EdgeRanks) -> TensorWriter:
    """The write end of a communicator edge: headers through ``meta`` (the edge's
    ring), tensors with ``comm`` to every reader rank (one grouped send each)."""
    return TensorWriter(
        comm, list(ranks.readers), meta, static_shape=plan.tensor.static_shape, device=device_of(comm)
    )


def comm_reader(
    plan: ChannelPlan, meta: Channel, comm: Communicator, ranks: EdgeRanks, timeout_s: float | None
) -> TensorReader:
    """A read end of a communicator edge; its tensors' receive is bounded by
    ``timeout_s`` once their header came. A user's communicator receives into tensors
    from Ray's allocator interface (``allocator(shape, dtype)``, on its device); raycg's
    own make their tensors themselves (no copy more)."""
    allocator = None
    if not isinstance(comm, (CpuCommunicator, NcclCommunicator)):
        import torch

        device = device_of(comm)
        allocator = lambda shape, dtype: torch.empty(shape, dtype=dtype, device=device)  # noqa: E731
    return TensorReader(comm, ranks.writer, meta, allocator=allocator, recv_timeout_s=timeout_s)


def comm_placement(plan: ChannelPlan, comm: Communicator, gpu_ids: list[str]) -> Callable[[Any], Any] | None:
    """What a reader of a communicator edge applies to each value to put its tensors on
    the planned device, or None (where the communicator put them).

    Raises:
        RuntimeError: the device is the GPU and CUDA is not available (refused at setup).
    """
    device = plan.tensor.device
    want = "cuda" if device == Device.DEVICE_GPU or (device == Device.DEVICE_DEFAULT and gpu_ids) else "cpu"
    if want == device_of(comm):
        return None
    return placement(plan, gpu_ids) if want == "cuda" else to_cpu


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (and its tuples, lists, dicts) on the CPU."""
    return _moved(value, "cpu")


def to_cuda(value: Any) -> Any:
    """``value`` with every tensor in it (and its tuples, lists, dicts) on the current
    CUDA device: one host-to-device copy each, the rest of the value as it was.

    """
    return _moved(value, "cuda")


def _moved(value: Any, device: str) -> Any:
    torch = _torch()
    if torch is None:
        return value

    def move(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=False)
        if isinstance(v, tuple):
            return type(v)(*map(move, v)) if hasattr(v, "_fields") else tuple(map(move, v))
        if isinstance(v, list):
            return [move(x) for x in v]
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        return v

    return move(value)
