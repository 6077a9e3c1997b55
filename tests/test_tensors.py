"""Tensor edges on a real local Ray: the ``_static_shape`` and ``_direct_return``
promises are checked on every edge (a broken one is a RayTaskError naming the node and
the promise, and the graph is torn down); device placement onto the reader's GPU is
refused where CUDA is not available, and runs where it is (``gpu``)."""

from __future__ import annotations

import pytest
import ray
import torch
from ray.dag import InputNode
from ray.exceptions import RayChannelError, RayTaskError

import raycg

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaks")]


def _chain(actors: list, **hint: object) -> raycg.CompiledGraph:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(**hint))
    return raycg.compile(dag, get_timeout=60)


def test_a_static_shape_that_changes_fails_naming_the_node_and_tears_down(actors: list) -> None:
    graph = _chain(actors, _static_shape=True)
    try:
        for _ in range(2):  # the same shape and dtype: runs
            assert torch.equal(ray.get(graph.execute(torch.ones(2, 3))), torch.ones(2, 3))
        with pytest.raises(RayTaskError, match=r"Worker\.echo.* broke its _static_shape promise") as info:
            ray.get(graph.execute(torch.ones(4)))
        assert "[2, 3] float32" in str(info.value) and "[4] float32" in str(info.value)
        assert graph.is_teardown
        with pytest.raises(RayChannelError):
            graph.execute(torch.ones(2, 3))
    finally:
        graph.teardown()


def test_a_direct_return_that_is_not_a_tensor_fails_naming_the_node(actors: list) -> None:
    graph = _chain(actors, _direct_return=True)
    try:
        assert torch.equal(ray.get(graph.execute(torch.ones(3))), torch.ones(3))
        with pytest.raises(RayTaskError, match=r"Worker\.echo.* broke its _direct_return promise .*tuple"):
            ray.get(graph.execute((torch.ones(3), 1)))
        assert graph.is_teardown
    finally:
        graph.teardown()


def test_nested_tensors_keep_a_static_shape(actors: list) -> None:
    graph = _chain(actors, _static_shape=True)
    try:
        for i in range(3):
            value = {"h": (torch.full((2,), i), [torch.zeros(1, dtype=torch.int64)]), "step": i}
            got = ray.get(graph.execute(value))
            assert got["step"] == i and torch.equal(got["h"][0], value["h"][0])
    finally:
        graph.teardown()


def test_a_gpu_device_without_cuda_is_refused_at_setup(actors: list) -> None:
    with pytest.raises(RayChannelError, match=r"planned onto this actor's GPU .*CUDA is not available"):
        _chain(actors, device="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_gpu_device_puts_the_tensors_on_the_readers_gpu(ray_local: None) -> None:
    @ray.remote(num_gpus=1)
    class OnGpu:
        def device(self, t: torch.Tensor) -> str:
            return str(t.device)

    @ray.remote
    class OnCpu:
        def make(self, n: int) -> torch.Tensor:
            return torch.ones(n)

    src, dst = OnCpu.remote(), OnGpu.remote()
    with InputNode() as inp:
        dag = dst.device.bind(src.make.bind(inp).with_tensor_transport(transport="shm", device="gpu"))
    graph = raycg.compile(dag)
    try:
        assert ray.get(graph.execute(4)).startswith("cuda")
    finally:
        graph.teardown()
        ray.kill(src)
        ray.kill(dst)


def test_the_pipeline_parallel_example_matches_the_whole_model(ray_local: None) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "pipeline_parallel.py"
    spec = importlib.util.spec_from_file_location("pipeline_parallel", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(n_stages=3, micro_batches=4) == 0.0


def test_rays_cpu_communicator_as_an_edges_transport_goes_through_shared_memory(actors: list) -> None:
    from ray.experimental.channel.cpu_communicator import CPUCommunicator

    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(transport=CPUCommunicator(2, [a, b])))
    graph = raycg.compile(dag, get_timeout=60)
    try:
        value = {"x": torch.arange(5.0)}
        assert torch.equal(ray.get(graph.execute(value))["x"], value["x"])
    finally:
        graph.teardown()
