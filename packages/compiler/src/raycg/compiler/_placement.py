"""Where each actor runs, and whether it is alive: one call per actor, all in parallel.

Only records what it learns (``Actor.node_id``, ``Actor.gpu_ids``, ``Actor.dead_reason``,
``Graph.driver_node_id``); the ``validate`` pass refuses a dead actor, naming it, after
the checks that need no actor, so that a DAG with a plain mistake in it is refused for
that mistake first. The probe runs nothing that outlives it on the actor.
"""

from __future__ import annotations

from typing import Any

import ray

from .ir import Graph

DEFAULT_LOCATE_TIMEOUT_S = 30.0


def locate_actors(graph: Graph, timeout_s: float = DEFAULT_LOCATE_TIMEOUT_S) -> None:
    """Learn the driver's node and each actor's node and GPUs (the ids Ray assigned it),
    waiting at most ``timeout_s`` in all.

    An actor that is dead, or does not answer in time (busy with a long call, or not yet
    scheduled), gets ``dead_reason`` and no ``node_id``.
    """
    graph.driver_node_id = ray.get_runtime_context().get_node_id()
    if not graph.actors:
        return
    # A lambda travels by value, so the actor need not import raycg.compiler.
    probes = {
        actor_id: actor.handle.__ray_call__.remote(  # type: ignore[attr-defined]
            lambda self: (
                ray.get_runtime_context().get_node_id(),
                [str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])],
            )
        )
        for actor_id, actor in graph.actors.items()
    }
    ready, _ = ray.wait(list(probes.values()), num_returns=len(probes), timeout=timeout_s)
    answered = set(ready)
    for actor_id, ref in probes.items():
        actor = graph.actors[actor_id]
        if ref not in answered:
            actor.dead_reason = f"it did not answer within {timeout_s:g} s (busy, or not yet scheduled)"
            continue
        where, actor.dead_reason = _node_id_or_reason(ref)
        if where is not None:
            actor.node_id, actor.gpu_ids = where


def _node_id_or_reason(ref: Any) -> tuple[tuple[str, list[str]] | None, str | None]:
    try:
        return tuple(ray.get(ref)), None  # type: ignore[return-value]
    except ray.exceptions.RayError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"{type(e).__name__}: {first_line}"
