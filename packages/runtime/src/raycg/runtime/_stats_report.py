"""``graph.stats()``, on the caller: every actor's recorders (one Ray call each, only
when asked) and the caller's own counts, as one dict."""

from __future__ import annotations

from typing import Any

import ray
from ray.actor import ActorHandle

from raycg.proto import Plan

from . import _describe
from ._actor import executor_stats

STATS_TIMEOUT_S = 10.0


def collect(plan: Plan, actors: dict[str, ActorHandle], caller: dict[str, Any]) -> dict[str, Any]:
    """The stats of the graph ``plan`` set up on ``actors``; ``caller``: the caller's counts."""
    refs: list[tuple[str, Any]] = [
        (ap.actor_id, actors[ap.actor_id].__ray_call__.remote(executor_stats, plan.graph_id))
        for ap in plan.actors
    ]
    got: dict[str, dict[str, Any] | Exception] = {}
    for actor_id, ref in refs:
        try:
            answer: dict[str, Any] = ray.get(ref, timeout=STATS_TIMEOUT_S)
            got[actor_id] = answer
        except Exception as e:  # a dead actor: say so, keep the rest
            got[actor_id] = e
    return report(plan, got, caller)


def report(plan: Plan, got: dict[str, dict[str, Any] | Exception], caller: dict[str, Any]) -> dict[str, Any]:
    """One dict from what each actor's ``executor_stats`` returned (or why it did not).

    ``tasks`` by ``Actor.position:display name``; ``channels`` by what flows and who reads
    it, each with its transport as ``visualize`` names it (``"grpc"``, ``"shm, nccl ->
    cuda"``) and how long the reader waited; ``collectives`` (where the plan has any) by
    id, with the op, the communicator and, per member actor in rank order, the time its
    part took, where its executor recorded it (a collective's part is one of its tasks).
    """
    channels = {c.channel_id: c for c in plan.channels}
    out: dict[str, Any] = {"graph_id": plan.graph_id, "tasks": {}, "channels": {}}
    collectives: dict[str, Any] = {}
    for ap in plan.actors:
        stats = got.get(ap.actor_id, {"tasks": {}, "reads": {}})
        if isinstance(stats, Exception):
            out["tasks"][ap.actor_label] = {"error": f"{type(stats).__name__}: {stats}"}
            stats = {"tasks": {}, "reads": {}}
        for name, rec in stats["tasks"].items():
            out["tasks"][f"{ap.actor_label}.{name}"] = rec
        for cid, rec in stats["reads"].items():
            channel = channels[cid]
            transport = _describe.transport_name(channel, reader_has_gpu=bool(ap.gpu_ids))
            out["channels"][f"{channel.label or cid} (read by {ap.actor_label})"] = {
                "transport": transport,
                "read_wait": rec,
            }
        for pos, task in enumerate(ap.tasks, start=1):
            if not task.HasField("collective"):
                continue
            coll = task.collective
            entry = collectives.setdefault(
                coll.collective_id,
                {
                    "op": _describe.collective_op(coll),
                    "communicator": _describe.communicator(coll),
                    "members": {},
                },
            )
            rec = stats["tasks"].get(f"{pos}:{task.display_name}")
            if rec is not None:
                entry["members"][(coll.rank, ap.actor_label)] = rec
    for entry in collectives.values():  # rank order, whichever actor answered first
        entry["members"] = {label: rec for (_, label), rec in sorted(entry["members"].items())}
    if collectives:
        out["collectives"] = collectives
    out["caller"] = caller
    return out
