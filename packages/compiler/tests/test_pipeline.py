"""_pipeline: passes run in order; lint after each in debug; failures name the pass."""

from __future__ import annotations

import pytest

from raycg.compiler import PASSES, PassFailed, run_passes
from raycg.compiler.ir import Actor, FirstArg, Graph, Node, Ref


def _graph() -> Graph:
    graph = Graph()
    graph.driver_node_id = "n"
    actor = Actor("ab" * 16, "Echo", "echo0", None, node_id="n")
    inp = graph.add_node(Node("inp", "input", "InputNode"))
    call = graph.add_node(
        Node("echo0_echo", "call", "Echo.echo", actor, "echo", args=[Ref(inp, (FirstArg(),))])
    )
    graph.add_node(Node("out", "output", "output", args=[Ref(call)], meta={"multi_output": False}))
    graph.options.max_inflight_executions, graph.options.buffer_size_bytes = 2, 64
    return graph


def test_the_passes_in_order() -> None:
    assert [p.__name__ for p in PASSES] == [
        "validate",
        "assign_transports",
        "assign_tensor_transports",
        "schedule",
        "assign_communicators",
        "overlap",
        "size_buffers",
    ]
    graph = _graph()
    run_passes(graph, debug=True)
    assert str(graph).splitlines()[1] == "%echo0_echo = call[echo0.echo](%inp)  transport=shm slots=2"


def test_a_pass_that_breaks_the_graph_is_named() -> None:
    def drop_users(graph: Graph) -> None:
        graph.nodes[0].users.clear()

    with pytest.raises(PassFailed, match=r"after compiler pass 'drop_users': %inp\.users is stale"):
        run_passes(_graph(), debug=True, passes=(drop_users,))
    run_passes(_graph(), debug=False, passes=(drop_users,))  # no lint, no error


def test_a_pass_that_crashes_is_named() -> None:
    def crash(graph: Graph) -> None:
        raise KeyError("oops")

    with pytest.raises(PassFailed, match="compiler pass 'crash' failed: KeyError"):
        run_passes(_graph(), passes=(crash,))


def test_a_refusal_passes_through_unchanged() -> None:
    def refuse(graph: Graph) -> None:
        raise ValueError("Echo.echo: no")

    with pytest.raises(ValueError, match=r"^Echo.echo: no$"):
        run_passes(_graph(), passes=(refuse,))
