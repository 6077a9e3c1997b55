"""Tensor type hints and collectives through raycg.compile on a real local Ray: hinted CPU
tensors run; collectives compile and run."""

from __future__ import annotations

import pytest
import ray
import torch
from ray.dag import InputNode, MultiOutputNode
from ray.experimental.collective import allreduce

import raycg
import raycg.collective

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaks")]


@pytest.mark.parametrize("transport", ["auto", "shm"])
def test_a_hinted_cpu_tensor_arrives_equal(actors: list, transport: str) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(transport=transport))
    graph = raycg.compile(dag)
    try:
        assert graph.plan.channels[1].tensor.written.endswith("device='default')")
        value = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        assert torch.equal(ray.get(graph.execute(value)), value)
    finally:
        graph.teardown()


def test_nccl_on_cpu_actors_is_refused_at_compile(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(transport="nccl"))
    with pytest.raises(ValueError, match=r"^Worker.echo: its tensor transport is NCCL"):
        raycg.compile(dag)


@pytest.mark.parametrize("which", ["ray", "raycg"])
def test_a_collective_compiles_and_runs(actors: list, which: str) -> None:
    a, b = actors[:2]
    bind = allreduce.bind if which == "ray" else raycg.collective.allreduce.bind
    with InputNode() as inp:
        dag = MultiOutputNode(bind([a.echo.bind(inp), b.echo.bind(inp)]))
    graph = raycg.compile(dag)  # tests/test_collectives.py covers them in depth
    try:
        assert [t.tolist() for t in ray.get(graph.execute(torch.ones(2)))] == [[2.0, 2.0]] * 2
    finally:
        graph.teardown()


def test_raycg_collective_binds_one_node_per_member_and_checks_its_arguments(actors: list) -> None:
    a, b, c = actors[:3]
    with InputNode() as inp:
        xs = [a.echo.bind(inp), b.echo.bind(inp), c.echo.bind(inp)]
        for bind in (raycg.collective.allreduce.bind, raycg.collective.allgather.bind):
            outs = bind(xs)
            assert [o._get_actor_handle() for o in outs] == [a, b, c]
        outs = raycg.collective.reducescatter.bind(xs, transport="cpu")
        assert outs[0].collective_op.raycg_transport == "cpu"
        with pytest.raises(ValueError, match=r"^broadcast.bind: src_rank=3 is not in \[0, 3\)"):
            raycg.collective.broadcast.bind(xs, src_rank=3)
        with pytest.raises(ValueError, match=r"^allgather.bind: transport='gloo' is not None, 'nccl', 'cpu'"):
            raycg.collective.allgather.bind(xs, transport="gloo")
