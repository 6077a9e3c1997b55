"""The DOT drawing: one cluster per actor (inside one per node, on several nodes), one
edge per (channel, reader), one hexagon per collective."""

from __future__ import annotations

from raycg.proto import ActorPlan, ChannelPlan, Plan, TensorTransport, Transport

from .. import _describe
from . import _layout

# Edge style per transport: what crosses processes is drawn solid, what stays in one is
# dashed, what crosses nodes bold red; tensors a communicator carries are purple.
_EDGE_STYLE = {
    Transport.SHM: 'color="#1f5fa8", penwidth=1.6',
    Transport.INPROC: 'color="#2e8b57", style=dashed',
    Transport.GRPC: 'color="#b03030", style=bold',
}
_COMMUNICATOR_COLOR = "#7b3fa0"
_COMMUNICATOR_STYLE = f'color="{_COMMUNICATOR_COLOR}", penwidth=1.6'
_DRIVER_STYLE = 'shape=oval, style=filled, fillcolor="#fff4c2"'
_NODE_STYLE = 'style="dashed,rounded"; color="#707070"; fontcolor="#404040"'
_COLLECTIVE_STYLE = f'shape=hexagon, style=filled, fillcolor="#f1e6f8", color="{_COMMUNICATOR_COLOR}"'


def to_dot(plan: Plan, channel_details: bool = False) -> str:
    """Graphviz DOT source of ``plan``: one cluster per actor, one edge per (channel, reader).

    Each edge is labelled with its transport (and ring size) and, for a tensor hint, where
    the tensors go; ``channel_details`` adds a line with the channel's id, what flows in it
    and how many read it. A plan on several nodes puts each node's actors in a dashed box
    (the driver's says so); each collective is a hexagon joined to its members' tasks.
    Needs neither the ``graphviz`` package nor the ``dot`` binary.
    """
    tasks = _layout.tasks(plan)
    outputs = "driver outputs" if plan.multi_output else "driver output"
    lines = [
        "digraph raycg {",
        f"  graph [rankdir=LR, fontname=Helvetica, label={_q('raycg graph ' + plan.graph_id[:8])}]",
        "  node [shape=box, style=rounded, fontname=Helvetica]",
        "  edge [fontname=Helvetica, fontsize=10]",
    ]
    driver = [
        f"input [label={_q('driver input')}, {_DRIVER_STYLE}]",
        f"output [label={_q(outputs)}, {_DRIVER_STYLE}]",
    ]
    nodes = _layout.nodes(plan)
    if not any(n.has_driver for n in nodes):
        lines += [f"  {line}" for line in driver]
    if not nodes:
        for i, actor in enumerate(plan.actors):
            lines += _dot_cluster(i, actor, [t for t in tasks if t.actor_index == i], "  ")
    for j, node in enumerate(nodes):
        lines += [f"  subgraph cluster_node_{j} {{", f"    label={_q(node.title)}", f"    {_NODE_STYLE}"]
        lines += [f"    {line}" for line in driver] if node.has_driver else []
        for i in node.actors:
            lines += _dot_cluster(i, plan.actors[i], [t for t in tasks if t.actor_index == i], "    ")
        lines.append("  }")
    collectives = _layout.collectives(tasks)
    for k, (cid, members) in enumerate(collectives.items()):
        coll = members[0].plan.collective
        title = _q(f"{cid}: {_describe.collective_op(coll)}", f"via {_describe.communicator(coll)}")
        lines.append(f"  coll_{k} [label={title}, {_COLLECTIVE_STYLE}]")
    for channel in plan.channels:
        style = _edge_style(channel)
        for src in _layout.writers(channel, tasks):
            for dst in _layout.readers(plan, channel, tasks):
                parts = _layout.edge_label(channel, dst, with_size=True)
                if channel_details:
                    parts.insert(len(parts) - (dst.output_index is not None), _layout.channel_detail(channel))
                label = _q(*parts)
                lines.append(f"  {src.node_id} -> {dst.node_id} [label={label}, {style}]")
    for k, members in enumerate(collectives.values()):
        for t in members:
            rank = _q(f"rank {t.plan.collective.rank}")
            lines.append(f"  {t.end.node_id} -> coll_{k} [label={rank}, dir=none, {_COMMUNICATOR_STYLE}]")
    return "\n".join([*lines, "}", ""])


def _dot_cluster(index: int, actor: ActorPlan, tasks: list[_layout.Task], indent: str) -> list[str]:
    head = [
        f"{indent}subgraph cluster_{index} {{",
        f"{indent}  label={_q(actor.actor_label or actor.actor_id, *filter(None, [_layout.gpus(actor)]))}",
        f'{indent}  style="rounded,filled"; fillcolor="#eef3f8"; color="#8aa4c0"',
    ]
    style = 'style="rounded,filled", fillcolor=white'
    body = [f"{indent}  {t.end.node_id} [label={_q(_layout.task_title(t))}, {style}]" for t in tasks]
    return [*head, *body, f"{indent}}}"]


def _edge_style(channel: ChannelPlan) -> str:
    carried = (TensorTransport.TENSOR_ACCELERATOR, TensorTransport.TENSOR_COMMUNICATOR)
    carried_here = channel.HasField("tensor") and channel.tensor.transport in carried
    if carried_here and channel.transport != Transport.INPROC:
        return _COMMUNICATOR_STYLE
    return _EDGE_STYLE.get(channel.transport, "style=dotted")


def _q(*lines: str) -> str:
    """A DOT quoted string of ``lines``, one per line of the label."""
    escaped = (s.replace("\\", "\\\\").replace('"', '\\"') for s in lines)
    return '"' + "\\n".join(escaped) + '"'
