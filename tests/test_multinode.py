"""Graphs across Ray nodes, on a real multi-node Ray: ``ray.cluster_utils.Cluster`` with
a head (the driver's node) and two worker nodes on this machine, raycg's streams on
loopback (RAYCG_GRPC_HOST), actors pinned to nodes by custom resources. One cluster for
the whole module (each start costs seconds); Ray's single-node cluster of the other
modules is restarted after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import ActorDiedError, RayChannelError, RayTaskError

import raycg
from raycg.proto import Transport
from raycg.runtime import actor_running_graphs

from .conftest import Worker

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    # One Ray connection per process: this worker's single-node Ray (conftest's ray_local)
    # goes down for this module and comes back after it, with the session's shared actors
    # made anew in place, so that the modules after this one in the worker find them.
    shared = request.getfixturevalue("actors")
    ray.shutdown()
    # raycg's streams listen on loopback (every node is this machine); the nodes' processes
    # inherit it from this one.
    mp = pytest.MonkeyPatch()
    mp.setenv("RAYCG_GRPC_HOST", "127.0.0.1")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for name in ("n1", "n2"):
        c.add_node(num_cpus=2, resources={name: 10})
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        mp.undo()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # as ray_local did
        shared[:] = [Worker.remote() for _ in shared]
        ray.get([h.pid.remote() for h in shared])


def on(node: str) -> object:
    """A Worker pinned to ``node``."""
    actor = Worker.options(resources={node: 1}).remote()  # type: ignore[attr-defined]
    ray.get(actor.pid.remote())
    return actor


@pytest.fixture
def a1(cluster: Cluster) -> Iterator[object]:
    actor = on("n1")
    yield actor
    ray.kill(actor)


@pytest.fixture
def a2(cluster: Cluster) -> Iterator[object]:
    actor = on("n2")
    yield actor
    ray.kill(actor)


def transports(graph: object) -> set[int]:
    return {c.transport for c in graph.plan.channels}  # type: ignore[attr-defined]


def test_echo_across_nodes(a1: object) -> None:
    with InputNode() as inp:
        dag = a1.echo.bind(inp)  # type: ignore[attr-defined]
    g = raycg.compile(dag, get_timeout=60)
    try:
        assert Transport.GRPC in transports(g)
        assert [ray.get(g.execute(i)) for i in range(20)] == list(range(20))
    finally:
        g.teardown()


def test_a_chain_within_a_remote_node_has_its_ring_made_there(a1: object, cluster: Cluster) -> None:
    """a1 -> b1, both on n1: an SHM edge, whose ring must be made by a process of n1 (a
    peer opens a memfd through /proc/<pid>/fd, which on another machine names nothing of
    the caller's; on this one-machine Cluster it would work by accident, so check who
    holds it)."""
    b1 = on("n1")
    try:
        with InputNode() as inp:
            dag = b1.inc.bind(a1.inc.bind(inp))  # type: ignore[attr-defined]
        g = raycg.compile(dag, get_timeout=60)
        try:
            (edge,) = [c for c in g.plan.channels if c.transport == Transport.SHM]
            assert edge.channel_id not in g._res.rings, "the caller made a remote node's ring"
            assert g.graph_id in ray.get(a1.__ray_call__.remote(_hosted_graphs))  # type: ignore[attr-defined]
            assert [ray.get(g.execute(i)) for i in range(10)] == [i + 2 for i in range(10)]
        finally:
            g.teardown()
        assert g.graph_id not in ray.get(a1.__ray_call__.remote(_hosted_graphs))  # type: ignore[attr-defined]
    finally:
        ray.kill(b1)


def test_a_chain_over_both_nodes_carries_50_mb(a1: object, a2: object) -> None:
    with InputNode() as inp:
        dag = a2.echo.bind(a1.echo.bind(inp))  # type: ignore[attr-defined]
    g = raycg.compile(dag, get_timeout=60)
    try:
        value = np.random.default_rng(1).random(50_000_000 // 8)
        for _ in range(3):
            got = ray.get(g.execute(value))
            assert np.array_equal(got, value)
            del got
    finally:
        g.teardown()


@pytest.mark.parametrize("hint", [None, "auto", "shm"], ids=["no-hint", "auto", "shm"])
def test_cpu_tensors_cross_nodes_with_their_dtype_and_shape(a1: object, a2: object, hint: str | None) -> None:
    # A CPU tensor rides the gRPC channel like any value, with a tensor hint or without:
    # the driver's to n1, n1's (and the dict around it) to n2, n2's back.
    torch = pytest.importorskip("torch")
    with InputNode() as inp:
        made = a1.pair.bind(inp)  # type: ignore[attr-defined]
        if hint is not None:
            made = made.with_tensor_transport(transport=hint)
        dag = a2.echo.bind(made)  # type: ignore[attr-defined]
    g = raycg.compile(dag, get_timeout=60)
    try:
        assert transports(g) == {Transport.GRPC}  # every edge crosses nodes
        for dtype in (torch.float32, torch.int64, torch.bfloat16):
            value = torch.arange(3 * 1024, dtype=torch.float32).reshape(3, 1024).to(dtype)
            first, second = ray.get(g.execute(value))
            for got in (first, second):
                assert got.dtype == dtype and got.shape == value.shape and torch.equal(got, value)
    finally:
        g.teardown()


def test_fan_out_to_both_nodes_and_a_multi_output(a1: object, a2: object) -> None:
    with InputNode() as inp:
        dag = MultiOutputNode([a1.inc.bind(inp), a2.inc.bind(inp), a2.add.bind(inp, 10)])  # type: ignore[attr-defined]
    g = raycg.compile(dag, get_timeout=60)
    try:
        for i in range(10):
            assert ray.get(g.execute(i)) == [i + 1, i + 1, i + 10]
    finally:
        g.teardown()


def test_pipelined_executions_at_full_in_flight_depth(a1: object, a2: object) -> None:
    with InputNode() as inp:
        dag = a2.inc.bind(a1.inc.bind(inp))  # type: ignore[attr-defined]
    g = raycg.compile(dag, get_timeout=60, max_inflight_executions=4)
    try:
        for round_ in range(5):
            refs = [g.execute(round_ * 10 + i) for i in range(4)]
            assert ray.get(refs) == [round_ * 10 + i + 2 for i in range(4)]
    finally:
        g.teardown()


def test_an_app_exception_crosses_nodes_and_the_graph_goes_on(a1: object, a2: object) -> None:
    with InputNode() as inp:
        dag = a2.echo.bind(a1.fail.bind(inp))  # type: ignore[attr-defined]
    g = raycg.compile(dag, get_timeout=60)
    try:
        with pytest.raises(RayTaskError, match="no key 7"):
            ray.get(g.execute(7))
        with pytest.raises(RayTaskError, match="no key 8"):
            ray.get(g.execute(8))
    finally:
        g.teardown()


def test_an_asyncio_graph_across_nodes_pipelines_and_fails_at_the_await(a1: object, a2: object) -> None:
    # execute_async over both nodes: many coroutines in flight, each with its own results;
    # an application error comes up at its await, and the graph goes on.
    with InputNode() as inp:
        dag = MultiOutputNode([a2.inc.bind(a1.inc.bind(inp)), a1.echo.bind(inp)])  # type: ignore[attr-defined]
    graph = raycg.compile(dag, enable_asyncio=True, get_timeout=60)
    with InputNode() as inp:
        failing = raycg.compile(a2.inc.bind(a1.fail.bind(inp)), enable_asyncio=True, get_timeout=60)  # type: ignore[attr-defined]

    async def one(i: int) -> list[object]:
        futs = await graph.execute_async(i)
        return [await f for f in reversed(futs)]

    async def main() -> list[list[object]]:
        results = await asyncio.gather(*(one(i) for i in range(30)))
        with pytest.raises(RayTaskError) as info:
            await (await failing.execute_async("k"))
        assert isinstance(info.value, KeyError)
        assert await (await graph.execute_async(100))[0] == 102
        return results

    try:
        assert asyncio.run(main()) == [[i, i + 2] for i in range(30)]
    finally:
        failing.teardown()
        graph.teardown()


def test_remote_actors_are_reusable_after_teardown_and_nothing_is_left(a1: object, a2: object) -> None:
    from raycg.runtime.testing import actor_resources, process_resources, resources_left

    # Every node is this machine: each actor's raycg fds, mappings and threads are read
    # from its /proc, as the driver's are.
    before = [actor_resources(a) for a in (a1, a2)]
    driver = process_resources()
    for i in range(20):
        with InputNode() as inp:
            dag = a2.inc.bind(a1.inc.bind(inp))  # type: ignore[attr-defined]
        g = raycg.compile(dag, get_timeout=60)
        assert ray.get(g.execute(i)) == i + 2
        if i == 0:  # the check sees what a remote actor holds: here, its graph's rings
            assert all(resources_left(b, actor_resources(a)) for a, b in zip((a1, a2), before))
        g.teardown()
    for actor in (a1, a2):
        assert ray.get(actor.__ray_call__.remote(_hosted_graphs)) == []  # type: ignore[attr-defined]
        assert actor_running_graphs(actor) == []
    deadline = time.monotonic() + 5  # a bound, not a measure: threads may be unwinding
    while True:
        left = [resources_left(b, actor_resources(a)) for a, b in zip((a1, a2), before)]
        here = resources_left(driver, process_resources())
        if (not any(left) and not here) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert left == [{}, {}], f"left behind on the remote actors: {left}"
    assert here == {}, f"left behind in the driver: {here}"
    assert ray.get(a1.inc.remote(1)) == 2  # type: ignore[attr-defined]


def test_a_killed_remote_actor_fails_the_pending_get(cluster: Cluster) -> None:
    a1, a2 = on("n1"), on("n2")
    with InputNode() as inp:
        dag = a2.echo.bind(a1.sleep_then_echo.bind(inp, 2.0))  # type: ignore[attr-defined]
    g = raycg.compile(dag, get_timeout=60)
    try:
        ref = g.execute(1)
        ray.kill(a1)
        with pytest.raises(ActorDiedError) as died:
            ray.get(ref)
        assert died.value.actor_id == a1._actor_id.hex()  # type: ignore[attr-defined]
        with pytest.raises(ActorDiedError):  # the next call
            ray.get(g.execute(2))
        with pytest.raises(RayChannelError) as later:  # and the calls after it
            g.execute(3)
        assert isinstance(later.value.__cause__, ActorDiedError)
    finally:
        g.teardown()
        ray.kill(a2)


def test_a_removed_node_fails_the_waiting_get_and_survivors_are_reusable(
    cluster: Cluster, a2: object
) -> None:
    node = cluster.add_node(num_cpus=1, resources={"n3": 10})
    cluster.wait_for_nodes()
    doomed = on("n3")
    with InputNode() as inp:
        dag = a2.echo.bind(doomed.sleep_then_echo.bind(inp, 3.0))  # type: ignore[attr-defined]
    g = raycg.compile(dag, get_timeout=60)
    try:
        assert ray.get(g.execute(0)) == 0
        refs = [g.execute(1), g.execute(2)]
        cluster.remove_node(node, allow_graceful=False)
        for ref in refs:  # every pending get, though Ray marks the node dead only later
            with pytest.raises(ActorDiedError) as died:
                ray.get(ref)
            assert died.value.actor_id == doomed._actor_id.hex()  # type: ignore[attr-defined]
        with pytest.raises(ActorDiedError):  # the next call
            g.execute(3)
    finally:
        g.teardown()  # returns, with a node gone
    with InputNode() as inp:
        dag = a2.inc.bind(inp)  # type: ignore[attr-defined]
    g = raycg.compile(dag, get_timeout=60)  # the survivor on n2 takes a new graph
    try:
        assert ray.get(g.execute(1)) == 2
    finally:
        g.teardown()


def _hosted_graphs(instance: object) -> list[str]:
    from raycg.runtime import _hosting

    return list(_hosting._hosted)
