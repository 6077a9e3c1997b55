"""A user's own Ray ``Communicator`` on a tensor edge (``with_tensor_transport(
transport=<instance>)``), as the caller's runtime sees it.

Ray's own ``CPUCommunicator`` moves nothing itself in a compiled graph: its send and
recv only synchronize, the tensors going through Ray's shared-memory channel. raycg
does the same: an edge whose communicator is Ray's CPU one (transport name ``"cpu"``)
carries its tensors inside the value, through the edge's ring. Any other user
communicator (a NCCL one of the user's) is refused at setup until the runtime wires
raycg's tensor channel over it (``raycg.transports.as_communicator``).
"""

from __future__ import annotations

from typing import Any

from raycg.proto import Plan, TensorTransport


def is_ray_cpu_communicator(obj: object) -> bool:
    """Whether ``obj`` is Ray's ``CPUCommunicator`` (or another whose transport is the
    CPU and whose tensors therefore travel through shared memory, as in Ray)."""
    try:
        from ray.experimental.channel.cpu_communicator import CPUCommunicator
    except ImportError:  # an older or newer Ray without it: judge by the name
        return bool(getattr(obj, "get_transport_name", lambda: "")() == "cpu")
    return isinstance(obj, CPUCommunicator)


def shm_communicator_channels(plan: Plan, ir_graph: Any) -> set[str]:
    """The ids of ``plan``'s channels whose tensors are planned through a user's
    Communicator that is Ray's CPU one: they run through shared memory.

    Args:
        plan: the compiled plan.
        ir_graph: the compiler's IR (``CompiledPlan.graph``), whose nodes keep the
            user's Communicator instances (the plan, a protobuf, cannot); each node's
            hint is matched to its channels by the hint as written, unique per node.
    """
    by_written: dict[str, object] = {}
    for node in ir_graph.tasks():
        hint = node.meta.get("tensor_hint")
        if hint is not None and getattr(hint, "communicator", None) is not None:
            by_written[hint.written] = hint.communicator
    return {
        ch.channel_id
        for ch in plan.channels
        if ch.tensor.transport == TensorTransport.TENSOR_COMMUNICATOR
        and is_ray_cpu_communicator(by_written.get(ch.tensor.written))
    }
