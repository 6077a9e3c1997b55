"""overlap: with ``overlap_gpu_communication``, an actor receives a task's communicator
tensors while it computes the task before it.

Ray's rule (``_generate_overlapped_execution_schedule``): each receive over a
communicator moves back past the compute op just before it on the same actor, unless a
communicator operation stands in between. raycg keeps the rule and adds what Ray does
not check, that the move cannot deadlock:

- For each actor, for each task ``c`` after the first, and each communicator edge
  ``w -> c`` that ``c`` is the first task of its actor to read: the edge is received at
  the start of ``p``, the task just before ``c`` (``node.meta["prefetch"]`` of ``p``:
  the ``(w, c)`` edges; ``TaskPlan.prefetch`` in the plan).
- Not if ``p`` is a communicator operation itself (a collective, or a task that reads
  or writes a communicator edge): the order of every actor's communicator operations
  stays the one the schedule pass chose, so the pairing that assign_communicators
  checked holds unchanged.
- Not if ``w`` can only run after ``p``: receiving at ``p`` adds the wait ``w -> p``,
  and the schedule pass's argument (passes/schedule.py) needs the graph of data edges,
  bind-order edges and these waits to stay acyclic. So ``w`` must not be reachable from
  ``p`` along data edges, each actor's next task, a collective's other members (they run
  together) and the waits added so far.

Only the place of the receive moves; what a task computes does not, so results are the
same with the option and without it. On NCCL the receive is queued on the
communicator's receive stream and waited for only when ``c`` needs it (the runtime),
which is the overlap; on a CPU communicator a receive completes where it is made, so the
option only moves it.
"""

from __future__ import annotations

from itertools import pairwise

from raycg.proto import TensorTransport

from ..ir import Graph, Node

_OVER_COMMUNICATOR = (TensorTransport.TENSOR_ACCELERATOR, TensorTransport.TENSOR_COMMUNICATOR)


def overlap(graph: Graph) -> None:
    """Set ``meta["prefetch"]`` (a list of ``(writer, reader)`` edges) on the tasks that
    receive a later task's communicator tensors; nothing without the option."""
    if not graph.options.overlap_gpu_communication:
        return
    schedule: dict[str, list[Node]] = graph.meta["schedule"]
    after = {a: b for tasks in schedule.values() for a, b in pairwise(tasks)}
    waits: dict[Node, list[Node]] = {}  # w -> p: p now receives from w before computing
    for tasks in schedule.values():
        for i, (p, c) in enumerate(pairwise(tasks)):
            if _communicates(p):
                continue
            read_before = {(src, _kind(src, t)) for t in tasks[: i + 1] for src in t.inputs()}
            for w in dict.fromkeys(c.inputs()):
                if not _over_communicator(w, c) or (w, _kind(w, c)) in read_before:
                    continue
                if _reaches(p, w, after, waits):
                    continue  # w runs only after p: receiving at p would wait forever
                p.meta.setdefault("prefetch", []).append((w, c))
                waits.setdefault(w, []).append(p)


def _kind(src: Node, dst: Node) -> object:
    return (src.meta["transport_to"].get(dst), src.meta.get("tensor_to", {}).get(dst))


def _over_communicator(src: Node, dst: Node) -> bool:
    return src.meta.get("tensor_to", {}).get(dst) in _OVER_COMMUNICATOR


def _communicates(node: Node) -> bool:
    """Whether ``node`` is a communicator operation: a collective, or a task with a
    communicator edge in or out."""
    if node.meta.get("collective") is not None:
        return True
    return any(_over_communicator(src, node) for src in node.inputs()) or any(
        _over_communicator(node, user) for user in node.users
    )


def _reaches(start: Node, goal: Node, after: dict[Node, Node], waits: dict[Node, list[Node]]) -> bool:
    """Whether ``goal`` can only run after ``start`` (a path of must-run-before edges)."""
    seen = {start}
    todo = [start]
    while todo:
        node = todo.pop()
        if node is goal:
            return True
        collective = node.meta.get("collective")
        nexts = [*node.users, *waits.get(node, ())]
        if node in after:
            nexts.append(after[node])
        if collective is not None:
            nexts += collective.members
        for n in nexts:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return False
