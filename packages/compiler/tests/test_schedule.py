"""schedule: one global topological order; each actor's tasks in that order."""

from __future__ import annotations

from typing import Any

from compiler_helpers import compile_debug
from ray.dag import InputNode

from raycg.compiler.ir import Graph


def _names(graph: Graph, actor: Any) -> list[str]:
    return [n.name for n in graph.meta["schedule"][actor._actor_id.hex()]]


def test_diamond_with_tasks_interleaved_across_actors(actors: list[Any]) -> None:
    a, b, _ = actors
    with InputNode() as inp:
        a1 = a.add.bind(inp)
        b1 = b.add.bind(a1)
        a2 = a.add.bind(b1, a1)  # a's second task waits on b
        dag = b.add.bind(a2, b1)
    graph = compile_debug(dag).graph
    assert [n.name for n in graph.nodes] == [
        "inp",
        "echo0_add",
        "echo1_add",
        "echo0_add_1",
        "echo1_add_1",
        "out",
    ]
    assert [n.meta["order"] for n in graph.nodes] == list(range(6))
    assert _names(graph, a) == ["echo0_add", "echo0_add_1"]
    assert _names(graph, b) == ["echo1_add", "echo1_add_1"]


def test_every_node_after_its_inputs_and_actors_in_first_use_order(actors: list[Any]) -> None:
    a, b, c = actors
    with InputNode() as inp:
        x = c.add.bind(inp[0])
        y = a.add.bind(inp[1])
        dag = b.add.bind(a.add.bind(x, y), c.add.bind(y))
    graph = compile_debug(dag).graph
    for node in graph.nodes:
        assert all(src.meta["order"] < node.meta["order"] for src in node.inputs())
    first_use = [c._actor_id.hex(), a._actor_id.hex(), b._actor_id.hex()]
    assert list(graph.meta["schedule"]) == first_use
