"""assign_transports: how each edge's values move.

An edge runs from a node (the driver for the input, an actor for a task) to one of its
users (an actor, or the driver for the output). Same actor: the object itself (INPROC);
same Ray node: a shared-memory ring (SHM); another Ray node: a gRPC stream (GRPC). Where
each end runs comes from ``_placement`` (``Actor.node_id``, ``Graph.driver_node_id``).
The result, ``node.meta["transport_to"]``, maps each user to its transport.
"""

from __future__ import annotations

from raycg.proto import Transport

from ..ir import Graph, Node


def assign_transports(graph: Graph) -> None:
    """Set ``meta["transport_to"]`` on every node that has users."""
    for node in graph.nodes:
        if node.op != "output":
            node.meta["transport_to"] = {user: _transport(graph, node, user) for user in node.users}


def _transport(graph: Graph, src: Node, dst: Node) -> Transport.ValueType:
    if src.actor is not None and src.actor is dst.actor:
        return Transport.INPROC
    return Transport.SHM if location(graph, src) == location(graph, dst) else Transport.GRPC


def location(graph: Graph, node: Node) -> str | None:
    """The Ray node id of who runs ``node``: the driver's for the input and the output."""
    return node.actor.node_id if node.actor is not None else graph.driver_node_id
