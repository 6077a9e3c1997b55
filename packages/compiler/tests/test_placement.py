"""_placement: each actor's node, the driver's node, dead and silent actors recorded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from compiler_helpers import kill_and_wait
from ray.dag import InputNode

from raycg.compiler._frontend import read_dag
from raycg.compiler._placement import locate_actors


def test_live_actors_on_the_driver_node(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        graph = read_dag(b.echo.bind(a.echo.bind(inp)))
    locate_actors(graph)
    driver = ray.get_runtime_context().get_node_id()
    assert graph.driver_node_id == driver
    assert [(x.node_id, x.dead_reason) for x in graph.actors.values()] == [(driver, None)] * 2
    assert [x.gpu_ids for x in graph.actors.values()] == [[], []]  # CPU actors: Ray assigned no GPU


def test_dead_and_busy_actors_are_recorded(new_actor: Callable[[], Any], actors: list[Any]) -> None:
    dead, busy = new_actor(), new_actor()
    kill_and_wait(dead)
    busy.sleep.remote(120)  # killed by the fixture at the end
    with InputNode() as inp:
        graph = read_dag(busy.echo.bind(dead.echo.bind(actors[0].echo.bind(inp))))
    locate_actors(graph, timeout_s=15.0)  # room for a loaded machine; the busy one stays silent
    live, died, silent = graph.actors.values()
    assert live.dead_reason is None and live.node_id
    assert died.node_id is None and "ActorDiedError" in (died.dead_reason or "")
    assert silent.node_id is None and "did not answer within 15 s" in (silent.dead_reason or "")
