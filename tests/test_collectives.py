"""Collectives in compiled graphs on a real local Ray: Ray's and raycg's binds run with
raycg's CPU communicator among CPU actors; results equal torch's reference ops; a failed
input fails every member's result of that execution alone; a member that never joins is
a RayChannelTimeoutError, and teardown leaves nothing blocked."""

from __future__ import annotations

import functools
import json

import pytest
import ray
import torch
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import RayChannelTimeoutError, RayTaskError
from ray.experimental import collective as ray_collective
from ray.experimental.util.types import ReduceOp

import raycg
import raycg.collective

from .conftest import Worker

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

_REFERENCE = {
    ReduceOp.SUM: lambda ts: functools.reduce(torch.add, ts),
    ReduceOp.PRODUCT: lambda ts: functools.reduce(torch.mul, ts),
    ReduceOp.MAX: lambda ts: functools.reduce(torch.maximum, ts),
    ReduceOp.MIN: lambda ts: functools.reduce(torch.minimum, ts),
    ReduceOp.AVG: lambda ts: functools.reduce(torch.add, ts) / len(ts),
}


@ray.remote(num_cpus=0)
class Member:
    """Makes this member's tensor from the execution's input: (seed, shape)."""

    def __init__(self, rank: int):
        self.rank = rank

    def ready(self) -> int:
        return self.rank

    def make(self, arg: tuple[int, tuple[int, ...]]) -> torch.Tensor:
        seed, shape = arg
        if seed < 0 and self.rank == 1:
            raise KeyError(f"member {self.rank} fails execution {seed}")
        g = torch.Generator().manual_seed(seed * 10 + self.rank)
        return torch.randn(shape, generator=g, dtype=torch.float32)

    def keep(self, t: torch.Tensor) -> tuple[int, torch.Tensor]:
        return self.rank, t


def _inputs(seed: int, shape: tuple[int, ...], n: int) -> list[torch.Tensor]:
    return [torch.randn(shape, generator=torch.Generator().manual_seed(seed * 10 + r)) for r in range(n)]


@pytest.fixture(scope="module")
def members(ray_local: None) -> list:
    handles = [Member.remote(r) for r in range(4)]
    ray.get([h.ready.remote() for h in handles], timeout=300)
    yield handles
    for h in handles:
        ray.kill(h)


def _graph(members: list, bind, **kw):
    with InputNode() as inp:
        made = [m.make.bind(inp) for m in members]
        outs = bind(made, **kw)
        dag = MultiOutputNode([m.keep.bind(o) for m, o in zip(members, outs)])
    return raycg.compile(dag, get_timeout=60)


@pytest.mark.parametrize("which", ["ray", "raycg"])
def test_allreduce_equals_torch_for_every_op(members: list, which: str) -> None:
    bind = ray_collective.allreduce.bind if which == "ray" else raycg.collective.allreduce.bind
    for op in ReduceOp:
        _check_allreduce(members, bind, op)


def _check_allreduce(members: list, bind, op: ReduceOp) -> None:
    graph = _graph(members, bind, op=op)
    try:
        for seed in range(2):
            got = ray.get(graph.execute((seed, (3, 5))))
            want = _REFERENCE[op](_inputs(seed, (3, 5), 4))
            for r, (rank, t) in enumerate(got):
                assert rank == r  # each result went to the actor that produced the input
                torch.testing.assert_close(t, want, rtol=0, atol=0)
    finally:
        graph.teardown()


@pytest.mark.parametrize("which", ["ray", "raycg"])
def test_allgather_and_reducescatter_equal_torch(members: list, which: str) -> None:
    mod = ray_collective if which == "ray" else raycg.collective
    ins = _inputs(3, (4, 2), 4)
    graph = _graph(members, mod.allgather.bind)
    try:
        for _, t in ray.get(graph.execute((3, (4, 2)))):
            assert torch.equal(t, torch.cat(ins))
    finally:
        graph.teardown()
    graph = _graph(members, mod.reducescatter.bind, op=ReduceOp.MAX)
    try:
        want = functools.reduce(torch.maximum, ins).chunk(4)
        for r, t in ray.get(graph.execute((3, (4, 2)))):
            assert torch.equal(t, want[r])
    finally:
        graph.teardown()


def test_broadcast_sends_the_source_members_tensor(members: list) -> None:
    graph = _graph(members, raycg.collective.broadcast.bind, src_rank=2)
    try:
        want = _inputs(5, (6,), 4)[2]
        for _, t in ray.get(graph.execute((5, (6,)))):
            assert torch.equal(t, want)
    finally:
        graph.teardown()


def test_a_failed_input_fails_every_members_result_of_that_execution_only(members: list) -> None:
    graph = _graph(members, raycg.collective.allreduce.bind)
    try:
        refs = graph.execute((-1, (2,)))
        for ref in refs:
            with pytest.raises(RayTaskError, match="member 1 fails execution -1") as info:
                ray.get(ref)
            assert isinstance(info.value.cause, KeyError) or "KeyError" in str(info.value)
        got = ray.get(graph.execute((1, (2,))))  # later executions are unaffected
        want = functools.reduce(torch.add, _inputs(1, (2,), 4))
        for _, t in got:
            assert torch.equal(t, want)
    finally:
        graph.teardown()


@pytest.mark.usefixtures("no_leaks")  # the group's memfd and mappings too, on both sides
def test_a_non_tensor_input_fails_the_execution_naming_the_collective(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = MultiOutputNode(raycg.collective.allreduce.bind([a.echo.bind(inp), b.echo.bind(inp)]))
    graph = raycg.compile(dag, get_timeout=60)
    try:
        for ref in graph.execute("not a tensor"):
            with pytest.raises(RayTaskError, match="takes a CPU torch tensor from each member, got str"):
                ray.get(ref)
        assert [t.tolist() for t in ray.get(graph.execute(torch.ones(2)))] == [[2.0, 2.0]] * 2
    finally:
        graph.teardown()


def test_nccl_collective_on_cpu_actors_is_refused(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = MultiOutputNode(
            raycg.collective.allreduce.bind([a.echo.bind(inp), b.echo.bind(inp)], transport="nccl")
        )
    with pytest.raises((ValueError, NotImplementedError), match=r"(?i)nccl"):
        raycg.compile(dag)


def test_a_member_that_never_joins_times_out_and_teardown_returns(ray_local: None) -> None:
    stall = [{"rank": 2, "op": "allreduce", "after": 2, "seconds": 3600}]
    env = {"env_vars": {"RAYCG_COMM_FAULTS": json.dumps(stall)}}
    handles = [Worker.remote() for _ in range(2)] + [Worker.options(runtime_env=env).remote()]
    try:
        with InputNode() as inp:
            outs = raycg.collective.allreduce.bind([h.echo.bind(inp) for h in handles])
            dag = MultiOutputNode(outs)
        graph = raycg.compile(dag, get_timeout=2)
        # The flag exchange is the first allreduce of each execution: the third call stalls.
        assert [t.item() for t in ray.get(graph.execute(torch.ones(())))] == [3.0] * 3
        with pytest.raises(RayChannelTimeoutError):
            ray.get(graph.execute(torch.ones(())))
        graph.teardown()
        from raycg.runtime import actor_running_graphs

        assert all(not actor_running_graphs(h) for h in handles)
    finally:
        for h in handles:
            ray.kill(h)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (and cupy-cuda12x)")
def test_a_nccl_allreduce_among_gpu_actors(ray_local: None) -> None:
    @ray.remote(num_gpus=1)
    class OnGpu:
        def make(self, n: int) -> torch.Tensor:
            return torch.ones(n, device="cuda")

        def back(self, t: torch.Tensor) -> torch.Tensor:
            return t.cpu()

    handles = [OnGpu.remote() for _ in range(2)]
    try:
        with InputNode() as inp:
            outs = raycg.collective.allreduce.bind([h.make.bind(inp) for h in handles])
            dag = MultiOutputNode([h.back.bind(o) for h, o in zip(handles, outs)])
        graph = raycg.compile(dag, get_timeout=60)
        try:
            assert [t.tolist() for t in ray.get(graph.execute(3))] == [[2.0] * 3] * 2
        finally:
            graph.teardown()
    finally:
        for h in handles:
            ray.kill(h)
