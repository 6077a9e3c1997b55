"""``graph.stats()``, on the caller: every actor's recorders (one Ray call each, only
when asked) and the caller's own counts, as one dict."""

from __future__ import annotations

from typing import Any

import ray
from ray.actor import ActorHandle

from raycg.proto import Plan, Transport

from ._actor import executor_stats

STATS_TIMEOUT_S = 10.0


def collect(plan: Plan, actors: dict[str, ActorHandle], caller: dict[str, Any]) -> dict[str, Any]:
    """The stats of the graph ``plan`` set up on ``actors``; ``caller``: the caller's counts."""
    labels = {c.channel_id: c.label or c.channel_id for c in plan.channels}
    transports = {c.channel_id: c.transport for c in plan.channels}
    out: dict[str, Any] = {"graph_id": plan.graph_id, "tasks": {}, "channels": {}}
    refs: list[tuple[Any, Any]] = [
        (ap, actors[ap.actor_id].__ray_call__.remote(executor_stats, plan.graph_id)) for ap in plan.actors
    ]
    for ap, ref in refs:
        try:
            got: dict[str, Any] = ray.get(ref, timeout=STATS_TIMEOUT_S)
        except Exception as e:  # a dead actor: say so, keep the rest
            out["tasks"][ap.actor_label] = {"error": f"{type(e).__name__}: {e}"}
            continue
        for name, rec in got["tasks"].items():
            out["tasks"][f"{ap.actor_label}.{name}"] = rec
        for cid, rec in got["reads"].items():
            entry = {"transport": str(Transport.Name(transports[cid])).lower(), "read_wait": rec}
            out["channels"][f"{labels[cid]} (read by {ap.actor_label})"] = entry
    out["caller"] = caller
    return out
