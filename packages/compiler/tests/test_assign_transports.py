"""assign_transports: INPROC on one actor, SHM on one node, cross-node edges refused."""

from __future__ import annotations

from typing import Any

import pytest
from compiler_helpers import compile_debug
from ray.dag import InputNode, MultiOutputNode

from raycg.compiler.ir import Actor, FirstArg, Graph, Node, Ref
from raycg.compiler.passes import assign_transports
from raycg.proto import Transport


def _transports(node: Node) -> dict[str, int]:
    return {user.name: t for user, t in node.meta["transport_to"].items()}


def test_chain_across_actors_is_shm(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp))
    inp_node, first, second, _ = compile_debug(dag).graph.nodes
    assert _transports(inp_node) == {"echo0_echo": Transport.SHM}
    assert _transports(first) == {"echo1_echo": Transport.SHM}
    assert _transports(second) == {"out": Transport.SHM}


def test_same_actor_is_inproc_and_the_driver_still_shm(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        x = a.echo.bind(inp)
        dag = MultiOutputNode([x, a.echo.bind(x), b.echo.bind(x)])
    x_node = compile_debug(dag).graph.nodes[1]
    assert _transports(x_node) == {
        "echo0_echo_1": Transport.INPROC,
        "echo1_echo": Transport.SHM,
        "out": Transport.SHM,
    }


def _two_node_graph(a_node: str, b_node: str, driver_node: str) -> Graph:
    graph = Graph()
    graph.driver_node_id = driver_node
    a = Actor("aa" * 16, "Echo", "echo0", None, node_id=a_node)
    b = Actor("bb" * 16, "Echo", "echo1", None, node_id=b_node)
    inp = graph.add_node(Node("inp", "input", "InputNode"))
    first = graph.add_node(Node("a", "call", "Echo.first", a, "first", args=[Ref(inp, (FirstArg(),))]))
    second = graph.add_node(Node("b", "call", "Echo.second", b, "second", args=[Ref(first)]))
    graph.add_node(Node("out", "output", "output", args=[Ref(second)], meta={"multi_output": False}))
    return graph


def test_cross_node_edge_is_refused_naming_both_ends() -> None:
    graph = _two_node_graph("node-1", "node-2", "node-1")
    with pytest.raises(ValueError, match="cross-node edges are not supported yet") as info:
        assign_transports(graph)
    message = str(info.value)
    assert message.startswith("Echo.first -> Echo.second:")
    assert "actor Echo(aaaaaa) runs on node node-1" in message
    assert "actor Echo(bbbbbb) on node node-2" in message


def test_driver_on_another_node_is_refused() -> None:
    graph = _two_node_graph("node-2", "node-2", "node-1")
    with pytest.raises(ValueError, match="the driver runs on node node-1"):
        assign_transports(graph)


def test_one_node_hand_built() -> None:
    graph = _two_node_graph("node-1", "node-1", "node-1")
    assign_transports(graph)
    graph.lint()
    assert _transports(graph.nodes[1]) == {"b": Transport.SHM}
