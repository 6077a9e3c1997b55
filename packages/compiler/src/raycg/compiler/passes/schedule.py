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

A collective is one step of all its members at once (each member's part keeps its place
in its actor's bind order; the members are placed together, once all are ready), so the
argument holds with "pair" read as "(execution, task or whole collective)": the smallest
unfinished one, if a collective, has every member's earlier steps finished and its
inputs written, so every member reaches it. A graph where the members' bind orders
cannot meet is a cycle too, and is refused the same way.

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

from ..ir import TASK_OPS, Graph, Node


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
    for node in graph.tasks():
        if node.actor is not None:
            per_actor.setdefault(node.actor.actor_id, []).append(node)
    for tasks in per_actor.values():
        if all(isinstance(t.meta.get("bind_index"), int) for t in tasks):
            tasks.sort(key=lambda t: (t.meta["bind_index"], position[t]))
    return per_actor


def _before(per_actor: dict[str, list[Node]]) -> dict[Node, Node]:
    """task -> the task its actor computes just before it."""
    return {later: earlier for tasks in per_actor.values() for earlier, later in pairwise(tasks)}


def _members(node: Node) -> list[Node]:
    """The nodes that run together with ``node``: its collective's members, or itself."""
    collective = node.meta.get("collective")
    return list(collective.members) if collective is not None else [node]


def _global_order(graph: Graph, per_actor: dict[str, list[Node]]) -> list[Node]:
    """Kahn's algorithm over data edges and bind-order edges, earliest in graph order
    first; a collective's members are placed together, once every one of them is ready."""
    position = {node: i for i, node in enumerate(graph.nodes)}
    prev = _before(per_actor)
    after = {earlier: later for later, earlier in prev.items()}
    waiting = {node: len(node.inputs()) + (node in prev) for node in graph.nodes}
    ready: list[tuple[int, str]] = []
    by_name = {n.name: n for n in graph.nodes}

    def offer(node: Node) -> None:
        group = _members(node)
        if all(waiting[m] == 0 for m in group):  # the last member to get ready releases them all
            first = min(group, key=position.__getitem__)
            heapq.heappush(ready, (position[first], first.name))

    for node in graph.nodes:
        if waiting[node] == 0:
            offer(node)
    order: list[Node] = []
    placed: set[Node] = set()
    while ready:
        head = by_name[heapq.heappop(ready)[1]]
        if head in placed:
            continue
        group = sorted(_members(head), key=position.__getitem__)
        order += group
        placed.update(group)
        for node in group:
            for nxt in [*node.users, *([after[node]] if node in after else [])]:
                waiting[nxt] -= 1
                if waiting[nxt] == 0:
                    offer(nxt)
    if len(order) != len(graph.nodes):
        stuck = [n for n in graph.nodes if n not in placed]
        raise ValueError(_deadlock_message(_cycle(stuck, prev, waiting)))
    return order


def _cycle(stuck: list[Node], prev: dict[Node, Node], waiting: dict[Node, int]) -> list[Node]:
    """A cycle among the nodes Kahn could not place, in must-run-before order.

    Every stuck node waits on a stuck node: an input or its actor's previous task if it
    still waits itself, else (a collective's member, ready) a member that still waits.
    So walking those from any of them must revisit one.
    """
    stuck_set = set(stuck)
    walk: list[Node] = []
    seen: dict[Node, int] = {}
    node = stuck[0]
    while node not in seen:
        seen[node] = len(walk)
        walk.append(node)
        if waiting[node] > 0:
            preds = [*node.inputs(), *([prev[node]] if node in prev else [])]
            node = next(p for p in preds if p in stuck_set)
        else:
            node = next(m for m in _members(node) if waiting[m] > 0)
    return list(reversed(walk[seen[node] :]))


def _step(before: Node, later: Node) -> str:
    """Why ``later`` cannot run before ``before`` has."""
    if later in before.users:
        return f"{_task(later)} reads {_task(before)}"
    collective = later.meta.get("collective")
    if collective is not None and before in collective.members:
        return f"{_task(later)} enters {collective.name} only with {_task(before)}"
    assert later.actor is not None
    return f"actor {later.actor.label} computes {_task(before)}, then {_task(later)}"


def _deadlock_message(cycle: list[Node]) -> str:
    """Name the cycle, one step per edge; runs of one actor's bind order are joined."""
    n = len(cycle)
    # Start where a run of one actor's bind order starts, so that runs print whole.
    k = next(
        (
            i
            for i in range(n)
            if not _is_chain(cycle[i - 1], cycle[i]) and _is_chain(cycle[i], cycle[(i + 1) % n])
        ),
        0,
    )
    cycle = cycle[k:] + cycle[:k]
    edges = [(cycle[i], cycle[(i + 1) % n]) for i in range(n)]
    steps: list[str] = []
    i = 0
    while i < n:
        if not _is_chain(*edges[i]):
            steps.append(_step(*edges[i]))
            i += 1
            continue
        run = [edges[i][0]]
        while i < n and _is_chain(*edges[i]):
            run.append(edges[i][1])
            i += 1
        assert run[0].actor is not None
        steps.append(f"actor {run[0].actor.label} computes " + ", then ".join(_task(t) for t in run))
    actors = {m.actor.actor_id: m.actor for m in cycle if m.actor is not None}.values()
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


def _is_chain(before: Node, later: Node) -> bool:
    """Whether the only reason ``later`` waits for ``before`` is its actor's bind order."""
    if later in before.users:
        return False
    collective = later.meta.get("collective")
    if collective is not None and before in collective.members:
        return False
    return before.actor is not None and before.actor is later.actor


def _task(node: Node) -> str:
    return f"{node.display_name} (%{node.name})"


def _first_use(order: list[Node]) -> list[str]:
    """Actor ids in the order their first task appears (the Plan's actor order)."""
    return list(dict.fromkeys(n.actor.actor_id for n in order if n.op in TASK_OPS and n.actor is not None))
