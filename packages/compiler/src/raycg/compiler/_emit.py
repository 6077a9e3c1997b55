"""IR (after the passes) -> ``raycg.proto.Plan``, the compiler's only output.

Channels: per value (the input, which the driver writes as ``(args, kwargs)``, and each
task's result) one channel per transport its edges need: SHM, read by each other
participant on the writer's Ray node that consumes it (the driver too, for a graph
output); GRPC, read by each participant on another node; INPROC, read by the task's own
actor. The Plan records the driver's node and each actor's (``ActorPlan.node_id``), so
that the runtime can group a GRPC channel's readers by node. A reader is a participant,
not a task: an actor reads a channel once per execution, at its first task that needs
it, and shares the value among its tasks; ``TaskPlan.inputs`` lists what each task needs.
"""

from __future__ import annotations

import uuid

import ray

from raycg.proto import (
    ActorPlan,
    ArgPlan,
    ChannelPlan,
    CollectiveKind,
    CollectivePlan,
    Device,
    KwArgPlan,
    OutputPlan,
    Participant,
    Plan,
    Projection,
    TaskPlan,
    TensorHint,
    TensorTransport,
    Transport,
)

from . import ir
from .ir import Graph, Node

_CHANNEL_KINDS = (Transport.SHM, Transport.GRPC, Transport.INPROC)
_TENSOR_KINDS = (
    TensorTransport.TENSOR_TRANSPORT_UNSPECIFIED,
    TensorTransport.TENSOR_SHM,
    TensorTransport.TENSOR_ACCELERATOR,
    TensorTransport.TENSOR_COMMUNICATOR,
)
_DEVICES = {"default": Device.DEVICE_DEFAULT, "cpu": Device.DEVICE_CPU, "gpu": Device.DEVICE_GPU}
Kind = tuple["Transport.ValueType", "TensorTransport.ValueType"]  # what one channel carries


def emit_plan(graph: Graph) -> Plan:
    """Build the Plan of a graph the passes have run on.

    Raises:
        ValueError: a constant argument cannot be pickled, naming its task.
    """
    return _Emitter(graph).emit()


class _Emitter:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.plan = Plan(
            graph_id=uuid.uuid4().hex,
            multi_output=bool(graph.output_node.meta["multi_output"]),
            driver_node_id=graph.driver_node_id or "",
        )
        self.plan.options.CopyFrom(graph.options)
        self.channel_ids: dict[tuple[Node, Kind], str] = {}
        self.channels_of: dict[Node, list[str]] = {}  # in plan order

    def emit(self) -> Plan:
        for node in self.graph.nodes:
            if node.op != "output":
                self._add_channels(node)
        (inp,) = self.graph.nodes_of("input")
        inputs = self.channels_of[inp]
        self.plan.input_channel_ids.extend(inputs)
        self.plan.input_channel_id = inputs[0]
        for actor_id, tasks in self.graph.meta["schedule"].items():
            self.plan.actors.append(self._actor_plan(actor_id, tasks))
        self.plan.outputs.extend(self._output_plan(ref) for ref in self.graph.output_node.refs())
        for cid, use in self.graph.meta.get("communicators", {}).items():
            self.plan.communicators.add(communicator_id=cid, members=use.members, written=use.written)
        return self.plan

    def _add_channels(self, node: Node) -> None:
        """One channel per (transport, tensor transport) that the node's edges need."""
        for kind in ((t, tt) for t in _CHANNEL_KINDS for tt in _TENSOR_KINDS):
            users = [u for u in node.users if _kind(node, u) == kind]
            if not users:
                continue
            channel_id = f"ch{len(self.plan.channels)}"
            self.channel_ids[(node, kind)] = channel_id
            self.channels_of.setdefault(node, []).append(channel_id)
            readers = list(dict.fromkeys(_participant_key(u) for u in users))  # distinct, first use first
            channel = ChannelPlan(
                channel_id=channel_id,
                transport=kind[0],
                writer=_participant(_participant_key(node)),
                readers=[_participant(r) for r in readers],
                num_slots=node.meta["slots"][kind[0]],
                slot_size_bytes=node.meta["slot_size_bytes"],
                label=f"{_label(node)} -> {', '.join(dict.fromkeys(_label(u) for u in users))}",
            )
            hint: ir.TensorHint | None = node.meta.get("tensor_hint")
            if hint is not None:
                channel.tensor.CopyFrom(_tensor_hint(hint, kind[1]))
                if kind[1] == TensorTransport.TENSOR_COMMUNICATOR:
                    channel.tensor.communicator_id = node.meta["communicator_id"]
            self.plan.channels.append(channel)

    def _channel_of(self, src: Node, dst: Node) -> str:
        return self.channel_ids[(src, _kind(src, dst))]

    def _actor_plan(self, actor_id: str, tasks: list[Node]) -> ActorPlan:
        actor = self.graph.actors[actor_id]
        return ActorPlan(
            actor_id=actor_id,
            actor_label=actor.label,
            node_id=actor.node_id or "",
            tasks=[self._task_plan(node) for node in tasks],
            gpu_ids=actor.gpu_ids,
        )

    def _task_plan(self, node: Node) -> TaskPlan:
        task = TaskPlan(
            task_id=node.meta["order"],
            method=node.method or "",
            display_name=node.display_name,
            num_returns=node.num_returns,
        )
        task.args.extend(self._arg_plan(node, task, a, f"argument {i}") for i, a in enumerate(node.args))
        for name, arg in node.kwargs.items():
            value = self._arg_plan(node, task, arg, f"keyword argument {name!r}")
            task.kwargs.append(KwArgPlan(name=name, value=value))
        task.outputs.extend(self.channels_of.get(node, []))
        task.prefetch.extend(self._channel_of(w, c) for w, c in node.meta.get("prefetch", ()))
        collective: ir.Collective | None = node.meta.get("collective")
        if collective is not None:
            task.method = ""
            task.collective.CopyFrom(_collective_plan(collective, node))
        return task

    def _arg_plan(self, node: Node, task: TaskPlan, arg: ir.Arg, position: str) -> ArgPlan:
        if isinstance(arg, ir.Const):
            return ArgPlan(constant=_pickle(arg.value, node, position))
        channel_id = self._channel_of(arg.node, node)
        if channel_id not in task.inputs:
            task.inputs.append(channel_id)
        return ArgPlan(
            input_slot=list(task.inputs).index(channel_id),
            projections=[_projection(p) for p in arg.projections],
        )

    def _output_plan(self, ref: ir.Ref) -> OutputPlan:
        return OutputPlan(
            channel_id=self._channel_of(ref.node, self.graph.output_node),
            projections=[_projection(p) for p in ref.projections],
            display_name=ref.node.display_name,
        )


def _kind(src: Node, dst: Node) -> Kind:
    tensor = src.meta.get("tensor_to", {}).get(dst, TensorTransport.TENSOR_TRANSPORT_UNSPECIFIED)
    return src.meta["transport_to"][dst], tensor


def _tensor_hint(hint: ir.TensorHint, transport: TensorTransport.ValueType) -> TensorHint:
    return TensorHint(
        transport=transport,
        device=_DEVICES[hint.device],
        static_shape=hint.static_shape,
        direct_return=hint.direct_return,
        written=hint.written,
    )


def _collective_plan(collective: ir.Collective, node: Node) -> CollectivePlan:
    assert node.actor is not None
    return CollectivePlan(
        collective_id=collective.name,
        kind=CollectiveKind.Value(collective.kind.upper()),
        reduce_op=collective.reduce_op,
        members=collective.actor_ids,
        rank=collective.actor_ids.index(node.actor.actor_id),
        src_rank=collective.src_rank,
        transport=collective.transport,
        communicator_id=collective.communicator_id,
    )


def _participant_key(node: Node) -> str | None:
    """The actor id of who runs ``node``; None for the driver (the input and the output)."""
    return node.actor.actor_id if node.actor is not None else None


def _participant(key: str | None) -> Participant:
    return Participant(driver=True) if key is None else Participant(actor_id=key)


def _label(node: Node) -> str:
    return {"input": "input", "output": "driver"}.get(node.op, node.target)


def _projection(p: ir.Projection) -> Projection:
    if isinstance(p, ir.Index):
        return Projection(index=p.i)
    if isinstance(p, ir.Key):
        return Projection(key=p.key)
    return Projection(first_arg=True)


def _pickle(value: object, node: Node, position: str) -> bytes:
    try:
        return ray.cloudpickle.dumps(value)
    except Exception as e:
        raise ValueError(
            f"{node.display_name}: {position} ({type(value).__name__}) cannot be pickled: {e}; "
            "pass a picklable constant"
        ) from e
