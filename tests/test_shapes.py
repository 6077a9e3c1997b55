"""Every graph shape of API.md, compiled by raycg and run on a real local Ray."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from ray.dag import InputNode, MultiOutputNode

import raycg

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaks")]


def run(dag: object, *args: object, **kwargs: object) -> object:
    graph = raycg.compile(dag)
    try:
        return ray.get(graph.execute(*args, **kwargs))
    finally:
        graph.teardown()


def test_echo(actors: list) -> None:
    a = actors[0]
    with InputNode() as inp:
        dag = a.echo.bind(inp)
    assert run(dag, "hello") == "hello"


def test_positional_and_keyword_inputs(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = MultiOutputNode([a.add.bind(inp[0], inp[1]), b.echo.bind(inp.key)])
    assert run(dag, 1, 2, key="k") == [3, "k"]


def test_constants_and_node_as_keyword_argument(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.add.bind(10, y=a.inc.bind(inp))  # a DAG node as a kwarg: Ray refuses, we don't
    assert run(dag, 1) == 12


def test_chain_of_four(actors: list) -> None:
    with InputNode() as inp:
        node = inp
        for a in actors:
            node = a.inc.bind(node)
    graph = raycg.compile(node)
    try:
        assert [ray.get(graph.execute(i)) for i in range(20)] == [i + 4 for i in range(20)]
    finally:
        graph.teardown()


def test_fan_out_and_fan_in(actors: list) -> None:
    a, b, c, d = actors
    with InputNode() as inp:
        x = a.echo.bind(inp)
        dag = d.concat.bind(b.inc.bind(x), c.inc.bind(x), x)
    assert run(dag, 1) == "221"


def test_several_tasks_on_one_actor(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = a.inc.bind(b.inc.bind(a.inc.bind(a.inc.bind(inp))))
    assert run(dag, 0) == 4


def test_diamond(actors: list) -> None:
    a, b, c, d = actors
    with InputNode() as inp:
        top = a.echo.bind(inp)
        dag = d.add.bind(b.inc.bind(top), c.inc.bind(top))
    assert run(dag, 5) == 12


def test_multi_output_returns_a_list_of_refs(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = MultiOutputNode([a.echo.bind(inp), b.inc.bind(inp)])
    graph = raycg.compile(dag)
    try:
        refs = graph.execute(1)
        assert isinstance(refs, list) and len(refs) == 2
        assert ray.get(refs) == [1, 2]
    finally:
        graph.teardown()


def test_num_returns(actors: list) -> None:
    a, b, c = actors[:3]
    with InputNode() as inp:
        x, y = a.pair.options(num_returns=2).bind(inp)
        dag = MultiOutputNode([b.inc.bind(x), c.echo.bind(y)])
    assert run(dag, 1) == [2, 1]


def test_numpy_results_are_zero_copy_and_read_only(actors: list) -> None:
    a = actors[0]
    with InputNode() as inp:
        dag = a.echo.bind(inp)
    graph = raycg.compile(dag)
    try:
        arr = np.arange(1 << 20, dtype=np.float32)
        out = ray.get(graph.execute(arr))
        np.testing.assert_array_equal(out, arr)
        assert not out.flags.writeable and not out.flags.owndata
        del out
    finally:
        graph.teardown()


def test_ordinary_calls_keep_working_during_a_graph(actors: list) -> None:
    a = actors[0]
    with InputNode() as inp:
        dag = a.inc.bind(inp)
    graph = raycg.compile(dag)
    try:
        refs = [graph.execute(i) for i in range(5)]
        assert ray.get(a.inc.remote(41)) == 42
        assert ray.get(refs) == [1, 2, 3, 4, 5]
    finally:
        graph.teardown()
