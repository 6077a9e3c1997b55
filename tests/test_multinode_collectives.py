"""Collectives among actors on several Ray nodes, on a real multi-node Ray (the Cluster of
test_multinode: a head and two worker nodes on this machine, streams on loopback): raycg's
cross-node CPU communicator. Results equal torch's reference bit for bit; a failed input
fails that execution alone; a member that never joins is a RayChannelTimeoutError and
teardown returns, leaving no loop running. Few tests: each compile costs seconds here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import ray
import torch
from ray.cluster_utils import Cluster
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import RayChannelTimeoutError, RayTaskError
from ray.experimental import collective as ray_collective
from ray.experimental.util.types import ReduceOp

import raycg
import raycg.collective
from raycg.runtime import actor_running_graphs

from .test_collectives import Member, _inputs
from .test_multinode import cluster  # noqa: F401  (the module's Cluster)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def members(cluster: Cluster) -> Iterator[list]:  # noqa: F811
    """Ranks 0 and 2 on node n1, 1 and 3 on n2: every node's ranks interleave."""
    handles = [Member.options(resources={("n1", "n2")[r % 2]: 1}).remote(r) for r in range(4)]  # type: ignore[attr-defined]
    ray.get([h.ready.remote() for h in handles], timeout=120)
    yield handles
    for h in handles:
        ray.kill(h)


def _graph(members: list, bind, **kw):  # type: ignore[no-untyped-def]
    with InputNode() as inp:
        outs = bind([m.make.bind(inp) for m in members], **kw)
        dag = MultiOutputNode([m.keep.bind(o) for m, o in zip(members, outs)])
    return raycg.compile(dag, get_timeout=60)


def test_allreduce_across_nodes_equals_torch_and_a_failed_input_fails_that_execution(members: list) -> None:
    for op, shape in ((ReduceOp.SUM, (3, 5)), (ReduceOp.AVG, (64, 1024))):  # one piece; split by nodes
        graph = _graph(members, ray_collective.allreduce.bind, op=op)
        try:
            for seed in range(2):
                want = functools.reduce(torch.add, _inputs(seed, shape, 4))
                want = want / 4 if op is ReduceOp.AVG else want
                got = ray.get(graph.execute((seed, shape)))
                assert [rank for rank, _ in got] == [0, 1, 2, 3]
                for _, t in got:
                    torch.testing.assert_close(t, want, rtol=0, atol=0)
            if op is ReduceOp.SUM:
                for ref in graph.execute((-1, shape)):  # member 1 (on n2) raises
                    with pytest.raises(RayTaskError, match="member 1 fails execution -1"):
                        ray.get(ref)
                assert all(torch.equal(t, want) for _, t in ray.get(graph.execute((1, shape))))
        finally:
            graph.teardown()


def test_allgather_across_nodes_and_within_one_remote_node(members: list) -> None:
    ins = _inputs(3, (4, 2), 4)
    graph = _graph(members, raycg.collective.allgather.bind)
    try:
        for _, t in ray.get(graph.execute((3, (4, 2)))):
            assert torch.equal(t, torch.cat(ins))
    finally:
        graph.teardown()
    # Both members on n1, not the caller's node: the group's memory is made there.
    graph = _graph(members[::2], raycg.collective.allgather.bind)
    try:
        assert graph.graph_id in ray.get(members[0].__ray_call__.remote(_hosting_state))[0]
        for _, t in ray.get(graph.execute((3, (4, 2)))):
            assert torch.equal(t, torch.cat([ins[0], ins[2]]))
    finally:
        graph.teardown()
    # Each node's leader (ranks 0 and 1) freed its parts, and its gRPC server stopped.
    for leader in members[:2]:
        assert ray.get(leader.__ray_call__.remote(_hosting_state)) == ([], True)


def _hosting_state(instance: object) -> tuple[list[str], bool]:
    from raycg.runtime import _hosting

    return list(_hosting._hosted), _hosting._server is None


def _stall_rank_3(instance: object) -> None:
    from raycg.transports import CpuNetCommunicator
    from raycg.transports._communicator_faults import Stall, install

    # The flag exchange is each execution's first allreduce: the third call stalls.
    install([Stall(rank=3, op="allreduce", after=2, seconds=3600)], CpuNetCommunicator)


def test_a_member_that_never_joins_times_out_and_teardown_returns(cluster: Cluster) -> None:  # noqa: F811
    handles = [Member.options(resources={("n1", "n2")[r % 2]: 1}).remote(r) for r in range(4)]  # type: ignore[attr-defined]
    try:
        ray.get(handles[3].__ray_call__.remote(_stall_rank_3), timeout=120)
        with InputNode() as inp:
            outs = raycg.collective.allreduce.bind([h.make.bind(inp) for h in handles])
            dag = MultiOutputNode(outs)
        graph = raycg.compile(dag, get_timeout=3)
        want = functools.reduce(torch.add, _inputs(0, (2,), 4))
        assert all(torch.equal(t, want) for t in ray.get(graph.execute((0, (2,)))))
        with pytest.raises(RayChannelTimeoutError):
            ray.get(graph.execute((0, (2,))))
        graph.teardown()
        assert all(not actor_running_graphs(h) for h in handles)
    finally:
        for h in handles:
            ray.kill(h)
