"""assign_tensor_transports: how the torch tensors of each hinted edge move.

A node with a tensor type hint (``with_tensor_transport(...)``, ``type_hint =
TorchTensorType(...)``) has its edges' tensors moved as API.md's "Tensors and devices"
says: ``"auto"`` is NCCL between two different actors that both have a GPU (the ids Ray
assigned them, learned by ``_placement``) and shared memory (or the cross-node channel)
otherwise; ``"shm"`` never NCCL; ``"nccl"``/``"accelerator"`` GPU to GPU, refused where
an end has no GPU or the value is the graph's input (the driver is in no communicator);
a Communicator instance carries them itself. An edge within one actor hands the object
over. The result, ``node.meta["tensor_to"]``, maps each user to a ``TensorTransport``.

A collective's ``transport=None`` ("auto") is chosen here too: NCCL when every member has
a GPU, raycg's CPU communicator otherwise (``Collective.transport`` becomes "nccl" or "cpu").

``default_communicator`` (``graph.meta["default_communicator"]``, a Communicator instance
the user passed to compile): it carries what raycg would otherwise give NCCL, as in Ray:
edges planned NCCL (``"nccl"``/``"accelerator"``, and ``"auto"`` between two GPU actors)
become TENSOR_COMMUNICATOR over it, and so do collectives bound with ``transport=None`` or
``"nccl"`` (``"cpu"`` stays raycg's CPU communicator). Its ends need no GPU: the instance
decides where its tensors live. ``assign_communicators`` then checks its actors.
"""

from __future__ import annotations

from raycg.proto import TensorTransport, Transport

from ..ir import Graph, Node, TensorHint

_DEVICES = ("default", "cpu", "gpu")


def assign_tensor_transports(graph: Graph) -> None:
    """Set ``meta["tensor_to"]`` on every node with a tensor hint.

    Raises:
        ValueError: an unknown device; "nccl"/"accelerator" on the InputNode (or one of
            its attributes) or on an edge an end of which has no GPU, naming the node.
    """
    for inp in graph.nodes_of("input"):
        _check_input_hints(inp)
    default = graph.meta.get("default_communicator")
    for node in graph.nodes_of("collective"):
        collective = node.meta["collective"]
        if default is not None and collective.transport in ("auto", "nccl"):
            collective.transport, collective.communicator = "communicator", default
        elif collective.transport == "auto":
            every_gpu = all(_has_gpu(member) for member in collective.members)
            collective.transport = "nccl" if every_gpu else "cpu"
    for node in graph.nodes:
        hint: TensorHint | None = node.meta.get("tensor_hint")
        if hint is None or node.op == "output":
            continue
        _check_device(node.display_name, hint)
        node.meta["tensor_to"] = {user: _tensor_transport(node, user, hint, default) for user in node.users}
        if TensorTransport.TENSOR_COMMUNICATOR in node.meta["tensor_to"].values():
            node.meta["communicator"] = hint.communicator if hint.communicator is not None else default


def _check_input_hints(inp: Node) -> None:
    for written, hint in inp.meta.get("input_hints", []):
        _check_device(written, hint)
        if hint.transport in ("accelerator", "communicator"):
            via = "accelerator" if hint.transport == "accelerator" else "a communicator"
            raise ValueError(
                f"DAG inputs cannot be transferred via {via} because the driver cannot "
                f"participate in the communicator group: {hint.written}; use transport='auto' "
                "or 'shm' on the input (a GPU reader then gets the tensor on its GPU with device='gpu')"
            )


def _check_device(written: str, hint: TensorHint) -> None:
    if hint.device not in _DEVICES:
        raise ValueError(
            f"{written}: tensor device {hint.device!r} is not one of 'default', 'cpu', 'gpu', "
            "'cuda' (or Ray's Device enum)"
        )


def _tensor_transport(
    src: Node, dst: Node, hint: TensorHint, default: object = None
) -> TensorTransport.ValueType:
    if src.meta["transport_to"][dst] == Transport.INPROC:
        return TensorTransport.TENSOR_SHM  # one actor: the object itself, wherever it is
    if hint.transport == "communicator":
        return TensorTransport.TENSOR_COMMUNICATOR
    gpu_ends = _has_gpu(src) and _has_gpu(dst)
    planned_nccl = hint.transport == "accelerator" or (
        hint.transport == "auto" and gpu_ends and hint.device != "cpu"
    )
    if default is not None and dst.actor is not None and planned_nccl:
        return TensorTransport.TENSOR_COMMUNICATOR  # the user's default instead of NCCL
    if hint.transport == "accelerator":
        if not gpu_ends:
            who = next(_who(n) for n in (src, dst) if not _has_gpu(n))
            raise ValueError(
                f"{src.display_name}: its tensor transport is NCCL ({hint.written}) but {who} "
                f"has no GPU (edge {src.display_name} -> {dst.display_name}); give both actors "
                "GPUs (num_gpus=1) or use transport='auto' or 'shm'"
            )
        return TensorTransport.TENSOR_ACCELERATOR
    if hint.transport == "auto" and gpu_ends and hint.device != "cpu":
        return TensorTransport.TENSOR_ACCELERATOR
    return TensorTransport.TENSOR_SHM


def _has_gpu(node: Node) -> bool:
    return node.actor is not None and bool(node.actor.gpu_ids)


def _who(node: Node) -> str:
    return f"actor {node.actor.label}" if node.actor is not None else "the driver"
