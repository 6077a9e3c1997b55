"""What a ref promises (API.md, Running a graph)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator

import pytest
import ray
from ray.dag import InputNode
from ray.exceptions import RayChannelTimeoutError, RayTaskError
from ray.experimental.compiled_dag_ref import CompiledDAGRef

import raycg

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaks")]


@pytest.fixture
def graph(actors: list) -> Iterator[object]:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp))
    g = raycg.compile(dag)
    yield g
    g.teardown()


def test_refs_are_compiled_dag_refs_and_get_works_every_way(graph: object) -> None:
    r1, r2, r3 = graph.execute(1), graph.execute(2), graph.execute(3)
    assert isinstance(r1, CompiledDAGRef)
    assert ray.get(r1) == 1
    assert ray.get([r2, r3]) == [2, 3]
    assert graph.execute(4).get(timeout=5) == 4
    assert ray.get(graph.execute(5), timeout=5) == 5


def test_get_twice_raises(graph: object) -> None:
    ref = graph.execute(1)
    ray.get(ref)
    with pytest.raises(ValueError, match="once"):
        ray.get(ref)


def test_results_in_any_order(graph: object) -> None:
    refs = [graph.execute(i) for i in range(8)]
    assert [ray.get(r) for r in reversed(refs)] == list(reversed(range(8)))


def test_copy_and_pickle_raise_value_error(graph: object) -> None:
    ref = graph.execute(1)
    for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(ValueError):
            attempt(ref)
    assert ray.get(ref) == 1


def test_passing_a_ref_to_a_task_or_put_raises_type_error(graph: object, actors: list) -> None:
    ref = graph.execute(1)
    with pytest.raises(TypeError):
        ray.put(ref)
    with pytest.raises(TypeError):
        actors[2].echo.remote(ref)
    assert ray.get(ref) == 1


def test_dropping_a_ref_releases_its_result(graph: object) -> None:
    for i in range(30):
        graph.execute(i)  # dropped at once
    assert ray.get(graph.execute("last")) == "last"
    assert graph._results.buffered == 0


def test_a_get_that_times_out_does_not_use_up_the_ref(actors: list) -> None:
    with InputNode() as inp:
        dag = actors[0].sleep_then_echo.bind(inp, 0.5)
    g = raycg.compile(dag)
    try:
        ref = g.execute("late")
        with pytest.raises(RayChannelTimeoutError) as info:
            ray.get(ref, timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        # The test's frame holds info, whose traceback holds that frame: a cycle of the
        # test's own, which would keep the reader's views mapped until a collection.
        del info
        assert ray.get(ref, timeout=10) == "late"
    finally:
        g.teardown()


def test_method_error_raises_task_error_and_graph_keeps_running(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.inc.bind(a.fail.bind(inp))  # b.inc is skipped: it never sees the error
    g = raycg.compile(dag)
    try:
        for _ in range(2):
            with pytest.raises(RayTaskError) as info:
                ray.get(g.execute("x"))
            assert isinstance(info.value, KeyError)
            assert "no key 'x'" in str(info.value)
    finally:
        g.teardown()
    with InputNode() as inp:
        ok = raycg.compile(b.inc.bind(a.inc.bind(inp)))
    try:
        assert ray.get(ok.execute(1)) == 3
    finally:
        ok.teardown()


def test_graph_cannot_be_pickled_or_sent(graph: object, actors: list) -> None:
    with pytest.raises(TypeError, match="only the process that compiled it"):
        pickle.dumps(graph)
    with pytest.raises(TypeError):
        actors[2].echo.remote(graph)
