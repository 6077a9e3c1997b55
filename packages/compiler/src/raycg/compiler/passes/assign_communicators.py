"""assign_communicators: the user's Communicator instances, checked and numbered.

Every Communicator instance the graph uses (a hint's ``with_tensor_transport(
transport=inst)``, a collective's ``transport=inst``, the compile's
``default_communicator``) gets an id, ``"comm0"``..., and its members: the actors of
``inst.get_actor_handles()`` in the order of ``inst.get_rank(actor)``, as Ray ranks them.
The runtime pickles the instance to each member, which ``initialize(rank)``s it, as
Ray does; several instances may serve one graph. ``graph.meta["communicators"]`` maps
each id to a :class:`CommunicatorUse`; a node (for its edges) carries
``meta["communicator_id"]``, a collective ``communicator_id``.

Refused here (``ValueError`` naming the instance and the node or actor):
- an object that is not a Communicator (no ``get_actor_handles``/``get_rank``/``get_world_size``);
- a world size other than the number of its actors, ranks that are not 0..n-1 once each;
- an actor of the instance that takes no part in the graph (raycg initializes the
  members through the graph's own setup, so every member must be in it);
- an edge whose writer or reader is not a member, or whose reader is the driver (which
  is in no communicator); a collective whose members are not exactly the instance's;
- two edges over one instance between the same two actors that the reader takes in
  another order than the writer sends them, in two tasks or as two arguments of one
  (a communicator's sends between two ranks arrive in order: the reader would receive
  one edge's tensors as the other's).

A collective over an instance takes the instance's ranks: its members are reordered by
them (allgather concatenates in that order, as in Ray) and ``src_rank`` follows its actor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raycg.proto import TensorTransport

from ..ir import Collective, Graph, Node


@dataclass(frozen=True)
class CommunicatorUse:
    """One instance of the graph: what the runtime needs to hand it out."""

    instance: Any
    members: list[str]  # actor ids, in rank order
    written: str  # "MyComm (transport of Echo.echo)"


def assign_communicators(graph: Graph) -> None:
    """Number and check every Communicator instance (see the module's docstring).

    Raises:
        ValueError: naming the instance and what is wrong with it.
    """
    ids: dict[int, str] = {}
    uses: dict[str, CommunicatorUse] = {}
    default = graph.meta.get("default_communicator")

    def use(inst: Any, where: str) -> str:
        if inst is default:
            where = "default_communicator"
        if id(inst) not in ids:
            cid = f"comm{len(ids)}"
            ids[id(inst)] = cid
            uses[cid] = CommunicatorUse(inst, _members(inst, where), f"{_name(inst)} ({where})")
        return ids[id(inst)]

    for node in graph.tasks():
        inst = node.meta.get("communicator")
        if inst is None:
            continue
        cid = node.meta["communicator_id"] = use(inst, f"transport of {node.display_name}")
        _check_edges(node, uses[cid])
    for collective in _collectives(graph):
        if collective.transport == "communicator" and collective.communicator is not None:
            collective.communicator_id = use(collective.communicator, f"transport of {collective.label}")
            _order_collective(collective, uses[collective.communicator_id])
    for cid, u in uses.items():
        _check_members_in_graph(graph, u)
        _check_pair_orders(graph, cid, u)
    graph.meta["communicators"] = uses


def _name(inst: Any) -> str:
    return f"{type(inst).__module__}.{type(inst).__qualname__}"


def _members(inst: Any, where: str) -> list[str]:
    missing = [
        m for m in ("get_actor_handles", "get_rank", "get_world_size") if not callable(getattr(inst, m, None))
    ]
    if missing:
        raise ValueError(
            f"{_name(inst)} ({where}) is not a Communicator: it has no {', '.join(missing)} "
            "(pass an instance of a subclass of ray.experimental.channel.communicator.Communicator)"
        )
    handles = list(inst.get_actor_handles())
    world = int(inst.get_world_size())
    if world != len(handles):
        raise ValueError(
            f"{_name(inst)} ({where}): its world size is {world} but it has {len(handles)} actors"
        )
    ranks = [int(inst.get_rank(h)) for h in handles]
    if sorted(ranks) != list(range(world)):
        raise ValueError(
            f"{_name(inst)} ({where}): its actors' ranks are {ranks}, not 0..{world - 1} once each"
        )
    return [h._actor_id.hex() for _, h in sorted(zip(ranks, handles), key=lambda p: p[0])]


def _check_members_in_graph(graph: Graph, u: CommunicatorUse) -> None:
    for handle in u.instance.get_actor_handles():
        if handle._actor_id.hex() not in graph.actors:
            raise ValueError(
                f"{u.written}: its actor {handle!r} takes no part in this graph; raycg initializes "
                "a communicator through the graph: each of its actors must run a task in it"
            )


def _who(node: Node) -> str:
    return f"actor {node.actor.label}" if node.actor is not None else "the driver"


def _check_edges(node: Node, u: CommunicatorUse) -> None:
    for user, tt in node.meta.get("tensor_to", {}).items():
        if tt != TensorTransport.TENSOR_COMMUNICATOR:
            continue
        for end in (node, user):
            if end.actor is None or end.actor.actor_id not in u.members:
                why = (
                    "the driver cannot take part in a communicator"
                    if end.actor is None
                    else "it is not one of the communicator's actors"
                )
                raise ValueError(
                    f"{node.display_name}: its tensors go through {u.written}, but {_who(end)} at an end of "
                    f"the edge {node.display_name} -> {user.display_name} cannot use it: {why}"
                )


def _collectives(graph: Graph) -> list[Collective]:
    seen: dict[int, Collective] = {}
    for node in graph.nodes_of("collective"):
        c = node.meta["collective"]
        seen.setdefault(id(c), c)
    return list(seen.values())


def _order_collective(collective: Collective, u: CommunicatorUse) -> None:
    if set(collective.actor_ids) != set(u.members) or len(collective.actor_ids) != len(u.members):
        raise ValueError(
            f"{collective.label} ({collective.name}): its transport {u.written} has other actors than the "
            "collective's members; bind it over exactly the communicator's actors"
        )
    src_actor = collective.actor_ids[collective.src_rank] if collective.actor_ids else None
    collective.actor_ids = list(u.members)
    if src_actor is not None:
        collective.src_rank = u.members.index(src_actor)


def _check_pair_orders(graph: Graph, cid: str, u: CommunicatorUse) -> None:
    """Two edges over one instance between the same two actors: sent and received in
    the same order (schedule order on both sides), else refused."""
    schedule: dict[str, list[Node]] = graph.meta.get("schedule", {})
    sent: dict[tuple[str, str], list[Node]] = {}
    for node in graph.tasks():
        if node.meta.get("communicator_id") != cid or node.actor is None:
            continue
        for user, tt in node.meta.get("tensor_to", {}).items():
            if tt == TensorTransport.TENSOR_COMMUNICATOR and user.actor is not None:
                pair = sent.setdefault((node.actor.actor_id, user.actor.actor_id), [])
                if node not in pair:
                    pair.append(node)
    for (writer, reader), nodes in sent.items():
        if len(nodes) < 2:
            continue
        w_order = [n for n in schedule.get(writer, []) if n in nodes]
        # The reader takes each edge at the first task that uses it, and a task's edges
        # in the order its arguments (then keyword arguments) first name them, as the
        # runtime reads them (``TaskPlan.inputs``).
        first_read: dict[Node, tuple[int, int]] = {}
        for i, task in enumerate(schedule.get(reader, [])):
            named = [ref.node for ref in task.refs()]
            for src in nodes:
                if task in src.users and src not in first_read:
                    first_read[src] = (i, named.index(src) if src in named else len(named))
        r_order = sorted(nodes, key=lambda n: first_read.get(n, (1 << 30, 0)))
        if w_order and w_order != r_order:
            raise ValueError(
                f"{u.written}: {graph.actors[reader].label} receives "
                f"{' then '.join(n.display_name for n in r_order)} over it, but "
                f"{graph.actors[writer].label} sends them in the other order "
                f"({' then '.join(n.display_name for n in w_order)}); a communicator's sends between two "
                "actors arrive in order: bind the reader's tasks (and order their arguments) in the writer's "
                "order, or give the edges different communicators"
            )
