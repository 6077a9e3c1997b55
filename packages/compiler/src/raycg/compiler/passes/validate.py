"""validate: refuse what cannot be compiled, naming the node as the user wrote it.

The errors are Ray's own compiler's (API.md): NotImplementedError for a function task,
ValueError for the rest. Checks run cheapest-mistake first; the dead-actor check comes
last, as ``_placement`` ran before and only recorded what it saw.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ir import Const, FirstArg, Graph, Index, Key, Node

_UNSUPPORTED: dict[str, tuple[type[Exception], str]] = {
    "function": (NotImplementedError, "a function task cannot be compiled; bind an actor method instead"),
    "collective": (NotImplementedError, "collective operations cannot be compiled by raycg.compiler yet"),
    "uncreated_actor": (
        ValueError,
        "the actor is created inside the DAG (Actor.bind()); create it first with "
        "Actor.remote() and bind the method of that handle",
    ),
}


def validate(graph: Graph) -> None:
    """Raise NotImplementedError / ValueError for the first thing that cannot be compiled."""
    for check in _CHECKS:
        check(graph)


def _refuse_unsupported(graph: Graph) -> None:
    for node in graph.nodes_of("call"):
        kind = node.meta.get("unsupported")
        if kind is None:
            continue
        if kind == "num_returns":
            raise ValueError(
                f"{node.display_name}: num_returns={node.meta['num_returns']!r} cannot be compiled; "
                "a compiled task returns one value, or N values with num_returns=N (N >= 1)"
            )
        error, why = _UNSUPPORTED.get(
            kind, (ValueError, f"a {kind} cannot be compiled; only actor method calls can")
        )
        raise error(f"{node.display_name}: {why}")


def _refuse_bad_args(graph: Graph) -> None:
    for node in graph.nodes:
        for position, container in node.meta.get("nested_args", []):
            raise ValueError(
                f"{node.display_name}: {position} is a {container} holding a DAG node; a DAG node "
                "cannot be placed inside a container: pass each DAG node as an argument of its own"
            )
        for position, kind in node.meta.get("bad_args", []):
            raise ValueError(f"{node.display_name}: {position} is a {kind}, which cannot be an argument")


def _check_input(graph: Graph) -> None:
    inputs = graph.nodes_of("input")
    if not inputs:
        raise ValueError(
            f"{_first_output_name(graph)}: the graph has no InputNode; build it inside "
            "`with InputNode() as inp:` and pass inp (or inp[i], inp.key) to its first tasks"
        )
    if len(inputs) > 1:
        readers = ", ".join(_user_names(n) for n in inputs)
        raise ValueError(
            f"the graph has {len(inputs)} InputNodes (read by {readers}); "
            "use one InputNode and index it: inp[0], inp[1], inp.key"
        )
    _check_input_projections(graph, inputs[0])


def _check_input_projections(graph: Graph, inp: Node) -> None:
    """As Ray: tasks use InputNode() directly, or all index it; each index made is read."""
    direct: list[Node] = []
    indexed: list[Node] = []
    used_keys: set[int | str] = set()
    for node in inp.users:
        for ref in node.refs():
            if ref.node is not inp:
                continue
            projection = ref.projections[0]
            (direct if isinstance(projection, FirstArg) else indexed).append(node)
            if isinstance(projection, Index | Key):
                used_keys.add(projection.i if isinstance(projection, Index) else projection.key)
    if direct and indexed:
        raise ValueError(
            f"{direct[0].display_name} reads InputNode() itself while {indexed[0].display_name} "
            "reads inp[i] or inp.key: all tasks must either use InputNode() directly or index it"
        )
    unused = [k for k in inp.meta.get("attribute_keys", []) if k not in used_keys]
    if unused:
        raise ValueError(
            f"the InputNode was indexed with {', '.join(map(repr, unused))} but no task reads "
            "that value; bind it to a task, or do not index the InputNode with it"
        )


def _check_outputs(graph: Graph) -> None:
    out = graph.output_node
    if not out.args:
        raise ValueError("MultiOutputNode: the graph has no outputs; list at least one task's result")
    for i, arg in enumerate(out.args):
        if isinstance(arg, Const) or arg.node.op != "call":
            what = "a constant" if isinstance(arg, Const) else "the InputNode"
            where = f"MultiOutputNode: output {i} is" if out.meta["multi_output"] else "the DAG ends with"
            raise ValueError(f"{where} {what}; a graph output must be an actor method's result")


def _refuse_inputless_tasks(graph: Graph) -> None:
    fed: set[Node] = set(graph.nodes_of("input"))
    for node in graph.nodes:  # topological order: a node's inputs are decided before it
        if any(src in fed for src in node.inputs()):
            fed.add(node)
        elif node.op == "call":
            raise ValueError(
                f"{node.display_name}: this task depends on no input: neither it nor any task it "
                "reads takes the InputNode; pass it inp (or inp[i], inp.key) or another task's result"
            )


def _refuse_leaves(graph: Graph) -> None:
    for node in graph.nodes_of("call"):
        if not node.users:
            raise ValueError(
                f"{node.display_name}{_on(node)}: this task is a leaf: its result is neither a graph "
                "output nor read by another task, so its errors would be lost; add it to "
                "MultiOutputNode([...]) or do not bind it"
            )


def _refuse_dead_actors(graph: Graph) -> None:
    for node in graph.nodes_of("call"):
        actor = node.actor
        if actor is not None and actor.dead_reason is not None:
            raise ValueError(
                f"{node.display_name}: actor {actor.label} is dead or unreachable ({actor.dead_reason}); "
                "create a new actor and build the graph on it"
            )


def _first_output_name(graph: Graph) -> str:
    for ref in graph.output_node.refs():
        return ref.node.display_name
    return graph.output_node.display_name


def _user_names(node: Node) -> str:
    return "/".join(u.display_name for u in node.users) or "nothing"


def _on(node: Node) -> str:
    return f" on actor {node.actor.label}" if node.actor else ""


_CHECKS: tuple[Callable[[Graph], None], ...] = (
    _refuse_unsupported,
    _refuse_bad_args,
    _check_outputs,
    _check_input,
    _refuse_inputless_tasks,
    _refuse_leaves,
    _refuse_dead_actors,
)
