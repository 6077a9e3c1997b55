"""Pictures of a Plan: actors, their tasks in schedule order, and the channels between them.

Pure functions of a ``raycg.proto.Plan``: no Ray, no actors, and no Graphviz except to
render an image. Both drawings come from one list of edges: a channel goes from the task
that writes it (or the driver's input) to every task that reads it (a reading actor's
tasks that list it in ``TaskPlan.inputs``) and to the driver's outputs that read it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import webbrowser
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from raycg.proto import ActorPlan, ChannelPlan, Plan, TaskPlan, Transport

TEXT_FORMATS = ("ascii", "dot")
# What Graphviz renders that a viewer opens; Ray passes any of graphviz.FORMATS through.
IMAGE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "gif")

# Edge style per transport: what crosses processes is drawn solid, what stays in one is dashed.
_EDGE_STYLE = {
    Transport.SHM: 'color="#1f5fa8", penwidth=1.6',
    Transport.INPROC: 'color="#2e8b57", style=dashed',
    Transport.GRPC: 'color="#b03030", style=bold',
}
_DRIVER_STYLE = 'shape=oval, style=filled, fillcolor="#fff4c2"'


@dataclass(frozen=True)
class _End:
    """One end of an edge: a DOT node and the name the ASCII drawing gives it."""

    node_id: str
    name: str
    output_index: int | None = None


@dataclass(frozen=True)
class _Task:
    actor_index: int
    actor: ActorPlan
    position: int  # 1-based place in the actor's schedule
    plan: TaskPlan
    end: _End


_INPUT = _End("input", "input")


def to_dot(plan: Plan, channel_details: bool = False) -> str:
    """Graphviz DOT source of ``plan``: one cluster per actor, one edge per (channel, reader).

    Each edge is labelled with its transport (and ring size); ``channel_details`` adds a
    line with the channel's id, what flows in it and how many read it. Needs neither the
    ``graphviz`` package nor the ``dot`` binary.
    """
    tasks = _tasks(plan)
    outputs = "driver outputs" if plan.multi_output else "driver output"
    lines = [
        "digraph raycg {",
        f"  graph [rankdir=LR, fontname=Helvetica, label={_q('raycg graph ' + plan.graph_id[:8])}]",
        "  node [shape=box, style=rounded, fontname=Helvetica]",
        "  edge [fontname=Helvetica, fontsize=10]",
        f"  input [label={_q('driver input')}, {_DRIVER_STYLE}]",
        f"  output [label={_q(outputs)}, {_DRIVER_STYLE}]",
    ]
    for i, actor in enumerate(plan.actors):
        lines += _dot_cluster(i, actor, [t for t in tasks if t.actor_index == i])
    for channel in plan.channels:
        style = _EDGE_STYLE.get(channel.transport, "style=dotted")
        for src in _writers(channel, tasks):
            for dst in _readers(plan, channel, tasks):
                parts = _edge_label(channel, dst, with_size=True)
                if channel_details:
                    parts.insert(1, _channel_detail(channel))
                label = _q(*parts)
                lines.append(f"  {src.node_id} -> {dst.node_id} [label={label}, {style}]")
    return "\n".join([*lines, "}", ""])


def to_ascii(plan: Plan) -> str:
    """A text drawing of ``plan`` for a terminal: each actor's schedule, then one line per channel.

    A channel line reads ``writer --transport--> reader, reader``, e.g.
    ``input --shm x10--> A.echo`` or ``B.echo --shm x10--> driver[0]``.
    """
    tasks = _tasks(plan)
    sizes = [_count(len(plan.actors), "actor"), _count(len(plan.channels), "channel")]
    sizes.append(_count(len(plan.outputs), "output"))
    lines = [f"raycg graph {plan.graph_id[:8]}: {', '.join(sizes)}", "actors"]
    for i, actor in enumerate(plan.actors):
        lines.append(f"  {actor.actor_label or actor.actor_id}")
        lines += [f"    {_task_title(t)}" for t in tasks if t.actor_index == i]
    lines.append("channels")
    for channel in plan.channels:
        readers = ", ".join(e.name for e in _readers(plan, channel, tasks)) or "?"
        for src in _writers(channel, tasks) or [_End("?", "?")]:
            lines.append(f"  {src.name} --{_edge_label(channel, None, with_size=False)[0]}--> {readers}")
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
        _Task(i, actor, pos, task, _End(f"a{i}_t{pos}", _task_name(actor, task)))
        for i, actor in enumerate(plan.actors)
        for pos, task in enumerate(actor.tasks, start=1)
    ]
    counts = Counter(t.end.name for t in tasks)
    return [
        t if counts[t.end.name] == 1 else replace(t, end=replace(t.end, name=f"{t.end.name}#{t.position}"))
        for t in tasks
    ]


def _task_name(actor: ActorPlan, task: TaskPlan) -> str:
    return f"{actor.actor_label or actor.actor_id}.{task.method or task.display_name}"


def _task_title(task: _Task) -> str:
    returns = f" ({task.plan.num_returns} returns)" if task.plan.num_returns > 1 else ""
    return f"{task.position}. {task.plan.display_name or task.plan.method}{returns}"


def _dot_cluster(index: int, actor: ActorPlan, tasks: list[_Task]) -> list[str]:
    head = [
        f"  subgraph cluster_{index} {{",
        f"    label={_q(actor.actor_label or actor.actor_id)}",
        '    style="rounded,filled"; fillcolor="#eef3f8"; color="#8aa4c0"',
    ]
    body = [
        f'    {t.end.node_id} [label={_q(_task_title(t))}, style="rounded,filled", fillcolor=white]'
        for t in tasks
    ]
    return [*head, *body, "  }"]


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


def _edge_label(channel: ChannelPlan, dst: _End | None, with_size: bool) -> list[str]:
    """``["shm x10 1MB", "[0]"]``: the transport, its slots (and their size), the output index."""
    kind = Transport.Name(channel.transport).lower() if channel.transport in _EDGE_STYLE else "unspecified"
    label = kind
    if channel.transport != Transport.INPROC:  # in-process hands over the object itself
        label += f" x{channel.num_slots}" + (f" {_size(channel.slot_size_bytes)}" if with_size else "")
    return [label] if dst is None or dst.output_index is None else [label, f"[{dst.output_index}]"]


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
