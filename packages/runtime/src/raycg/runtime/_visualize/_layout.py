"""A Plan read as a drawing's parts, the same for both drawings (DOT and ASCII).

A channel goes from the task that writes it (or the driver's input) to every task that
reads it (a reading actor's tasks that list it in ``TaskPlan.inputs``) and to the
driver's outputs that read it; a plan on several Ray nodes groups its actors by node; a
collective's members are its parts' tasks, one per actor.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from raycg.proto import ActorPlan, ChannelPlan, CollectiveKind, Plan, TaskPlan, Transport

from .. import _describe


@dataclass(frozen=True)
class End:
    """One end of an edge: a DOT node and the name the ASCII drawing gives it."""

    node_id: str
    name: str
    output_index: int | None = None
    has_gpu: bool = False  # where tensors land for device="default" (the driver: no GPU)


@dataclass(frozen=True)
class Task:
    actor_index: int
    actor: ActorPlan
    position: int  # 1-based place in the actor's schedule
    plan: TaskPlan
    end: End


@dataclass(frozen=True)
class Node:
    """A Ray node of a plan that spans several: its actors, and whether the driver is there."""

    node_id: str
    title: str  # "node 1a2b3c4d (driver)"
    actors: list[int]  # indices into plan.actors
    has_driver: bool


INPUT = End("input", "input")  # the driver, writing the execution's arguments


def tasks(plan: Plan) -> list[Task]:
    """Every task with its DOT node and a name unique in the plan ("A.echo", or "A.echo#2")."""
    tasks = [
        Task(i, actor, pos, task, End(f"a{i}_t{pos}", task_name(actor, task), has_gpu=bool(actor.gpu_ids)))
        for i, actor in enumerate(plan.actors)
        for pos, task in enumerate(actor.tasks, start=1)
    ]
    counts = Counter(t.end.name for t in tasks)
    return [
        t if counts[t.end.name] == 1 else replace(t, end=replace(t.end, name=f"{t.end.name}#{t.position}"))
        for t in tasks
    ]


def task_name(actor: ActorPlan, task: TaskPlan) -> str:
    """``A.echo``; a collective's part is named by its kind: ``A.allreduce``."""
    if task.HasField("collective") and not task.method and task.collective.kind:
        method = CollectiveKind.Name(task.collective.kind).lower()
    else:
        method = task.method or task.display_name
    return f"{actor.actor_label or actor.actor_id}.{method}"


def task_title(task: Task) -> str:
    returns = f" ({task.plan.num_returns} returns)" if task.plan.num_returns > 1 else ""
    return f"{task.position}. {task.plan.display_name or task.plan.method}{returns}"


def actor_title(actor: ActorPlan) -> str:
    """``Echo(c398ee)``, with the GPUs Ray gave it: ``Echo(c398ee) [GPU 0]``."""
    on = gpus(actor)
    return f"{actor.actor_label or actor.actor_id}" + (f" [{on}]" if on else "")


def gpus(actor: ActorPlan) -> str:
    """``"GPU 0"``, ``"GPUs 0, 1"``, or ``""`` for an actor without one."""
    if not actor.gpu_ids:
        return ""
    return f"{'GPU' if len(actor.gpu_ids) == 1 else 'GPUs'} {', '.join(actor.gpu_ids)}"


def nodes(plan: Plan) -> list[Node]:
    """The plan's Ray nodes, the driver's first, or ``[]`` when it runs on one node.

    An actor whose node is not recorded is on "node unknown"; a driver whose node is not
    recorded is drawn outside every node's box.
    """
    driver = [plan.driver_node_id] if plan.driver_node_id else []
    order = list(dict.fromkeys(driver + [a.node_id for a in plan.actors]))
    if len(order) < 2:
        return []
    names = short_ids([n for n in order if n])
    nodes = []
    for node_id in order:
        title = f"node {names[node_id]}" if node_id else "node unknown"
        has_driver = bool(node_id) and node_id == plan.driver_node_id
        actors = [i for i, a in enumerate(plan.actors) if a.node_id == node_id]
        nodes.append(Node(node_id, title + (" (driver)" if has_driver else ""), actors, has_driver))
    return nodes


def short_ids(ids: list[str], length: int = 8) -> dict[str, str]:
    """Each id's shortest prefix of at least ``length`` characters that no other id shares."""
    while len({i[:length] for i in ids}) < len(set(ids)):
        length += 4
    return {i: i[:length] for i in ids}


def collectives(tasks: list[Task]) -> dict[str, list[Task]]:
    """Each collective's members' tasks, in rank order, by collective id (first seen first)."""
    found: dict[str, list[Task]] = {}
    for t in tasks:
        if t.plan.HasField("collective"):
            found.setdefault(t.plan.collective.collective_id, []).append(t)
    return {cid: sorted(members, key=lambda t: t.plan.collective.rank) for cid, members in found.items()}


def writers(channel: ChannelPlan, tasks: list[Task]) -> list[End]:
    if channel.writer.WhichOneof("kind") == "driver":
        return [INPUT]
    return [
        t.end
        for t in tasks
        if t.actor.actor_id == channel.writer.actor_id and channel.channel_id in t.plan.outputs
    ]


def readers(plan: Plan, channel: ChannelPlan, tasks: list[Task]) -> list[End]:
    ends: list[End] = []
    for reader in channel.readers:
        if reader.WhichOneof("kind") == "driver":
            ends += [
                End("output", f"driver[{i}]", i)
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


def edge_label(channel: ChannelPlan, dst: End | None, with_size: bool) -> list[str]:
    """``["shm x10 1MB", "nccl -> cuda", "[0]"]``: the transport, its slots (and their
    size), what the tensors do on the edge to ``dst`` (if it has a tensor hint and a
    reader), the output index."""
    label = _describe.channel_transport(channel)
    if channel.transport != Transport.INPROC:  # in-process hands over the object itself
        label += f" x{channel.num_slots}" + (f" {size(channel.slot_size_bytes)}" if with_size else "")
    parts = [label]
    if dst is not None:
        parts += [", ".join(words)] if (words := _describe.tensor_words(channel, dst.has_gpu)) else []
        parts += [f"[{dst.output_index}]"] if dst.output_index is not None else []
    return parts


def channel_detail(channel: ChannelPlan) -> str:
    """``"ch1: a.echo -> b.echo, 2 readers"``: which channel, what flows, who reads it."""
    what = f": {channel.label}" if channel.label not in ("", channel.channel_id) else ""
    return f"{channel.channel_id}{what}, {count(len(channel.readers), 'reader')}"


def size(size_bytes: int) -> str:
    """Decimal units, as buffer_size_bytes is given: 1_000_000 is "1MB", 4096 "4.1KB"."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size_bytes >= scale:
            return f"{round(size_bytes / scale, 2):g}{unit}"
    return f"{size_bytes}B"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
