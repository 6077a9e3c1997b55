"""validate: refuse what cannot be compiled, naming the node as the user wrote it.

The errors are Ray's own compiler's (API.md): NotImplementedError for a function task,
ValueError for the rest; each message starts with Ray's words where Ray has some, so
that code matching them keeps working. Checks run cheapest-mistake first; the
dead-actor check comes last, as ``_placement`` ran before and only recorded what it saw.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ir import TASK_OPS, Collective, Const, FirstArg, Graph, Index, Key, Node

# Each refusal starts with Ray's own compiler's words (code matching them keeps working),
# then says which node, as the user wrote it, and what to do.
_UNSUPPORTED: dict[str, tuple[type[Exception], str]] = {
    "function": (
        NotImplementedError,
        "Compiled DAGs currently only support actor method nodes: {name} is a function task "
        "({name}.bind(...)); make it a method of an actor created with Actor.remote() and bind that",
    ),
    "uncreated_actor": (
        ValueError,
        "Compiled DAGs can only bind methods to an actor that is already created with "
        "Actor.remote(): {name} is bound on an actor created inside the DAG (Actor.bind()); create "
        "it first with Actor.remote() and bind the method of that handle",
    ),
}


def validate(graph: Graph) -> None:
    """Raise NotImplementedError / ValueError for the first thing that cannot be compiled."""
    for check in _CHECKS:
        check(graph)


def _refuse_unsupported(graph: Graph) -> None:
    for node in graph.tasks():
        kind = node.meta.get("unsupported")
        if kind is None:
            continue
        if kind == "num_returns":
            raise ValueError(
                f"{node.display_name}: num_returns={node.meta['num_returns']!r} cannot be compiled; "
                "a compiled task returns one value, or N values with num_returns=N (N >= 1)"
            )
        unknown = "Found unsupported node of type {name}: only actor method calls can be compiled"
        error, why = _UNSUPPORTED.get(kind, (ValueError, unknown))
        raise error(why.format(name=node.display_name))


def _refuse_bad_args(graph: Graph) -> None:
    for node in graph.nodes:
        for position, container, hidden in node.meta.get("nested_args", []):
            names = ", ".join(hidden)
            raise ValueError(
                f"Found {len(hidden)} DAGNodes from the arg {position} ({container}) in "
                f"{node.display_name}: {names}. Please ensure that the argument is a single DAGNode "
                "and that a DAGNode is not allowed to be placed inside any type of container: pass "
                f"{names} to {node.display_name} as {'an argument' if len(hidden) == 1 else 'arguments'} "
                "of its own"
            )
        for position, kind in node.meta.get("bad_args", []):
            raise ValueError(f"{node.display_name}: {position} is a {kind}, which cannot be an argument")


def _check_input(graph: Graph) -> None:
    inputs = graph.nodes_of("input")
    if not inputs:
        raise ValueError(
            "Compiled DAGs currently require exactly one InputNode: "
            f"{_first_output_name(graph)}: the graph has none; build it inside "
            "`with InputNode() as inp:` and pass inp (or inp[i], inp.key) to its first tasks"
        )
    if len(inputs) > 1:
        readers = ", ".join(_user_names(n) for n in inputs)
        raise ValueError(
            "Compiled DAGs currently require exactly one InputNode: "
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
            "All tasks must either use InputNode() directly, or they must index to specific args "
            f"or kwargs: {direct[0].display_name} reads InputNode() itself while "
            f"{indexed[0].display_name} reads inp[i] or inp.key; use one way in every task"
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
        if isinstance(arg, Const) or arg.node.op not in TASK_OPS:
            what = "a constant" if isinstance(arg, Const) else "the InputNode"
            where = f"MultiOutputNode: output {i} is" if out.meta["multi_output"] else "the DAG ends with"
            raise ValueError(f"{where} {what}; a graph output must be an actor method's result")


def _refuse_inputless_tasks(graph: Graph) -> None:
    fed: set[Node] = set(graph.nodes_of("input"))
    for node in graph.nodes:  # topological order: a node's inputs are decided before it
        if any(src in fed for src in node.inputs()):
            fed.add(node)
        elif node.op in TASK_OPS:
            raise ValueError(
                "Compiled DAGs require each task to take a ray.dag.InputNode or at least one other "
                f"DAGNode as an input: {node.display_name}{_on(node)} depends on no input (neither it "
                "nor any task it reads takes the InputNode); pass it inp (or inp[i], inp.key) or "
                "another task's result"
            )


def _refuse_leaves(graph: Graph) -> None:
    """As Ray: every task result, and every output of a num_returns=N task, is read."""
    leaves = []
    for node in graph.tasks():
        if node.num_returns == 1:
            if not node.users:
                leaves.append(f"{node.display_name}{_on(node)}")
        else:  # Ray: one node per output (return_idx_i), each a leaf if nothing reads it
            read = {
                ref.projections[0].i
                for user in node.users
                for ref in user.refs()
                if ref.node is node and isinstance(ref.projections[0], Index)
            }
            unread = [i for i in range(node.num_returns) if i not in read]
            leaves += [f"output {i} of {node.display_name}{_on(node)}" for i in unread]
    if leaves:
        raise ValueError(
            "Compiled DAG doesn't support leaf nodes, i.e., nodes that don't have downstream nodes "
            f"and are not output nodes. There are {len(leaves)} leaf nodes in the DAG: "
            f"{'; '.join(leaves)}. Nothing reads their results, so their errors would be lost: add "
            "them to MultiOutputNode([...]) or pass them to a task, or do not bind them"
        )


def _check_collectives(graph: Graph) -> None:
    """A collective's members are distinct actors (Ray refuses a repeat at bind; a graph
    built otherwise is refused here), each with a GPU where the user asked for NCCL."""
    for collective in _collectives(graph):
        repeated = [a for i, a in enumerate(collective.actor_ids) if a in collective.actor_ids[:i]]
        if repeated:
            actor = graph.actors[repeated[0]].label if repeated[0] in graph.actors else repeated[0]
            twice = [
                m.display_name for m in collective.members if m.actor and m.actor.actor_id == repeated[0]
            ]
            raise ValueError(
                "Expected unique actor handles, but found duplicate actor handles from input nodes: "
                f"{collective.label} ({collective.name}) takes part twice on actor {actor} (through "
                f"{', '.join(twice)}); pass one input node per actor"
            )
        if collective.transport == "nccl":
            for node in collective.members:
                if node.actor is not None and not node.actor.gpu_ids:
                    raise ValueError(
                        f"{node.display_name}: {collective.label} over NCCL (transport='nccl') needs "
                        f"a GPU on every member, but actor {node.actor.label} has none; give it a "
                        "GPU (num_gpus=1), or use transport=None or 'cpu'"
                    )


def _collectives(graph: Graph) -> list[Collective]:
    found = {id(n.meta["collective"]): n.meta["collective"] for n in graph.tasks() if "collective" in n.meta}
    return list(found.values())


def _refuse_dead_actors(graph: Graph) -> None:
    for node in graph.tasks():
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
    _check_collectives,
    _refuse_dead_actors,
)
