"""raycg.collective: collectives in a compiled graph, bound as Ray's are, plus broadcast.

``allreduce``, ``allgather`` and ``reducescatter`` take what Ray's
``ray.experimental.collective`` versions take; ``broadcast.bind(nodes, src_rank=0)`` is
raycg's own. Each ``.bind`` returns one node per input node, in the same order; each
result goes to the actor that produced the input (API.md, "Collectives and
communicators"). ``transport``: None (NCCL where every member has a GPU, raycg's CPU
communicator otherwise), ``"nccl"``, ``"cpu"``, or a Communicator instance.

The nodes are Ray's own ``CollectiveOutputNode``s, so a DAG mixing these with Ray's
collectives compiles as one graph; raycg records the transport as the user wrote it,
which Ray's node cannot (it turns None into "accelerator").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.dag import DAGNode
from ray.dag.collective_node import CollectiveOutputNode, _CollectiveOperation
from ray.dag.constants import BIND_INDEX_KEY, COLLECTIVE_OPERATION_KEY, PARENT_CLASS_NODE_KEY
from ray.experimental.channel.communicator import Communicator
from ray.experimental.util.types import AllGatherOp, AllReduceOp, ReduceOp, ReduceScatterOp, _CollectiveOp

from raycg.compiler import BroadcastOp

__all__ = ["allgather", "allreduce", "broadcast", "reducescatter"]

# raycg's spelling -> what Ray's type hint accepts (it validates the rest).
_RAY_TRANSPORT = {None: "auto", "nccl": "accelerator", "cpu": "cpu"}


def _bind(nodes: Sequence[DAGNode], op: _CollectiveOp, name: str, transport: Any) -> list[DAGNode]:
    """One CollectiveOutputNode per input node, each bound on that node's actor.

    Raises:
        ValueError: an empty list, a repeated node or actor (Ray's own checks), or a
            transport raycg does not know.
    """
    if not isinstance(transport, Communicator) and transport not in _RAY_TRANSPORT:
        raise ValueError(
            f"{name}.bind: transport={transport!r} is not None, 'nccl', 'cpu' or a Communicator instance"
        )
    ray_transport = transport if isinstance(transport, Communicator) else _RAY_TRANSPORT[transport]
    operation = _CollectiveOperation([list(nodes)], op, ray_transport)
    operation.raycg_transport = (  # type: ignore[attr-defined]
        "communicator" if isinstance(transport, Communicator) else transport or "auto"
    )
    outputs: list[DAGNode] = []
    for node in nodes:
        handle = node._get_actor_handle()  # type: ignore[attr-defined]
        outputs.append(
            CollectiveOutputNode(
                method_name=name,
                method_args=(node,),
                method_kwargs={},
                method_options={},
                other_args_to_resolve={
                    PARENT_CLASS_NODE_KEY: handle,
                    BIND_INDEX_KEY: handle._ray_dag_bind_index,
                    COLLECTIVE_OPERATION_KEY: operation,
                },
            )
        )
        handle._ray_dag_bind_index += 1  # the actor's bind order counts it, as Ray's do
    return outputs


class _AllReduce:
    def bind(
        self, nodes: Sequence[DAGNode], op: ReduceOp = ReduceOp.SUM, transport: Any = None
    ) -> list[DAGNode]:
        """Every member gets the reduction (``op``) of all members' tensors."""
        return _bind(nodes, AllReduceOp(reduceOp=op), "allreduce", transport)


class _AllGather:
    def bind(self, nodes: Sequence[DAGNode], transport: Any = None) -> list[DAGNode]:
        """Every member gets all members' tensors, concatenated along dim 0 in rank order."""
        return _bind(nodes, AllGatherOp(), "allgather", transport)


class _ReduceScatter:
    def bind(
        self, nodes: Sequence[DAGNode], op: ReduceOp = ReduceOp.SUM, transport: Any = None
    ) -> list[DAGNode]:
        """Member i gets chunk i (along dim 0) of the reduction of all members' tensors."""
        return _bind(nodes, ReduceScatterOp(reduceOp=op), "reducescatter", transport)


class _Broadcast:
    def bind(self, nodes: Sequence[DAGNode], src_rank: int = 0, transport: Any = None) -> list[DAGNode]:
        """Every member gets member ``src_rank``'s tensor.

        Raises:
            ValueError: ``src_rank`` is not a member's index.
        """
        if not 0 <= src_rank < len(nodes):
            raise ValueError(f"broadcast.bind: src_rank={src_rank} is not in [0, {len(nodes)})")
        return _bind(nodes, BroadcastOp(src_rank), "broadcast", transport)


allreduce = _AllReduce()
allgather = _AllGather()
reducescatter = _ReduceScatter()
broadcast = _Broadcast()
