"""Words for a Plan's parts, as ``visualize()`` draws them and ``stats()`` names them.

One place, so that a picture and a stats dict never call one channel two things: an
edge's transport (``shm``, ``grpc``, ``inproc``), what its tensors do (``tensors -> cpu``,
``nccl -> cuda``, ``static shape``), a collective's operation and its communicator.
"""

from __future__ import annotations

from raycg.proto import ChannelPlan, CollectiveKind, CollectivePlan, Device, TensorTransport, Transport

_TRANSPORTS = {Transport.SHM: "shm", Transport.GRPC: "grpc", Transport.INPROC: "inproc"}
# What carries the tensors, where it is not the channel itself.
_TENSOR_CARRIERS = {
    TensorTransport.TENSOR_ACCELERATOR: "nccl",
    TensorTransport.TENSOR_COMMUNICATOR: "communicator",
}
_COMMUNICATORS = {"cpu": "cpu communicator", "nccl": "nccl", "communicator": "user's communicator"}


def channel_transport(channel: ChannelPlan) -> str:
    """``"shm"``, ``"grpc"`` or ``"inproc"``: how the channel's values move."""
    return _TRANSPORTS.get(channel.transport, "unspecified")


def device(channel: ChannelPlan, reader_has_gpu: bool) -> str:
    """Where a reader gets the channel's tensors: ``"cpu"`` or ``"cuda"``.

    ``device="default"`` is the reader's GPU if Ray gave it one, else the CPU (the
    driver has none in a Plan).
    """
    wanted = channel.tensor.device
    if wanted == Device.DEVICE_GPU or (wanted == Device.DEVICE_DEFAULT and reader_has_gpu):
        return "cuda"
    return "cpu"


def tensor_words(channel: ChannelPlan, reader_has_gpu: bool) -> list[str]:
    """What the channel's tensor hint does on the edge to one reader, or ``[]`` without one.

    ``["tensors -> cpu"]`` (inside the value, through the channel), ``["nccl -> cuda"]``
    (GPU to GPU through the communicator; the rest of the value on the channel),
    ``["communicator -> cpu"]`` (the user's), then ``"static shape"`` and ``"direct
    return"`` where promised. Within one actor the object itself is handed over, so an
    in-process edge names only the promises.
    """
    if not channel.HasField("tensor"):
        return []
    hint = channel.tensor
    words = []
    if channel.transport != Transport.INPROC:
        carrier = _TENSOR_CARRIERS.get(hint.transport, "tensors")
        words.append(f"{carrier} -> {device(channel, reader_has_gpu)}")
    if hint.static_shape:
        words.append("static shape")
    if hint.direct_return:
        words.append("direct return")
    return words


def transport_name(channel: ChannelPlan, reader_has_gpu: bool) -> str:
    """The edge to one reader in a few words: ``"grpc"``, ``"shm, nccl -> cuda"``."""
    return ", ".join([channel_transport(channel), *tensor_words(channel, reader_has_gpu)])


def collective_op(collective: CollectivePlan) -> str:
    """``"allreduce SUM"``, ``"allgather"``, ``"broadcast from rank 1"``."""
    kind = CollectiveKind.Name(collective.kind).lower() if collective.kind else "collective"
    if collective.kind == CollectiveKind.BROADCAST:
        return f"{kind} from rank {collective.src_rank}"
    return f"{kind} {collective.reduce_op}" if collective.reduce_op else kind


def communicator(collective: CollectivePlan) -> str:
    """Who carries it: ``"cpu communicator"``, ``"nccl"`` or ``"user's communicator"``."""
    return _COMMUNICATORS.get(collective.transport, collective.transport or "unspecified")
