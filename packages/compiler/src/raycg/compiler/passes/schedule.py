"""schedule: one global topological order, and each actor's tasks in that order.

Why this cannot deadlock, when every channel has at least one slot and executions
pipeline across actors: number every (execution k, task t) pair and order the pairs by
(k, position of t in the global order). Each actor runs its pairs in exactly that order
(its tasks in global order, one execution after another), and so does the driver (it
writes input k before input k+1). Take the smallest pair not yet finished. Everything it
reads was written by a smaller pair (a task earlier in the order, same execution), so
its reads can proceed. Every channel it writes has a free slot: a slot is held only by
a value some reader has not read yet, and with >= 1 slot that value is from execution
k-1 or earlier, whose readers are smaller pairs, hence finished. Its actor is not busy
elsewhere, because the actor's earlier pairs are smaller, hence finished. So the
smallest unfinished pair can always run: no cycle of waits exists. (Values bound for the
driver are drained by the driver into its result buffer, which API.md bounds separately.)

One *global* order matters: with edges a1 -> b2 and b1 -> a2, actor A may locally pick
(a2, a1) and actor B (b2, b1), each a topological order of its own tasks; then A waits in
a2 for b1, which B runs only after b2, which waits for a1, which A runs after a2.
"""

from __future__ import annotations

import heapq

from ..ir import Graph, Node


def schedule(graph: Graph) -> None:
    """Order ``graph.nodes`` topologically (stable: ties keep the frontend's order), and
    set ``meta["order"]`` on each node and ``graph.meta["schedule"]``: actor id -> tasks."""
    order = _topological_order(graph)
    graph.nodes[:] = order
    for position, node in enumerate(order):
        node.meta["order"] = position
    per_actor: dict[str, list[Node]] = {}
    for node in order:
        node.users.sort(key=lambda user: user.meta["order"])
        if node.op == "call" and node.actor is not None:
            per_actor.setdefault(node.actor.actor_id, []).append(node)
    graph.meta["schedule"] = per_actor


def _topological_order(graph: Graph) -> list[Node]:
    """Kahn's algorithm, taking the earliest ready node first; the output stays last."""
    position = {node: i for i, node in enumerate(graph.nodes)}
    waiting = {node: len(node.inputs()) for node in graph.nodes}
    ready = [(position[n], n.name) for n in graph.nodes if waiting[n] == 0]
    by_name = {n.name: n for n in graph.nodes}
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        node = by_name[heapq.heappop(ready)[1]]
        order.append(node)
        for user in node.users:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, (position[user], user.name))
    if len(order) != len(graph.nodes):
        raise AssertionError("the graph has a cycle: the frontend built it wrong")
    return order
