"""schedule: each actor computes its tasks in the order the user bound them, as in Ray.

Ray numbers the binds of each actor handle (``ClassMethodNode._bind_index``) and every
actor of its Compiled Graph computes its tasks in that order, every execution; pipeline
schedules rely on it (a stage bound F1 F2 F3 B1 B2 B3 runs exactly that). So does raycg:
``graph.meta["schedule"]`` maps each actor to its tasks in bind order (ties, and tasks
with no bind index such as hand-built IR, in graph order), and the runtime runs
``ActorPlan.tasks`` in exactly that order.

Communication needs no placing of its own: an actor reads a channel once per execution,
at its first task that needs it, and writes a task's outputs right after running it;
every channel between processes is buffered (>= 1 slot per execution in flight). Such
waits cannot deadlock if a *global* order of the tasks exists that respects both the
data edges and every actor's bind order, i.e. if the graph of data edges plus "next task
of the same actor" edges is acyclic. Proof: take such an order (this pass computes one,
Kahn's algorithm, ties broken by graph order) and number every (execution k, task t)
pair by (k, position of t). Each actor runs its pairs in that order (its tasks in bind
order, one execution after another), and so does the driver (it writes input k before
input k+1). Take the smallest pair not yet finished. Everything it reads was written by
a smaller pair (a task before it, same execution), so its reads can proceed. Every
channel it writes has a free slot: a slot is held only by a value some reader has not
read yet, and with >= 1 slot that value is from execution k-1 or earlier, whose readers
are smaller pairs, hence finished. Its actor is not busy elsewhere, as the actor's
earlier pairs are smaller, hence finished. So the smallest unfinished pair can always
run: no cycle of waits exists. (Values bound for the driver are drained by the driver
into its result buffer, which API.md bounds separately.)

A bind order made in one process through one handle per actor always has such an order:
a task can only be bound after the tasks it reads, so the time of binding is one. Two
handle objects of one actor count their binds separately, and their indices can then
contradict the data: actor A computing a2 (bound #0 on one handle) before a1 (bound #3
on another) while a2 reads b1, which reads a1, would wait forever. Such a graph has a
cycle in the graph above; it is refused, naming each task of the cycle.
"""

from __future__ import annotations

import heapq
from itertools import pairwise

from ..ir import Graph, Node


def schedule(graph: Graph) -> None:
    """Set ``graph.meta["schedule"]`` (actor id -> tasks, in bind order), reorder
    ``graph.nodes`` into a global order consistent with it, and number the nodes in
    ``meta["order"]``.

    Raises:
        ValueError: the bind order cannot run without a deadlock, naming the tasks of
            the cycle and the actors whose order closes it.
    """
    per_actor = _bind_order(graph)
    order = _global_order(graph, per_actor)
    graph.nodes[:] = order
    for position, node in enumerate(order):
        node.meta["order"] = position
    for node in order:
        node.users.sort(key=lambda user: user.meta["order"])
    graph.meta["schedule"] = {actor_id: per_actor[actor_id] for actor_id in _first_use(order)}


def _bind_order(graph: Graph) -> dict[str, list[Node]]:
    """Each actor's tasks, by bind index; graph order where an index is missing or tied."""
    position = {node: i for i, node in enumerate(graph.nodes)}
    per_actor: dict[str, list[Node]] = {}
    for node in graph.nodes_of("call"):
        if node.actor is not None:
            per_actor.setdefault(node.actor.actor_id, []).append(node)
    for tasks in per_actor.values():
        if all(isinstance(t.meta.get("bind_index"), int) for t in tasks):
            tasks.sort(key=lambda t: (t.meta["bind_index"], position[t]))
    return per_actor


def _before(per_actor: dict[str, list[Node]]) -> dict[Node, Node]:
    """task -> the task its actor computes just before it."""
    return {later: earlier for tasks in per_actor.values() for earlier, later in pairwise(tasks)}


def _global_order(graph: Graph, per_actor: dict[str, list[Node]]) -> list[Node]:
    """Kahn's algorithm over data edges and bind-order edges, earliest in graph order first."""
    position = {node: i for i, node in enumerate(graph.nodes)}
    prev = _before(per_actor)
    after = {earlier: later for later, earlier in prev.items()}
    waiting = {node: len(node.inputs()) + (node in prev) for node in graph.nodes}
    ready = [(position[n], n.name) for n in graph.nodes if waiting[n] == 0]
    by_name = {n.name: n for n in graph.nodes}
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        node = by_name[heapq.heappop(ready)[1]]
        order.append(node)
        for nxt in [*node.users, *([after[node]] if node in after else [])]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(ready, (position[nxt], nxt.name))
    if len(order) != len(graph.nodes):
        placed = set(order)
        raise ValueError(_deadlock_message(_cycle([n for n in graph.nodes if n not in placed], prev)))
    return order


def _cycle(stuck: list[Node], prev: dict[Node, Node]) -> list[Node]:
    """A cycle among the nodes Kahn could not place, in must-run-before order.

    Every stuck node waits on a stuck predecessor (an input or its actor's previous
    task), so walking predecessors from any of them must revisit one.
    """
    stuck_set = set(stuck)
    walk: list[Node] = []
    seen: dict[Node, int] = {}
    node = stuck[0]
    while node not in seen:
        seen[node] = len(walk)
        walk.append(node)
        preds = [*node.inputs(), *([prev[node]] if node in prev else [])]
        node = next(p for p in preds if p in stuck_set)
    return list(reversed(walk[seen[node] :]))


def _deadlock_message(cycle: list[Node]) -> str:
    """Name the cycle: runs of one actor's bind order, joined by the reads between them."""
    # Start at a run of one actor's bind order (a read into it, no read out of it), so
    # that each run is printed whole. One exists: data edges alone form no cycle.
    n = len(cycle)
    k = next(
        i for i in range(n) if cycle[i] in cycle[i - 1].users and cycle[(i + 1) % n] not in cycle[i].users
    )
    cycle = cycle[k:] + cycle[:k]
    runs: list[list[Node]] = [[cycle[0]]]
    for node in cycle[1:]:
        if node in runs[-1][-1].users:
            runs.append([node])
        else:
            runs[-1].append(node)
    steps = []
    for i, run in enumerate(runs):
        if len(run) > 1:
            assert run[0].actor is not None
            steps.append(f"actor {run[0].actor.label} computes {', then '.join(_task(t) for t in run)}")
        steps.append(f"{_task(runs[(i + 1) % len(runs)][0])} reads {_task(run[-1])}")
    actors = {n.actor.actor_id: n.actor for n in cycle if n.actor is not None}.values()
    handles = [a.label for a in actors if a.num_handles > 1]
    hint = (
        f"; {', '.join(handles)} had tasks bound through more than one ActorHandle object, each "
        "numbering its binds from 0: bind all of an actor's tasks through one handle"
        if handles
        else "; bind each actor's tasks in an order its inputs allow"
    )
    return (
        "This DAG cannot be compiled because it will deadlock: each actor computes its tasks "
        "in bind order, and here that order waits on itself: " + "; ".join(steps) + hint
    )


def _task(node: Node) -> str:
    return f"{node.display_name} (%{node.name})"


def _first_use(order: list[Node]) -> list[str]:
    """Actor ids in the order their first task appears (the Plan's actor order)."""
    return list(dict.fromkeys(n.actor.actor_id for n in order if n.op == "call" and n.actor is not None))
