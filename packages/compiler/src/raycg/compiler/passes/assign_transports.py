"""assign_transports: how each edge's values move.

An edge runs from a node (the driver for the input, an actor for a task) to one of its
users (an actor, or the driver for the output). Same actor: the object itself (INPROC);
same node: a shared-memory ring (SHM); another node: refused until a network transport
exists. The result, ``node.meta["transport_to"]``, maps each user to its transport.
"""

from __future__ import annotations

from raycg.proto import Transport

from ..ir import Graph, Node


def assign_transports(graph: Graph) -> None:
    """Set ``meta["transport_to"]`` on every node that has users.

    Raises:
        ValueError: an edge crosses nodes, naming both ends and their nodes.
    """
    for node in graph.nodes:
        if node.op != "output":
            node.meta["transport_to"] = {user: _transport(graph, node, user) for user in node.users}


def _transport(graph: Graph, src: Node, dst: Node) -> Transport.ValueType:
    if src.actor is not None and src.actor is dst.actor:
        return Transport.INPROC
    src_where, dst_where = _location(graph, src), _location(graph, dst)
    if src_where == dst_where:
        return Transport.SHM
    raise ValueError(
        f"{src.display_name} -> {dst.display_name}: cross-node edges are not supported yet: "
        f"{_who(src)} runs on node {src_where} and {_who(dst)} on node {dst_where}; "
        "place both on one node (e.g. with NodeAffinitySchedulingStrategy)"
    )


def _location(graph: Graph, node: Node) -> str | None:
    """The node id of who runs ``node``: the driver for the input and the output."""
    return node.actor.node_id if node.actor is not None else graph.driver_node_id


def _who(node: Node) -> str:
    return f"actor {node.actor.label}" if node.actor is not None else "the driver"
