"""ir: str(graph) one line per node, and lint() catching broken invariants."""

from __future__ import annotations

from typing import Any

import pytest
from compiler_helpers import compile_debug
from ray.dag import InputNode

from raycg.compiler.ir import Actor, Const, FirstArg, Graph, LintError, Node, Ref


def test_str_of_a_small_chain(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp), y=3)
    assert str(compile_debug(dag).graph).splitlines() == [
        "%inp = input()  transport=shm slots=10",
        "%echo0_echo = call[echo0.echo](%inp)  transport=shm slots=10",
        "%echo1_echo = call[echo1.echo](%echo0_echo, y=3)  transport=shm slots=10",
        "%out = output(%echo1_echo)",
        "schedule[echo0] = %echo0_echo",
        "schedule[echo1] = %echo1_echo",
    ]


def _tiny_graph() -> tuple[Graph, Node, Node]:
    graph = Graph()
    actor = Actor("ab" * 16, "Echo", "echo0", handle=None)
    inp = graph.add_node(Node("inp", "input", "InputNode"))
    call = Node("echo0_echo", "call", "Echo.echo", actor=actor, method="echo")
    call.args = [Ref(inp, (FirstArg(),)), Const("x" * 40)]
    graph.add_node(call)
    graph.add_node(Node("out", "output", "output", args=[Ref(call)], meta={"multi_output": False}))
    return graph, inp, call


def test_hand_built_graph_lints_and_prints() -> None:
    graph, _, call = _tiny_graph()
    graph.lint()
    assert str(call) == "%echo0_echo = call[echo0.echo](%inp, 'xxxxxxxxxxxxxxxxxxxx...)"
    assert graph.add_node(Node("inp", "input", "InputNode")).name == "inp_1"


def test_lint_catches_stale_users() -> None:
    graph, inp, _ = _tiny_graph()
    inp.users.clear()
    with pytest.raises(LintError, match="users"):
        graph.lint()


def test_lint_catches_a_node_before_its_input() -> None:
    graph, _, _ = _tiny_graph()
    graph.nodes[0], graph.nodes[1] = graph.nodes[1], graph.nodes[0]
    with pytest.raises(LintError, match="not before it"):
        graph.lint()


def test_lint_catches_a_multi_return_read_whole() -> None:
    graph, _, call = _tiny_graph()
    call.num_returns = 2
    with pytest.raises(LintError, match="without choosing"):
        graph.lint()
