"""assign_transports: INPROC on one actor, SHM on one node, GRPC across nodes."""

from __future__ import annotations

from typing import Any

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


def test_an_edge_across_nodes_is_grpc() -> None:
    graph = _two_node_graph("node-1", "node-2", "node-1")
    assign_transports(graph)
    graph.lint()
    inp, a, b, _ = graph.nodes
    assert (_transports(inp), _transports(a), _transports(b)) == (
        {"a": Transport.SHM},
        {"b": Transport.GRPC},
        {"out": Transport.GRPC},  # b runs on node-2, the driver on node-1
    )


def test_driver_on_another_node_reaches_both_actors_by_grpc() -> None:
    graph = _two_node_graph("node-2", "node-2", "node-1")
    assign_transports(graph)
    inp, a, b, _ = graph.nodes
    assert (_transports(inp), _transports(a), _transports(b)) == (
        {"a": Transport.GRPC},
        {"b": Transport.SHM},
        {"out": Transport.GRPC},
    )


def test_one_node_hand_built() -> None:
    graph = _two_node_graph("node-1", "node-1", "node-1")
    assign_transports(graph)
    graph.lint()
    assert _transports(graph.nodes[1]) == {"b": Transport.SHM}
