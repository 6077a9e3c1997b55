"""raycg behaves as Ray's Compiled Graph where code relies on it (issue 13): errors as Ray
raises them, with Ray's wording first, and Ray's methods on a compiled graph.

No test asserts a duration: "at once" is shown by a sibling that would block past the
test's pytest-timeout (it waits on a gate the test opens only afterwards).
"""

from __future__ import annotations

import copy
import pickle
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import RayActorError, RayCgraphCapacityExceeded, RayChannelError, RayChannelTimeoutError

import raycg

from .conftest import Worker, wait_process_gone

pytestmark = [pytest.mark.ray, pytest.mark.timeout(60)]

GATE_S = 120  # longer than the pytest-timeout: a get that waited for the gate would fail the test


@ray.remote(num_cpus=0)
class Gate:
    """A branch that blocks until the test opens it (an ordinary call: compiled tasks run
    on another thread of the actor)."""

    def __init__(self) -> None:
        self._open = threading.Event()

    def wait_then_echo(self, x: object) -> object:
        if not self._open.wait(GATE_S):
            raise TimeoutError("the gate was never opened")
        return x

    def open(self) -> None:
        self._open.set()

    def pid(self) -> int:
        import os

        return os.getpid()


@pytest.fixture
def gate(ray_local: None) -> Iterator[ray.actor.ActorHandle]:
    handle = Gate.remote()
    ray.get(handle.pid.remote())
    yield handle
    ray.get(handle.open.remote())  # let a blocked task finish, so teardown is prompt
    ray.kill(handle)


@pytest.fixture
def own(ray_local: None) -> Iterator[list[ray.actor.ActorHandle]]:
    """Two actors of this test's own (killed after it)."""
    handles = [Worker.remote() for _ in range(2)]
    ray.get([h.pid.remote() for h in handles])
    yield handles
    for h in handles:
        ray.kill(h)


# -- fast-fail ----------------------------------------------------------------------------


def test_a_list_get_raises_at_once_and_the_slow_ref_alone_returns_its_value(
    gate: ray.actor.ActorHandle, actors: list
) -> None:
    with InputNode() as inp:
        dag = MultiOutputNode([gate.wait_then_echo.bind(inp), actors[0].fail.bind(inp)])
    graph = raycg.compile(dag, get_timeout=-1)  # no timeout: only the failure can end the get
    try:
        slow, failed = graph.execute("k")
        with pytest.raises(KeyError, match="no key 'k'"):
            ray.get([slow, failed])  # the slow branch first: Ray's one-by-one get would wait for it
        ray.get(gate.open.remote())
        assert ray.get(slow) == "k"  # fetched alone, a branch returns its own value (API.md)
        with pytest.raises(ValueError, match=r"^ray\.get\(\) can only be called once on a CompiledDAGRef"):
            ray.get(failed)
        assert ray.get(graph.execute("again")[0]) == "again"  # the graph keeps running
    finally:
        graph.teardown()


def test_a_list_get_of_several_executions_returns_every_value_in_order(actors: list) -> None:
    with InputNode() as inp:
        dag = MultiOutputNode([actors[0].inc.bind(inp), actors[1].echo.bind(inp)])
    graph = raycg.compile(dag)
    try:
        refs = [graph.execute(i) for i in range(5)]
        flat = [ref for pair in reversed(refs) for ref in pair]  # latest first: reads buffer the rest
        assert ray.get(flat) == [v for i in reversed(range(5)) for v in (i + 1, i)]
        a, b = graph.execute(7)
        with pytest.raises(ValueError, match=r"Invalid type of object refs"):
            ray.get([a, actors[0].pid.remote()])  # a mixed list is Ray's to refuse
        assert ray.get([b, a]) == [7, 8]
    finally:
        graph.teardown()


def test_a_failure_in_an_earlier_execution_of_the_list_raises(actors: list) -> None:
    with InputNode() as inp:
        graph = raycg.compile(actors[0].inc.bind(inp))
    try:
        good, bad, late = graph.execute(1), graph.execute("x"), graph.execute(3)
        with pytest.raises(TypeError):
            ray.get([late, bad, good])
        assert ray.get(good) == 2  # only the failed ref is used up: the others still fetch
        assert ray.get(late) == 4
        with pytest.raises(ValueError, match=r"^ray\.get\(\) can only be called once"):
            ray.get(bad)
    finally:
        graph.teardown()


def test_a_list_get_that_times_out_uses_up_no_ref(gate: ray.actor.ActorHandle, actors: list) -> None:
    with InputNode() as inp:
        dag = MultiOutputNode([actors[0].echo.bind(inp), gate.wait_then_echo.bind(inp)])
    graph = raycg.compile(dag)
    try:
        done, blocked = graph.execute(1)
        with pytest.raises(RayChannelTimeoutError):
            ray.get([done, blocked], timeout=0.5)
        ray.get(gate.open.remote())
        assert ray.get([blocked, done]) == [1, 1]
    finally:
        graph.teardown()


def test_list_gets_from_two_threads_each_get_their_own_values(actors: list) -> None:
    with InputNode() as inp:
        dag = MultiOutputNode([actors[0].inc.bind(inp), actors[1].echo.bind(inp)])
    graph = raycg.compile(dag, max_inflight_executions=4)
    try:
        refs = [graph.execute(i) for i in range(60)]
        got: dict[int, list] = {}

        def fetch(parity: int) -> None:
            for i in reversed(range(parity, 60, 2)):  # latest first: the other thread's buffered too
                got[i] = ray.get(list(reversed(refs[i])))

        threads = [threading.Thread(target=fetch, args=(p,)) for p in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert got == {i: [i, i + 1] for i in range(60)}
    finally:
        graph.teardown()


# -- execute() checks its arguments -------------------------------------------------------


def test_execute_checks_the_positional_count_before_sending(actors: list) -> None:
    with InputNode() as inp:
        graph = raycg.compile(actors[0].add.bind(inp[0], inp[1]))
    try:
        for args in [(1,), (), (1, 2, 3)]:
            with pytest.raises(
                ValueError,
                match=re.escape(
                    "dag.execute() or dag.execute_async() must be called with 2 positional args, "
                    f"got {len(args)}"
                )
                + r"\. The graph reads inp\[0\] \(by Worker\.add.*inp\[1\]",
            ):
                graph.execute(*args)
        assert ray.get(graph.execute(1, 2)) == 3  # nothing was sent by the refused calls
    finally:
        graph.teardown()


def test_execute_checks_the_keywords_and_the_input_node_alone(actors: list) -> None:
    with InputNode() as inp:
        graph = raycg.compile(actors[0].add.bind(inp.x, inp.y))
    try:
        with pytest.raises(
            ValueError, match=r"must be called with kwarg `x`\. inp\.x is read by Worker\.add"
        ):
            graph.execute(y=1)
        with pytest.raises(ValueError, match="must be called with 0 positional args, got 1"):
            graph.execute(1, x=1, y=2)
        assert ray.get(graph.execute(x=1, y=2, unused=3)) == 3  # other keywords are ignored, as in Ray
    finally:
        graph.teardown()
    with InputNode() as inp:
        graph = raycg.compile(actors[0].echo.bind(inp))
    try:
        with pytest.raises(ValueError, match="must be called with 1 positional args, got 0"):
            graph.execute()
        assert ray.get(graph.execute((1, 2))) == (1, 2)
    finally:
        graph.teardown()


# -- max_buffered_results is a bound --------------------------------------------------------

_RAY_BUFFER_FULL = re.escape(
    "The compiled graph can't have more than 1 buffered results, and you currently have 1 buffered "
    "results. Call `ray.get()` on CompiledDAGRef's (or await on CompiledDAGFuture's) to retrieve results, "
    "or increase `_max_buffered_results` if buffering is desired, note that this will increase driver "
    "memory usage."
)


def test_a_get_that_would_buffer_past_max_buffered_results_raises(actors: list) -> None:
    with InputNode() as inp:
        graph = raycg.compile(actors[0].inc.bind(inp), max_buffered_results=1)
    try:
        refs = [graph.execute(i) for i in range(2)]
        with pytest.raises(RayCgraphCapacityExceeded, match=_RAY_BUFFER_FULL):
            ray.get(refs[1])  # exec 0 is buffered; exec 1 would be a second result held
        assert ray.get(refs[0]) == 1  # the graph keeps running
        assert ray.get(refs[1]) == 2
    finally:
        graph.teardown()


def test_an_unfetched_output_of_an_execution_counts_as_buffered(actors: list) -> None:
    with InputNode() as inp:
        dag = MultiOutputNode([actors[0].inc.bind(inp), actors[1].inc.bind(inp)])
    graph = raycg.compile(dag, max_buffered_results=1)
    try:
        first, second = graph.execute(1), graph.execute(2)
        assert ray.get(first[0]) == 2  # first[1] stays buffered
        with pytest.raises(RayCgraphCapacityExceeded, match=_RAY_BUFFER_FULL):
            ray.get(second[0])
        assert ray.get(first[1]) == 2
        assert ray.get(second) == [3, 3]
    finally:
        graph.teardown()


# -- Ray's wording first ------------------------------------------------------------------------


def test_a_torn_down_graph_says_channel_closed(actors: list) -> None:
    with InputNode() as inp:
        graph = raycg.compile(actors[0].echo.bind(inp))
    ref = graph.execute(1)
    graph.teardown()
    with pytest.raises(RayChannelError, match=r"Channel closed\. compiled graph \w+ has been torn down"):
        ray.get(ref)
    with pytest.raises(RayChannelError, match=r"Channel closed\."):
        graph.execute(1)


def test_a_get_timeout_names_rays_setting(gate: ray.actor.ActorHandle) -> None:
    with InputNode() as inp:
        graph = raycg.compile(gate.wait_then_echo.bind(inp), get_timeout=30)
    try:
        ref = graph.execute(1)
        with pytest.raises(
            RayChannelTimeoutError,
            match=re.escape(
                "If the execution is expected to take a long time, increase RAY_CGRAPH_get_timeout which is "
                "currently 30.0 seconds. Otherwise, this may indicate that the execution is hanging. get on "
                "compiled graph"
            ),
        ):
            ray.get(ref, timeout=0.2)
        ray.get(gate.open.remote())
        assert ray.get(ref) == 1  # the timed-out get did not use the ref up
    finally:
        graph.teardown()


def test_refs_speak_as_rays(actors: list, ray_local: None) -> None:
    with InputNode() as inp:
        graph = raycg.compile(actors[0].echo.bind(inp))
    try:
        ref = graph.execute(1)
        assert str(ref) == f"CompiledDAGRef({graph.get_id()}, execution_index=0, channel_index=None)"
        with pytest.raises(ValueError, match=re.escape("CompiledDAGRef cannot be copied.")):
            copy.copy(ref)
        with pytest.raises(ValueError, match=re.escape("CompiledDAGRef cannot be deep copied.")):
            copy.deepcopy(ref)
        with pytest.raises(ValueError, match=re.escape("CompiledDAGRef cannot be pickled.")):
            pickle.dumps(ref)
        with pytest.raises(
            TypeError, match=re.escape("CompiledDAGRef cannot be used as Ray task/actor argument.")
        ):
            actors[1].echo.remote(ref)
        with pytest.raises(TypeError, match=re.escape("Serialization of CompiledDAGRef is not supported.")):
            ray.put([ref])
        assert ray.get(ref) == 1
        with pytest.raises(
            ValueError,
            match=re.escape(
                "ray.get() can only be called once on a CompiledDAGRef, and it was already called."
            ),
        ):
            ray.get(ref)
    finally:
        graph.teardown()


def test_execute_async_without_asyncio_says_so_as_ray(actors: list) -> None:
    import asyncio

    with InputNode() as inp:
        graph = raycg.compile(actors[0].echo.bind(inp))
    try:
        with pytest.raises(ValueError, match=r"^Use execute if enable_asyncio=False\."):
            asyncio.run(graph.execute_async(1))
    finally:
        graph.teardown()


# -- Ray's methods on a compiled graph ----------------------------------------------------------


def test_get_id_is_teardown_and_str(actors: list) -> None:
    with InputNode() as inp:
        graph = raycg.compile(MultiOutputNode([actors[0].echo.bind(inp), actors[1].echo.bind(inp)]))
    assert re.fullmatch(r"[0-9a-f]{32}", graph.get_id())
    assert str(graph) == f"CompiledGraph({graph.get_id()})"
    a, b = graph.execute(1)
    assert str(b) == f"CompiledDAGRef({graph.get_id()}, execution_index=0, channel_index=1)"
    assert ray.get([a, b]) == [1, 1]
    assert graph.is_teardown is False
    graph.teardown()
    assert graph.is_teardown is True


def test_teardown_kill_actors_kills_the_graphs_actors(own: list, actors: list) -> None:
    with InputNode() as inp:
        graph = raycg.compile(own[1].echo.bind(own[0].echo.bind(inp)))
    assert ray.get(graph.execute(1)) == 1
    pids = ray.get([h.pid.remote() for h in own])
    graph.teardown(kill_actors=True)
    for handle, pid in zip(own, pids):
        wait_process_gone(pid)  # ray.kill returns before the process is gone
        with pytest.raises(RayActorError):
            ray.get(handle.pid.remote(), timeout=30)
    assert ray.get(actors[0].echo.remote(2)) == 2  # other actors are untouched


def test_get_channel_details_points_to_visualize(actors: list) -> None:
    with InputNode() as inp:
        graph = raycg.compile(actors[0].echo.bind(inp))
    try:
        with pytest.raises(
            NotImplementedError, match=r"visualize\(channel_details=True\).*graph\.plan\.channels"
        ):
            graph.get_channel_details(object(), "actor")
    finally:
        graph.teardown()


@pytest.mark.skipif(
    shutil.which("dot") is None, reason="needs Graphviz's dot binary (./dev setup installs it)"
)
def test_visualize_returns_what_rays_returns(actors: list, tmp_path: Path) -> None:
    with InputNode() as inp:
        graph = raycg.compile(actors[1].echo.bind(actors[0].echo.bind(inp)))
    try:
        text = graph.visualize(format="ascii")
        assert text.startswith(f"raycg graph {graph.get_id()[:8]}: 2 actors, 3 channels, 1 output")
        source = graph.visualize(filename=str(tmp_path / "g"), channel_details=True)  # Ray's default: png
        assert source.startswith("digraph raycg {") and "ch1" in source
        assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
        assert (tmp_path / "g").read_text() == source
        with pytest.raises(
            ValueError,
            match=re.escape("Parameters 'channel_details' are not compatible with 'ascii' format."),
        ):
            graph.visualize(format="ascii", channel_details=True)
    finally:
        graph.teardown()
