"""_frontend: Ray DAG -> IR, for every shape API.md supports (no passes run here)."""

from __future__ import annotations

from typing import Any

import pytest
from compiler_helpers import plain_function
from ray.dag import InputNode, MultiOutputNode
from ray.experimental.collective import allreduce
from ray.experimental.util.types import ReduceOp

from raycg.compiler._frontend import read_dag
from raycg.compiler.ir import Const, FirstArg, Graph, Index, Key, Node, Ref


def _calls(graph: Graph) -> list[Node]:
    return graph.nodes_of("call")


def _ref(arg: object) -> Ref:
    assert isinstance(arg, Ref)
    return arg


def test_chain_reads_input_directly(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp))
    graph = read_dag(dag)
    graph.lint()
    assert [n.op for n in graph.nodes] == ["input", "call", "call", "output"]
    first, second = _calls(graph)
    assert _ref(first.args[0]).projections == (FirstArg(),)
    assert _ref(second.args[0]).node is first and _ref(second.args[0]).projections == ()
    assert first.users == [second] and second.users == [graph.output_node]
    assert (first.display_name, first.target, second.target) == ("Echo.echo", "echo0.echo", "echo1.echo")
    assert graph.output_node.meta["multi_output"] is False
    assert not dag.is_cgraph_output_node  # the user's DAG is read, never marked


def test_input_index_key_and_constants(actors: list[Any]) -> None:
    a = actors[0]
    with InputNode() as inp:
        dag = a.add.bind(inp[0], 5, inp[1], x=inp.x, y=inp["y"], z=7)
    graph = read_dag(dag)
    (call,) = _calls(graph)
    assert [_ref(arg).projections for arg in (call.args[0], call.args[2])] == [(Index(0),), (Index(1),)]
    assert isinstance(call.args[1], Const) and call.args[1].value == 5
    assert _ref(call.kwargs["x"]).projections == (Key("x"),)
    assert _ref(call.kwargs["y"]).projections == (Key("y"),)
    assert isinstance(call.kwargs["z"], Const) and call.kwargs["z"].value == 7
    assert graph.nodes_of("input")[0].users == [call]
    assert graph.nodes_of("input")[0].meta["attribute_keys"] == [0, 1, "x", "y"]


def test_dag_node_as_keyword_argument(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(inp, y=a.echo.bind(inp))
    graph = read_dag(dag)
    first, second = _calls(graph)
    assert _ref(second.kwargs["y"]).node is first
    assert first.users == [second]


def test_multi_output_and_num_returns(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        left, right = a.split.options(num_returns=2).bind(inp)
        dag = MultiOutputNode([b.echo.bind(right), left])
    graph = read_dag(dag)
    graph.lint()
    split, echo = _calls(graph)
    assert split.num_returns == 2 and echo.num_returns == 1
    assert _ref(echo.args[0]).projections == (Index(1),)
    out = graph.output_node
    assert out.meta["multi_output"] is True
    assert [_ref(x).node for x in out.args] == [echo, split]
    assert _ref(out.args[1]).projections == (Index(0),)
    assert split.users == [echo, out]


@pytest.mark.parametrize("shape", ["fan_out", "fan_in", "same_actor", "diamond"])
def test_shapes(actors: list[Any], shape: str) -> None:
    a, b, c = actors
    with InputNode() as inp:
        if shape == "fan_out":
            x = a.echo.bind(inp)
            dag = MultiOutputNode([b.echo.bind(x), c.echo.bind(x)])
        elif shape == "fan_in":
            dag = c.add.bind(a.add.bind(inp), b.add.bind(inp))
        elif shape == "same_actor":
            dag = a.add.bind(a.add.bind(inp), a.add.bind(inp))
        else:
            x = a.add.bind(inp)
            dag = a.add.bind(b.add.bind(x), c.add.bind(x))
    graph = read_dag(dag)
    graph.lint()
    calls = _calls(graph)
    assert len(calls) == 3 if shape != "diamond" else len(calls) == 4
    assert len({n.name for n in graph.nodes}) == len(graph.nodes)
    if shape == "same_actor":
        assert [n.name for n in calls] == ["echo0_add", "echo0_add_1", "echo0_add_2"]
        assert len(graph.actors) == 1


def test_leaf_and_inputless_tasks_are_found_not_dropped(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = a.echo.bind(inp)
        b.echo.bind(inp)  # a leaf: reachable only downstream of the input
    graph = read_dag(dag)
    leaf = _calls(graph)[1]
    assert leaf.target == "echo1.echo" and leaf.users == []


def test_unsupported_nodes_are_marked(ray_local: None, actors: list[Any]) -> None:
    a = actors[0]
    with InputNode() as inp:
        dag = a.echo.bind(plain_function.bind(inp), y=[a.echo.bind(inp)])
    graph = read_dag(dag)
    function, hidden, echo = _calls(graph)
    assert function.meta["unsupported"] == "function" and function.display_name == "plain_function"
    assert hidden.users == []  # hidden inside the list: not an edge
    assert echo.meta["nested_args"] == [("keyword argument 'y'", "list", ["Echo.echo"])]


def test_long_chain_needs_no_recursion(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        node = inp
        for i in range(1500):
            node = (a if i % 2 else b).echo.bind(node)
    graph = read_dag(node)
    graph.lint()
    assert len(graph.nodes) == 1502


def test_not_a_dag_node() -> None:
    with pytest.raises(TypeError, match="DAG node"):
        read_dag(42)


def test_collectives_become_one_node_per_member(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        xs = [a.add.bind(inp), b.add.bind(inp)]
        ys = [a.add.bind(inp), b.add.bind(inp)]
        outs = allreduce.bind([xs, ys], op=ReduceOp.MAX)  # two tensors per actor: two results each
        dag = MultiOutputNode([outs[0][1], outs[1][0], outs[0][0], outs[1][1]])
    graph = read_dag(dag)
    graph.lint()
    members = graph.nodes_of("collective")
    assert [(m.target, m.num_returns, len(m.args)) for m in members] == [
        ("echo0.allreduce.MAX", 2, 2),
        ("echo1.allreduce.MAX", 2, 2),
    ]
    coll = members[0].meta["collective"]
    assert coll is members[1].meta["collective"] and coll.members == members
    assert (coll.kind, coll.reduce_op, coll.transport) == ("allreduce", "MAX", "auto")
    assert coll.actor_ids == [a._actor_id.hex(), b._actor_id.hex()]
    assert [_ref(r).projections for r in graph.output_node.args] == [
        (Index(1),),
        (Index(0),),
        (Index(0),),
        (Index(1),),
    ]
