"""Ray DAG -> IR. The only module that reads Ray's DAG node classes.

The frontend records what the user built, refusing nothing it can represent: a function
task or a DAG node hidden in a list becomes a node (or argument) marked in ``meta``, and
the ``validate`` pass refuses it, naming it. It only raises for a root it cannot read.

Like Ray's own compiler it walks the whole connected component of the DAG, downstream
edges included, so that a task bound on the graph's input whose result nobody reads
(a leaf) is found and refused instead of silently dropped.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from ray.dag import (
    ClassMethodNode,
    ClassNode,
    CollectiveOutputNode,
    DAGNode,
    FunctionNode,
    InputAttributeNode,
    InputNode,
    MultiOutputNode,
)
from ray.dag.py_obj_scanner import _PyObjScanner
from ray.experimental.channel.auto_transport_type import AutoTransportType
from ray.experimental.channel.torch_tensor_type import TorchTensorType
from ray.experimental.util.types import AllGatherOp, AllReduceOp, ReduceScatterOp, _CollectiveOp

from .ir import Actor, Arg, Collective, Const, FirstArg, Graph, Index, Key, Node, Ref, TensorHint

_DEVICES = {"default": "default", "cpu": "cpu", "gpu": "gpu", "cuda": "gpu"}


class BroadcastOp(_CollectiveOp):
    """raycg's broadcast (Ray has none): every member gets member ``src_rank``'s tensor."""

    def __init__(self, src_rank: int = 0) -> None:
        self.src_rank = src_rank


def read_dag(dag: object) -> Graph:
    """Read the DAG ending at ``dag`` (a task's result or a MultiOutputNode) into a Graph.

    Raises:
        TypeError: ``dag`` is not a DAG node.
        ValueError: ``dag`` is a node that cannot end a graph (an actor creation).
    """
    if not isinstance(dag, DAGNode):
        raise TypeError(f"compile expects a DAG node built with .bind(), got {type(dag).__name__}")
    if isinstance(dag, ClassNode):
        raise ValueError(f"{dag._body.__name__}: an actor creation cannot end a compiled graph")
    reader = _Reader()
    for dag_node in _topological(_component(dag), dag):
        if dag_node is not dag or not isinstance(dag, MultiOutputNode):
            reader.read(dag_node)
    reader.read_outputs(dag)
    return reader.graph


def _neighbours(dag_node: DAGNode) -> list[DAGNode]:
    return [*dag_node._upstream_nodes, *dag_node._downstream_nodes]


def _component(root: DAGNode) -> list[DAGNode]:
    """Every node connected to ``root``, in breadth-first order.

    Left out: other MultiOutputNodes (an earlier, discarded attempt at this graph's end:
    Ray ignores them too) and actor creations (ClassNode: every call ever bound on that
    actor hangs below it; the call on an uncreated actor is refused on its own).
    """
    seen, queue, order = {root}, deque([root]), []
    while queue:
        node = queue.popleft()
        order.append(node)
        for other in _neighbours(node):
            if other in seen or isinstance(other, MultiOutputNode | ClassNode):
                continue
            seen.add(other)
            queue.append(other)
    return order


def _topological(component: list[DAGNode], root: DAGNode) -> list[DAGNode]:
    """Depth-first post-order over upstream edges: the root's inputs first, then the rest.

    Iterative, as a chain of a few thousand tasks would exhaust Python's recursion limit.
    """
    members, done, order = set(component), set(), []
    for start in [root, *component]:
        stack: list[tuple[DAGNode, bool]] = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            if node in done:
                continue
            if expanded:
                done.add(node)
                order.append(node)
                continue
            stack.append((node, True))
            ups = [u for u in node._upstream_nodes if u in members and u not in done]
            stack.extend((u, False) for u in reversed(ups))
    return order


class _Reader:
    """Turns DAG nodes, fed in a topological order, into IR nodes and argument refs."""

    def __init__(self) -> None:
        self.graph = Graph()
        self.refs: dict[DAGNode, Ref] = {}  # what an argument naming this DAG node reads
        self.calls: dict[DAGNode, Node] = {}
        self.inputs: dict[DAGNode, Node] = {}
        self._names_used: dict[str, int] = {}
        self._handles: dict[str, dict[int, Any]] = {}  # actor id -> the handle objects bound on
        self._collectives: dict[int, Collective] = {}  # id(Ray's _CollectiveOperation) -> ours

    def read(self, dag_node: DAGNode) -> None:
        if isinstance(dag_node, InputNode):
            self._read_input(dag_node)
        elif isinstance(dag_node, InputAttributeNode):
            key = dag_node.key
            projection = Index(key) if isinstance(key, int) else Key(str(key))
            self.refs[dag_node] = Ref(self.inputs[dag_node._dag_input_node], (projection,))
        elif isinstance(dag_node, ClassMethodNode) and dag_node.is_class_method_output:
            call, index = dag_node.class_method_call, dag_node.output_idx
            assert call is not None and index is not None  # set for every class method output
            self.refs[dag_node] = Ref(self.calls[call], (Index(index),))
        else:
            self._read_call(dag_node)

    def _read_input(self, dag_node: InputNode) -> None:
        keys = list(dag_node.input_attribute_nodes)
        node = Node(name="inp", op="input", display_name="InputNode", meta={"attribute_keys": keys})
        hints = [("InputNode", _tensor_hint(dag_node, "InputNode"))]
        for key, attribute in dag_node.input_attribute_nodes.items():
            written = f"inp[{key!r}]" if isinstance(key, int) else f"inp.{key}"
            hints.append((written, _tensor_hint(attribute, written)))
        node.meta["input_hints"] = [(w, h) for w, h in hints if h is not None]
        if hints[0][1] is not None:
            node.meta["tensor_hint"] = hints[0][1]
        self.inputs[dag_node] = self.graph.add_node(node)
        self.refs[dag_node] = Ref(node, (FirstArg(),))

    def _read_call(self, dag_node: DAGNode) -> None:
        node = self._describe_call(dag_node)
        node.args = [self._arg(a, node, f"argument {i}") for i, a in enumerate(dag_node.get_args())]
        node.kwargs = {
            k: self._arg(v, node, f"keyword argument {k!r}") for k, v in dag_node.get_kwargs().items()
        }
        if _has_nested_nodes(dag_node):
            node.meta["nested_args"] = _nested_positions(dag_node)
        hint = _tensor_hint(dag_node, node.display_name)
        if hint is not None:
            node.meta["tensor_hint"] = hint
        self.calls[dag_node] = self.graph.add_node(node)
        self.refs[dag_node] = Ref(node)

    def _describe_call(self, dag_node: DAGNode) -> Node:
        """A call node without arguments; what validate must refuse goes in meta["unsupported"]."""
        if isinstance(dag_node, FunctionNode):
            body = dag_node._body
            name = getattr(body, "__qualname__", repr(body))
            return Node(name=_identifier(name), op="call", display_name=name, method=name,
                        meta={"unsupported": "function"})  # fmt: skip
        if not isinstance(dag_node, ClassMethodNode):
            name = type(dag_node).__name__
            return Node(name=_identifier(name), op="call", display_name=name, meta={"unsupported": name})
        return self._describe_method_call(dag_node)

    def _describe_method_call(self, dag_node: ClassMethodNode) -> Node:
        method = dag_node.get_method_name()
        handle = dag_node._get_actor_handle()
        if handle is None:  # bound on Actor.bind(): the actor does not exist yet
            parent = dag_node._parent_class_node
            display = f"{getattr(parent, '_body', type(parent)).__name__}.{method}"
            return Node(name=_identifier(display), op="call", display_name=display, method=method,
                        meta={"unsupported": "uncreated_actor"})  # fmt: skip
        actor = self._actor(handle)
        node = Node(name=f"{actor.name}_{method}", op="call", display_name=f"{actor.class_name}.{method}",
                    actor=actor, method=method)  # fmt: skip
        # Ray counts binds per actor handle: the actor's order of computation (schedule).
        node.meta["bind_index"] = dag_node._get_bind_index()
        if isinstance(dag_node, CollectiveOutputNode):  # no method of that name: no num_returns
            self._describe_collective(dag_node, node)
            return node
        num_returns = dag_node.num_returns
        if not isinstance(num_returns, int) or num_returns < 1:
            node.meta["unsupported"] = "num_returns"
            node.meta["num_returns"] = num_returns
        else:
            node.num_returns = num_returns
        return node

    def _describe_collective(self, dag_node: CollectiveOutputNode, node: Node) -> None:
        """One member of a collective: this actor's part, sharing the operation's record."""
        op = dag_node._collective_op
        if id(op) not in self._collectives:
            self._collectives[id(op)] = _collective(op, f"coll{len(self._collectives)}")
        collective = self._collectives[id(op)]
        collective.members.append(node)
        node.op = "collective"
        node.method = collective.label
        node.name = f"{node.actor.name}_{collective.kind}" if node.actor else collective.kind
        node.display_name = f"{collective.label}({', '.join(_written(a) for a in dag_node.get_args())})"
        node.num_returns = max(1, len(dag_node.get_args()))  # one result per input tensor
        node.meta["collective"] = collective

    def _actor(self, handle: Any) -> Actor:
        actor_id = handle._actor_id.hex()
        # Each handle object counts its own binds: a second handle to one actor makes the
        # bind indices of that actor's tasks incomparable (schedule says so if it matters).
        self._handles.setdefault(actor_id, {})[id(handle)] = handle
        if actor_id not in self.graph.actors:
            class_name = handle._ray_actor_creation_function_descriptor.class_name
            short = _identifier(class_name.rsplit(".", 1)[-1]).lower()
            k = self._names_used.get(short, 0)
            self._names_used[short] = k + 1
            self.graph.actors[actor_id] = Actor(actor_id, class_name, f"{short}{k}", handle)
        actor = self.graph.actors[actor_id]
        actor.num_handles = len(self._handles[actor_id])
        return actor

    def _arg(self, value: object, node: Node, position: str) -> Arg:
        if not isinstance(value, DAGNode):
            return Const(value)
        if value not in self.refs:  # an actor creation or a MultiOutputNode used as an argument
            node.meta.setdefault("bad_args", []).append((position, type(value).__name__))
            return Const(None)
        return self.refs[value]

    def read_outputs(self, root: DAGNode) -> None:
        multi = isinstance(root, MultiOutputNode)
        values = list(root.get_args()) if multi else [root]
        out = Node(name="out", op="output", display_name="MultiOutputNode" if multi else "output",
                   meta={"multi_output": multi})  # fmt: skip
        out.args = [self._arg(v, out, f"output {i}") for i, v in enumerate(values)]
        if multi and _has_nested_nodes(root):
            out.meta["nested_args"] = _nested_positions(root)
        self.graph.add_node(out)


def _collective(op: Any, name: str) -> Collective:
    """Ray's ``_CollectiveOperation`` (or raycg's) as the IR's Collective."""
    kind_op = op._op
    kinds = ((AllReduceOp, "allreduce"), (AllGatherOp, "allgather"), (ReduceScatterOp, "reducescatter"))
    kind = next((k for cls, k in kinds if isinstance(kind_op, cls)), "broadcast")
    reduce_op = getattr(kind_op, "reduceOp", None)
    hint = op.type_hint
    # Ray turns transport=None into "accelerator"; raycg.collective records what the user
    # wrote. Ray's default is read as raycg's: NCCL where every member has a GPU, else CPU.
    transport = getattr(op, "raycg_transport", None)
    if transport is None:
        transport = "communicator" if hint.get_custom_communicator() is not None else hint.transport
        transport = {"accelerator": "auto"}.get(transport, transport)
    return Collective(
        name=name,
        kind=kind,
        actor_ids=[h._actor_id.hex() for h in op.actor_handles],
        reduce_op=reduce_op.name if reduce_op is not None else "",
        transport=transport,
        src_rank=getattr(kind_op, "src_rank", 0),
        communicator=hint.get_custom_communicator(),
    )


def _tensor_hint(dag_node: DAGNode, written: str) -> TensorHint | None:
    """A node's tensor type hint, or None for a plain value (a device that is not one of
    raycg's is kept as written, for ``assign_tensor_transports`` to refuse)."""
    hint = dag_node.type_hint
    if isinstance(hint, AutoTransportType):
        transport = "auto"
    elif isinstance(hint, TorchTensorType):
        # TorchTensorType's own "auto" is shared memory (with_tensor_transport("shm")).
        communicator = hint.get_custom_communicator()
        transport = (
            "communicator"
            if communicator is not None
            else {"auto": "shm", "cpu": "shm"}.get(hint.transport, hint.transport)
        )
    else:
        return None
    raw = getattr(hint.device, "value", hint.device)
    device = _DEVICES.get(str(raw).lower(), str(raw))
    return TensorHint(
        transport=transport,
        device=device,
        static_shape=bool(getattr(hint, "_static_shape", False)),
        direct_return=bool(getattr(hint, "_direct_return", False)),
        written=f"{written}: {type(hint).__name__}(transport={transport!r}, device={device!r})",
        communicator=hint.get_custom_communicator() if isinstance(hint, TorchTensorType) else None,
    )


def _has_nested_nodes(dag_node: DAGNode) -> bool:
    """Whether a DAG node hides inside an argument (Ray records every one it finds)."""
    top = [
        *dag_node.get_args(),
        *dag_node.get_kwargs().values(),
        *dag_node.get_other_args_to_resolve().values(),
    ]
    top_ids = {id(a) for a in top if isinstance(a, DAGNode)}
    return any(id(u) not in top_ids for u in dag_node._upstream_nodes)


def _nested_positions(dag_node: DAGNode) -> list[tuple[str, str, list[str]]]:
    """(position, container type, the hidden nodes as the user wrote them) of each argument
    hiding DAG nodes: the error path only, as finding them means pickling the argument."""
    found = []
    named = [(f"argument {i}", a) for i, a in enumerate(dag_node.get_args())]
    named += [(f"keyword argument {k!r}", v) for k, v in dag_node.get_kwargs().items()]
    for position, value in named:
        if isinstance(value, DAGNode):
            continue
        scanner: _PyObjScanner[Any, Any] = _PyObjScanner()
        try:
            hidden = scanner.find_nodes(value)
        finally:
            scanner.clear()
        if hidden:
            found.append((position, type(value).__name__, [_written(n) for n in hidden]))
    return found


def _written(dag_node: DAGNode) -> str:
    """A DAG node as the user wrote it: ``Echo.produce``, ``InputNode``, ``inp[0]``."""
    if isinstance(dag_node, ClassMethodNode):
        if dag_node.is_class_method_output and dag_node.class_method_call is not None:
            return f"output {dag_node.output_idx} of {_written(dag_node.class_method_call)}"
        handle = dag_node._get_actor_handle()
        if handle is not None:
            cls = handle._ray_actor_creation_function_descriptor.class_name
        else:
            cls = getattr(dag_node._parent_class_node, "_body", type(dag_node)).__name__
        return f"{cls}.{dag_node.get_method_name()}"
    if isinstance(dag_node, InputAttributeNode):
        key = dag_node.key
        return f"inp[{key!r}]" if isinstance(key, int) else f"inp.{key}"
    if isinstance(dag_node, FunctionNode):
        return getattr(dag_node._body, "__qualname__", repr(dag_node._body))
    return type(dag_node).__name__


def _identifier(text: str) -> str:
    return re.sub(r"\W+", "_", text).strip("_") or "node"
