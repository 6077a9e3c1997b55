"""Pictures of a Plan: actors, their tasks in schedule order, and the channels between them.

Pure functions of a ``raycg.proto.Plan``: no Ray, no actors, and no Graphviz except to
render an image. Both drawings come from one list of edges: a channel goes from the task
that writes it (or the driver's input) to every task that reads it (a reading actor's
tasks that list it in ``TaskPlan.inputs``) and to the driver's outputs that read it. Each
edge says its transport and, where the value carries tensors, what they do
(``_describe``); a plan on several Ray nodes groups its actors by node; a collective is
one more node, joined to its members' tasks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import webbrowser
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from raycg.proto import ActorPlan, ChannelPlan, CollectiveKind, Plan, TaskPlan, TensorTransport, Transport

from . import _describe

TEXT_FORMATS = ("ascii", "dot")
# What Graphviz renders that a viewer opens; Ray passes any of graphviz.FORMATS through.
IMAGE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "gif")

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


@dataclass(frozen=True)
class _End:
    """One end of an edge: a DOT node and the name the ASCII drawing gives it."""

    node_id: str
    name: str
    output_index: int | None = None
    has_gpu: bool = False  # where tensors land for device="default" (the driver: no GPU)


@dataclass(frozen=True)
class _Task:
    actor_index: int
    actor: ActorPlan
    position: int  # 1-based place in the actor's schedule
    plan: TaskPlan
    end: _End


@dataclass(frozen=True)
class _Node:
    """A Ray node of a plan that spans several: its actors, and whether the driver is there."""

    node_id: str
    title: str  # "node 1a2b3c4d (driver)"
    actors: list[int]  # indices into plan.actors
    has_driver: bool


_INPUT = _End("input", "input")


def to_dot(plan: Plan, channel_details: bool = False) -> str:
    """Graphviz DOT source of ``plan``: one cluster per actor, one edge per (channel, reader).

    Each edge is labelled with its transport (and ring size) and, for a tensor hint, where
    the tensors go; ``channel_details`` adds a line with the channel's id, what flows in it
    and how many read it. A plan on several nodes puts each node's actors in a dashed box
    (the driver's says so); each collective is a hexagon joined to its members' tasks.
    Needs neither the ``graphviz`` package nor the ``dot`` binary.
    """
    tasks = _tasks(plan)
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
    nodes = _nodes(plan)
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
    collectives = _collectives(tasks)
    for k, (cid, members) in enumerate(collectives.items()):
        coll = members[0].plan.collective
        title = _q(f"{cid}: {_describe.collective_op(coll)}", f"via {_describe.communicator(coll)}")
        lines.append(f"  coll_{k} [label={title}, {_COLLECTIVE_STYLE}]")
    for channel in plan.channels:
        style = _edge_style(channel)
        for src in _writers(channel, tasks):
            for dst in _readers(plan, channel, tasks):
                parts = _edge_label(channel, dst, with_size=True)
                if channel_details:
                    parts.insert(len(parts) - (dst.output_index is not None), _channel_detail(channel))
                label = _q(*parts)
                lines.append(f"  {src.node_id} -> {dst.node_id} [label={label}, {style}]")
    for k, members in enumerate(collectives.values()):
        for t in members:
            rank = _q(f"rank {t.plan.collective.rank}")
            lines.append(f"  {t.end.node_id} -> coll_{k} [label={rank}, dir=none, {_COMMUNICATOR_STYLE}]")
    return "\n".join([*lines, "}", ""])


def to_ascii(plan: Plan) -> str:
    """A text drawing of ``plan`` for a terminal: each actor's schedule (by node, where the
    plan spans several), one line per channel, then one per collective.

    A channel line reads ``writer --transport--> reader, reader``, e.g.
    ``input --shm x10--> A.echo`` or ``B.echo --grpc x10--> driver[0]``, followed by what
    its tensors do where it has a tensor hint: ``  (nccl -> cuda, static shape)``.
    """
    tasks = _tasks(plan)
    nodes = _nodes(plan)
    collectives = _collectives(tasks)
    actors = _count(len(plan.actors), "actor") + (f" on {len(nodes)} nodes" if nodes else "")
    sizes = [actors, _count(len(plan.channels), "channel")]
    sizes += [_count(len(collectives), "collective")] if collectives else []
    sizes.append(_count(len(plan.outputs), "output"))
    lines = [f"raycg graph {plan.graph_id[:8]}: {', '.join(sizes)}", "actors"]
    groups = [("", list(range(len(plan.actors))))] if not nodes else [(n.title, n.actors) for n in nodes]
    indent = "  " if nodes else ""
    for title, indices in groups:
        lines += [f"  {title}"] if title else []
        for i in indices:
            lines.append(f"{indent}  {_actor_title(plan.actors[i])}")
            lines += [f"{indent}    {_task_title(t)}" for t in tasks if t.actor_index == i]
    lines.append("channels")
    for channel in plan.channels:
        ends = _readers(plan, channel, tasks)
        readers = ", ".join(e.name for e in ends) or "?"
        label, tensors = _edge_label(channel, None, with_size=False)[0], _ascii_tensors(channel, ends)
        for src in _writers(channel, tasks) or [_End("?", "?")]:
            lines.append(f"  {src.name} --{label}--> {readers}{tensors}")
    if collectives:
        lines.append("collectives")
    for cid, members in collectives.items():
        coll = members[0].plan.collective
        ranks = ", ".join(t.end.name for t in members)
        lines.append(
            f"  {cid}: {_describe.collective_op(coll)} via {_describe.communicator(coll)}, ranks {ranks}"
        )
    return "\n".join([*lines, ""])


def visualize(
    plan: Plan,
    filename: str | os.PathLike[str] = "compiled_graph",
    format: str = "png",
    view: bool = False,
    channel_details: bool = False,
) -> str:
    """Draw ``plan`` as Ray's ``CompiledDAG.visualize`` does, and return the drawing.

    ``format="ascii"`` writes nothing and returns the text drawing (printed too with
    ``view``). Any other format returns the DOT source, saved to ``filename``, with the
    rendered drawing in ``filename + "." + format``: ``"dot"`` is the source itself (no
    Graphviz needed), an image format is rendered by Graphviz's ``dot`` binary, and
    ``view`` opens it in the system's viewer. These are Ray's files and return values.

    Args:
        plan: the compiled graph's Plan.
        filename: the path to write, without the extension (ignored for "ascii").
        format: "ascii", "dot", or an image format: "png", "svg", "pdf", "jpg", "gif".
        view: for "ascii", print the drawing; else open the written file.
        channel_details: add each channel's id, what flows in it and its readers to the
            edge labels (not with "ascii", as in Ray).

    Raises:
        ValueError: ``format`` is not one of the above, or ``channel_details`` with "ascii".
        RuntimeError: an image format was asked for and ``dot`` is missing or failed.
    """
    if format not in TEXT_FORMATS + IMAGE_FORMATS:
        allowed = ", ".join(repr(f) for f in TEXT_FORMATS + IMAGE_FORMATS)
        raise ValueError(f"visualize: unknown format {format!r}; use one of {allowed}")
    if format == "ascii":
        if channel_details:
            raise ValueError(
                "Parameters 'channel_details' are not compatible with 'ascii' format. "
                "visualize: the ascii drawing already names each channel's transport; use "
                "format='dot' or an image format for channel details"
            )
        text = to_ascii(plan)
        if view:
            print(text, end="")
        return text
    source = to_dot(plan, channel_details=channel_details)
    path = f"{os.fspath(filename)}.{format}"
    if format == "dot":
        Path(path).write_text(source, encoding="utf-8")
    else:
        _render(source, format, path)
    # The source beside the drawing, as graphviz's render() (which Ray calls) leaves it.
    Path(filename).write_text(source, encoding="utf-8")
    if view:
        webbrowser.open(Path(path).resolve().as_uri())
    return source


def _render(source: str, format: str, path: str) -> None:
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError(
            f"visualize: format={format!r} needs Graphviz's `dot` binary, which is not on PATH; "
            "install Graphviz (e.g. `apt-get install graphviz`), or use format='dot' or format='ascii'"
        )
    done = subprocess.run([dot, f"-T{format}", "-o", path], input=source.encode(), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"visualize: `dot -T{format}` failed: {done.stderr.decode(errors='replace')}")


def _tasks(plan: Plan) -> list[_Task]:
    """Every task with its DOT node and a name unique in the plan ("A.echo", or "A.echo#2")."""
    tasks = [
        _Task(i, actor, pos, task, _End(f"a{i}_t{pos}", _task_name(actor, task), has_gpu=bool(actor.gpu_ids)))
        for i, actor in enumerate(plan.actors)
        for pos, task in enumerate(actor.tasks, start=1)
    ]
    counts = Counter(t.end.name for t in tasks)
    return [
        t if counts[t.end.name] == 1 else replace(t, end=replace(t.end, name=f"{t.end.name}#{t.position}"))
        for t in tasks
    ]


def _task_name(actor: ActorPlan, task: TaskPlan) -> str:
    """``A.echo``; a collective's part is named by its kind: ``A.allreduce``."""
    if task.HasField("collective") and not task.method and task.collective.kind:
        method = CollectiveKind.Name(task.collective.kind).lower()
    else:
        method = task.method or task.display_name
    return f"{actor.actor_label or actor.actor_id}.{method}"


def _task_title(task: _Task) -> str:
    returns = f" ({task.plan.num_returns} returns)" if task.plan.num_returns > 1 else ""
    return f"{task.position}. {task.plan.display_name or task.plan.method}{returns}"


def _actor_title(actor: ActorPlan) -> str:
    """``Echo(c398ee)``, with the GPUs Ray gave it: ``Echo(c398ee) [GPU 0]``."""
    gpus = _gpus(actor)
    return f"{actor.actor_label or actor.actor_id}" + (f" [{gpus}]" if gpus else "")


def _gpus(actor: ActorPlan) -> str:
    """``"GPU 0"``, ``"GPUs 0, 1"``, or ``""`` for an actor without one."""
    if not actor.gpu_ids:
        return ""
    return f"{'GPU' if len(actor.gpu_ids) == 1 else 'GPUs'} {', '.join(actor.gpu_ids)}"


def _nodes(plan: Plan) -> list[_Node]:
    """The plan's Ray nodes, the driver's first, or ``[]`` when it runs on one node.

    An actor whose node is not recorded is on "node unknown"; a driver whose node is not
    recorded is drawn outside every node's box.
    """
    driver = [plan.driver_node_id] if plan.driver_node_id else []
    order = list(dict.fromkeys(driver + [a.node_id for a in plan.actors]))
    if len(order) < 2:
        return []
    names = _short_ids([n for n in order if n])
    nodes = []
    for node_id in order:
        title = f"node {names[node_id]}" if node_id else "node unknown"
        has_driver = bool(node_id) and node_id == plan.driver_node_id
        actors = [i for i, a in enumerate(plan.actors) if a.node_id == node_id]
        nodes.append(_Node(node_id, title + (" (driver)" if has_driver else ""), actors, has_driver))
    return nodes


def _short_ids(ids: list[str], length: int = 8) -> dict[str, str]:
    """Each id's shortest prefix of at least ``length`` characters that no other id shares."""
    while len({i[:length] for i in ids}) < len(set(ids)):
        length += 4
    return {i: i[:length] for i in ids}


def _collectives(tasks: list[_Task]) -> dict[str, list[_Task]]:
    """Each collective's members' tasks, in rank order, by collective id (first seen first)."""
    found: dict[str, list[_Task]] = {}
    for t in tasks:
        if t.plan.HasField("collective"):
            found.setdefault(t.plan.collective.collective_id, []).append(t)
    return {cid: sorted(members, key=lambda t: t.plan.collective.rank) for cid, members in found.items()}


def _dot_cluster(index: int, actor: ActorPlan, tasks: list[_Task], indent: str) -> list[str]:
    head = [
        f"{indent}subgraph cluster_{index} {{",
        f"{indent}  label={_q(actor.actor_label or actor.actor_id, *filter(None, [_gpus(actor)]))}",
        f'{indent}  style="rounded,filled"; fillcolor="#eef3f8"; color="#8aa4c0"',
    ]
    body = [
        f'{indent}  {t.end.node_id} [label={_q(_task_title(t))}, style="rounded,filled", fillcolor=white]'
        for t in tasks
    ]
    return [*head, *body, f"{indent}}}"]


def _writers(channel: ChannelPlan, tasks: list[_Task]) -> list[_End]:
    if channel.writer.WhichOneof("kind") == "driver":
        return [_INPUT]
    return [
        t.end
        for t in tasks
        if t.actor.actor_id == channel.writer.actor_id and channel.channel_id in t.plan.outputs
    ]


def _readers(plan: Plan, channel: ChannelPlan, tasks: list[_Task]) -> list[_End]:
    ends: list[_End] = []
    for reader in channel.readers:
        if reader.WhichOneof("kind") == "driver":
            ends += [
                _End("output", f"driver[{i}]", i)
                for i, out in enumerate(plan.outputs)
                if out.channel_id == channel.channel_id
            ]
        else:
            ends += [
                t.end
                for t in tasks
                if t.actor.actor_id == reader.actor_id and channel.channel_id in t.plan.inputs
            ]
    return ends


def _edge_style(channel: ChannelPlan) -> str:
    carried = (TensorTransport.TENSOR_ACCELERATOR, TensorTransport.TENSOR_COMMUNICATOR)
    carried_here = channel.HasField("tensor") and channel.tensor.transport in carried
    if carried_here and channel.transport != Transport.INPROC:
        return _COMMUNICATOR_STYLE
    return _EDGE_STYLE.get(channel.transport, "style=dotted")


def _edge_label(channel: ChannelPlan, dst: _End | None, with_size: bool) -> list[str]:
    """``["shm x10 1MB", "nccl -> cuda", "[0]"]``: the transport, its slots (and their
    size), what the tensors do on the edge to ``dst`` (if it has a tensor hint and a
    reader), the output index."""
    label = _describe.channel_transport(channel)
    if channel.transport != Transport.INPROC:  # in-process hands over the object itself
        label += f" x{channel.num_slots}" + (f" {_size(channel.slot_size_bytes)}" if with_size else "")
    parts = [label]
    if dst is not None:
        parts += [", ".join(words)] if (words := _describe.tensor_words(channel, dst.has_gpu)) else []
        parts += [f"[{dst.output_index}]"] if dst.output_index is not None else []
    return parts


def _ascii_tensors(channel: ChannelPlan, readers: list[_End]) -> str:
    """``"  (tensors -> cpu)"``; per reader where their devices differ: ``"  (B.echo:
    tensors -> cuda; driver[0]: tensors -> cpu)"``; ``""`` without a tensor hint."""
    said = [", ".join(_describe.tensor_words(channel, r.has_gpu)) for r in readers]
    if not any(said):
        return ""
    if len(set(said)) == 1:
        return f"  ({said[0]})"
    return "  (" + "; ".join(f"{r.name}: {words}" for r, words in zip(readers, said, strict=True)) + ")"


def _channel_detail(channel: ChannelPlan) -> str:
    """``"ch1: a.echo -> b.echo, 2 readers"``: which channel, what flows, who reads it."""
    what = f": {channel.label}" if channel.label not in ("", channel.channel_id) else ""
    return f"{channel.channel_id}{what}, {_count(len(channel.readers), 'reader')}"


def _size(size_bytes: int) -> str:
    """Decimal units, as buffer_size_bytes is given: 1_000_000 is "1MB", 4096 "4.1KB"."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size_bytes >= scale:
            return f"{round(size_bytes / scale, 2):g}{unit}"
    return f"{size_bytes}B"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _q(*lines: str) -> str:
    """A DOT quoted string of ``lines``, one per line of the label."""
    escaped = (s.replace("\\", "\\\\").replace('"', '\\"') for s in lines)
    return '"' + "\\n".join(escaped) + '"'
