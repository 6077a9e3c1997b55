"""The compiler's IR: a small, torch.fx-like graph of input, call, collective and output nodes.

A collective (``allreduce.bind([x, y])``) is one ``collective`` node per member actor,
each reading that actor's input(s) and yielding that actor's result; the members share
one :class:`Collective` in ``meta["collective"]``.

``_frontend`` builds it from a Ray DAG; each pass in ``passes/`` reads it and records
what it learns in ``Node.meta`` / ``Graph.meta``; ``_emit`` turns it into a Plan.
The IR knows nothing of Ray: an actor is an id, a class name and an opaque handle.

Invariants (checked by :meth:`Graph.lint`):
- ``graph.nodes`` is in a topological order: every node a node refers to comes before it;
- exactly one ``output`` node, last, with no users;
- ``node.users`` is the distinct nodes that refer to ``node``, in graph order;
- node names are unique.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from raycg.proto import Options, TensorTransport, Transport

Op = Literal["input", "call", "collective", "output"]
TASK_OPS = ("call", "collective")  # what an actor runs


@dataclass(frozen=True)
class Index:
    """``value[i]``: ``inp[i]``, or output ``i`` of a ``num_returns`` task."""

    i: int


@dataclass(frozen=True)
class Key:
    """``kwargs[key]``: ``inp.key`` or ``inp["key"]``."""

    key: str


@dataclass(frozen=True)
class FirstArg:
    """The InputNode itself: the execution's only positional argument."""


Projection = Index | Key | FirstArg


@dataclass(frozen=True, eq=False)
class Ref:
    """An argument that is (a projection of) another node's value."""

    node: Node
    projections: tuple[Projection, ...] = ()


@dataclass(frozen=True, eq=False)
class Const:
    """An argument that is the same Python value in every execution."""

    value: object


Arg = Ref | Const


@dataclass(frozen=True)
class TensorHint:
    """A node's tensor type hint, as read from Ray (``with_tensor_transport``, ``type_hint``)."""

    transport: str  # "auto" | "shm" | "accelerator" | "communicator"
    device: str  # "default" | "cpu" | "gpu"
    static_shape: bool = False
    direct_return: bool = False
    written: str = ""  # as the user wrote it, for errors
    communicator: object = None  # the user's Communicator instance, for "communicator"


@dataclass(eq=False)
class Collective:
    """One collective operation; its members are the ``collective`` nodes, one per actor."""

    name: str  # "coll0", unique in the graph
    kind: str  # "allreduce" | "allgather" | "reducescatter" | "broadcast"
    actor_ids: list[str]  # the members' actors, in rank order
    reduce_op: str = ""  # Ray's ReduceOp name, for allreduce and reducescatter
    transport: str = "auto"  # "auto" | "nccl" | "cpu" | "communicator"
    src_rank: int = 0  # broadcast
    communicator: object = None  # the user's Communicator instance, for "communicator"
    communicator_id: str = ""  # its id in graph.meta["communicators"] (assign_communicators)
    members: list[Node] = field(default_factory=list)  # in the order the frontend read them

    @property
    def label(self) -> str:
        op = f".{self.reduce_op}" if self.reduce_op else ""
        return f"{self.kind}{op}"


@dataclass(eq=False)
class Actor:
    """One actor taking part in the graph; ``_placement`` fills ``node_id``/``dead_reason``."""

    actor_id: str  # hex ActorID
    class_name: str
    name: str  # short and unique in the graph: "echo0"
    handle: object  # the ActorHandle; opaque to the IR
    node_id: str | None = None
    dead_reason: str | None = None
    num_handles: int = 1  # distinct ActorHandle objects the DAG binds this actor's tasks through
    gpu_ids: list[str] = field(default_factory=list)  # what Ray assigned it

    @property
    def label(self) -> str:
        return f"{self.class_name}({self.actor_id[:6]})"


@dataclass(eq=False)
class Node:
    """One value of the graph: the execution's input, a task's result, or the outputs."""

    name: str
    op: Op
    display_name: str  # as the user wrote it, for errors: "Echo.echo"
    actor: Actor | None = None
    method: str | None = None
    args: list[Arg] = field(default_factory=list)
    kwargs: dict[str, Arg] = field(default_factory=dict)
    num_returns: int = 1
    users: list[Node] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def all_args(self) -> Iterator[Arg]:
        yield from self.args
        yield from self.kwargs.values()

    def refs(self) -> Iterator[Ref]:
        return (a for a in self.all_args() if isinstance(a, Ref))

    def inputs(self) -> list[Node]:
        """The distinct nodes this node reads, in argument order."""
        return list(dict.fromkeys(r.node for r in self.refs()))

    @property
    def target(self) -> str:
        """``echo0.echo`` for a call or collective, the op otherwise."""
        if self.op not in TASK_OPS:
            return self.op
        return f"{self.actor.name}.{self.method}" if self.actor else str(self.method)

    def __str__(self) -> str:
        args = [_format_arg(a) for a in self.args]
        args += [f"{k}={_format_arg(a)}" for k, a in self.kwargs.items()]
        head = f"{self.op}[{self.target}]" if self.op in TASK_OPS else self.op
        notes = _format_notes(self)
        return f"%{self.name} = {head}({', '.join(args)})" + (f"  {notes}" if notes else "")

    def __repr__(self) -> str:
        return f"<Node %{self.name}>"


class LintError(AssertionError):
    """The IR broke one of its invariants: a compiler bug, never the user's fault."""


class Graph:
    """The nodes of one DAG, in a topological order, and the actors they run on."""

    def __init__(self, options: Options | None = None) -> None:
        self.nodes: list[Node] = []
        self.actors: dict[str, Actor] = {}  # actor id hex -> Actor, first use first
        self.options: Options = options if options is not None else Options()
        self.driver_node_id: str | None = None
        self.meta: dict[str, Any] = {}

    def add_node(self, node: Node) -> Node:
        """Append ``node`` (its inputs must be in the graph), naming it uniquely."""
        taken = {n.name for n in self.nodes}
        base, k = node.name, 1
        while node.name in taken:
            node.name, k = f"{base}_{k}", k + 1
        for src in node.inputs():
            src.users.append(node)
        self.nodes.append(node)
        return node

    @property
    def output_node(self) -> Node:
        return self.nodes[-1]

    def nodes_of(self, op: Op) -> list[Node]:
        return [n for n in self.nodes if n.op == op]

    def tasks(self) -> list[Node]:
        """The nodes an actor runs: calls and collectives' members."""
        return [n for n in self.nodes if n.op in TASK_OPS]

    def lint(self) -> None:
        """Check the IR's invariants (see the module docstring); raise LintError."""
        _lint_names_and_order(self)
        _lint_users(self)
        _lint_meta(self)

    def __str__(self) -> str:
        """One line per node, then (once scheduled) one line per actor: the order in which
        it computes its tasks, every execution."""
        lines = [str(n) for n in self.nodes]
        for tasks in self.meta.get("schedule", {}).values():
            order = ", ".join(f"%{t.name}" for t in tasks)
            lines.append(f"schedule[{tasks[0].target.split('.')[0]}] = {order}")
        return "\n".join(lines)


def _lint_names_and_order(graph: Graph) -> None:
    seen: set[Node] = set()
    names = [n.name for n in graph.nodes]
    _require(len(names) == len(set(names)), f"duplicate node names in {names}")
    for node in graph.nodes:
        for ref in node.refs():
            _require(ref.node in seen, f"%{node.name} reads %{ref.node.name}, not before it")
            _lint_projections(node, ref)
        seen.add(node)
    outputs = graph.nodes_of("output")
    _require(len(outputs) == 1 and graph.nodes[-1] is outputs[0], "one output node, last")
    _require(not graph.output_node.users, "the output node has users")


def _lint_projections(node: Node, ref: Ref) -> None:
    if ref.node.op not in TASK_OPS or ref.node.num_returns == 1:
        return
    ok = len(ref.projections) == 1 and isinstance(ref.projections[0], Index)
    _require(ok, f"%{node.name} reads %{ref.node.name} without choosing one of its outputs")
    index = ref.projections[0]
    assert isinstance(index, Index)
    _require(0 <= index.i < ref.node.num_returns, f"%{node.name}: output index out of range")


def _lint_users(graph: Graph) -> None:
    expected: dict[Node, list[Node]] = {n: [] for n in graph.nodes}
    for node in graph.nodes:
        for src in node.inputs():
            expected[src].append(node)
    for node in graph.nodes:
        _require(node.users == expected[node], f"%{node.name}.users is stale")


def _lint_meta(graph: Graph) -> None:
    for node in graph.nodes:
        transport_to = node.meta.get("transport_to")
        if transport_to is not None:
            _require(set(transport_to) == set(node.users), f"%{node.name}: a user without a transport")
        slots = node.meta.get("slots")
        if slots is not None:
            _require(set(slots) == set((transport_to or {}).values()), f"%{node.name}: slots/transports")
        tensor_to = node.meta.get("tensor_to")
        if tensor_to is not None:
            _require(set(tensor_to) == set(node.users), f"%{node.name}: a user without a tensor transport")
    schedule = graph.meta.get("schedule")
    if schedule is not None:
        calls = graph.tasks()
        for actor_id, tasks in schedule.items():
            mine = [n for n in calls if n.actor is not None and n.actor.actor_id == actor_id]
            _require(tasks == mine, f"the schedule of actor {actor_id} is not in graph order")


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise LintError(what)


def _format_arg(arg: Arg) -> str:
    if isinstance(arg, Const):
        text = repr(arg.value)
        return text if len(text) <= 24 else text[:21] + "..."
    return f"%{arg.node.name}" + "".join(_format_projection(p) for p in arg.projections)


def _format_projection(p: Projection) -> str:
    if isinstance(p, Index):
        return f"[{p.i}]"
    return f".{p.key}" if isinstance(p, Key) else ""


# SHM first: it is the channel that costs something.
_TRANSPORT_ORDER = (Transport.SHM, Transport.GRPC, Transport.INPROC)


def _format_notes(node: Node) -> str:
    notes = []
    if node.num_returns > 1:
        notes.append(f"returns={node.num_returns}")
    if node.op == "output" and node.meta.get("multi_output"):
        notes.append("multi_output")
    used = set(node.meta.get("transport_to", {}).values())
    kinds = [t for t in _TRANSPORT_ORDER if t in used]
    if kinds:
        notes.append("transport=" + ",".join(Transport.Name(t).lower() for t in kinds))
    slots = node.meta.get("slots")
    if slots:
        notes.append("slots=" + ",".join(str(slots[t]) for t in kinds))
    notes += _tensor_notes(node)
    collective = node.meta.get("collective")
    if collective is not None:
        rank = collective.actor_ids.index(node.actor.actor_id) if node.actor else -1
        notes.append(f"{collective.name} rank={rank}/{len(collective.actor_ids)} via={collective.transport}")
    prefetch = node.meta.get("prefetch")
    if prefetch:  # overlap_gpu_communication: received before this task computes
        notes.append("prefetch=" + ",".join(f"%{w.name}->%{c.name}" for w, c in prefetch))
    return " ".join(notes)


def _tensor_notes(node: Node) -> list[str]:
    hint: TensorHint | None = node.meta.get("tensor_hint")
    if hint is None:
        return []
    used = set(node.meta.get("tensor_to", {}).values())
    kinds = [name for t, name in _TENSOR_NAMES if t in used] or [hint.transport]
    notes = ["tensor=" + ",".join(kinds), f"device={hint.device}"]
    notes += [
        flag
        for flag, on in (("static_shape", hint.static_shape), ("direct_return", hint.direct_return))
        if on
    ]
    return notes


_TENSOR_NAMES = (
    (TensorTransport.TENSOR_SHM, "shm"),
    (TensorTransport.TENSOR_ACCELERATOR, "nccl"),
    (TensorTransport.TENSOR_COMMUNICATOR, "communicator"),
)
