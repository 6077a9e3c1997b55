"""The ASCII drawing: each actor's schedule (by node), one line per channel, one per collective."""

from __future__ import annotations

from raycg.proto import ChannelPlan, Plan

from .. import _describe
from . import _layout


def to_ascii(plan: Plan) -> str:
    """A text drawing of ``plan`` for a terminal: each actor's schedule (by node, where the
    plan spans several), one line per channel, then one per collective.

    A channel line reads ``writer --transport--> reader, reader``, e.g.
    ``input --shm x10--> A.echo`` or ``B.echo --grpc x10--> driver[0]``, followed by what
    its tensors do where it has a tensor hint: ``  (nccl -> cuda, static shape)``.
    """
    tasks = _layout.tasks(plan)
    nodes = _layout.nodes(plan)
    collectives = _layout.collectives(tasks)
    actors = _layout.count(len(plan.actors), "actor") + (f" on {len(nodes)} nodes" if nodes else "")
    sizes = [actors, _layout.count(len(plan.channels), "channel")]
    sizes += [_layout.count(len(collectives), "collective")] if collectives else []
    sizes.append(_layout.count(len(plan.outputs), "output"))
    lines = [f"raycg graph {plan.graph_id[:8]}: {', '.join(sizes)}", "actors"]
    groups = [("", list(range(len(plan.actors))))] if not nodes else [(n.title, n.actors) for n in nodes]
    indent = "  " if nodes else ""
    for title, indices in groups:
        lines += [f"  {title}"] if title else []
        for i in indices:
            lines.append(f"{indent}  {_layout.actor_title(plan.actors[i])}")
            for t in tasks:
                if t.actor_index == i:
                    lines.append(f"{indent}    {_layout.task_title(t)}")
                    lines += [f"{indent}       {line}" for line in _early(plan, t, tasks)]
    lines.append("channels")
    for channel in plan.channels:
        ends = _layout.readers(plan, channel, tasks)
        readers = ", ".join(e.name for e in ends) or "?"
        label, tensors = _layout.edge_label(channel, None, with_size=False)[0], _ascii_tensors(channel, ends)
        for src in _layout.writers(channel, tasks) or [_layout.End("?", "?")]:
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


def _early(plan: Plan, task: _layout.Task, tasks: list[_layout.Task]) -> list[str]:
    """``overlap_gpu_communication``: what the task receives before it computes, for a
    later task of its actor: ``receives B.make's tensors first (overlap)``."""
    channels = {c.channel_id: c for c in plan.channels}
    out = []
    for cid in task.plan.prefetch:
        writers = ", ".join(w.name for w in _layout.writers(channels[cid], tasks)) or "?"
        out.append(f"receives {writers}'s tensors first (overlap)")
    return out


def _ascii_tensors(channel: ChannelPlan, readers: list[_layout.End]) -> str:
    """``"  (tensors -> cpu)"``; per reader where their devices differ: ``"  (B.echo:
    tensors -> cuda; driver[0]: tensors -> cpu)"``; ``""`` without a tensor hint."""
    said = [", ".join(_describe.tensor_words(channel, r.has_gpu)) for r in readers]
    if not any(said):
        return ""
    if len(set(said)) == 1:
        return f"  ({said[0]})"
    return "  (" + "; ".join(f"{r.name}: {words}" for r, words in zip(readers, said, strict=True)) + ")"
