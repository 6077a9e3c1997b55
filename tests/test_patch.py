"""raycg.patch_ray(): code written for Ray's Compiled Graph runs on raycg unchanged."""

from __future__ import annotations

import pytest
import ray
from ray.dag import DAGNode, InputNode

import raycg
from raycg.runtime import CompiledGraph

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaks")]


def test_patch_routes_experimental_compile_with_rays_spellings(actors: list) -> None:
    a = actors[0]
    original = DAGNode.experimental_compile
    raycg.patch_ray()
    raycg.patch_ray()  # idempotent
    try:
        with InputNode() as inp:
            dag = a.inc.bind(inp)
        graph = dag.experimental_compile(
            _submit_timeout=5,
            _buffer_size_bytes=4096,
            _max_inflight_executions=4,
            _max_buffered_results=100,
            _overlap_gpu_communication=False,
        )
        assert isinstance(graph, CompiledGraph)
        assert ray.get(graph.execute(1)) == 2
        graph.teardown()
    finally:
        raycg.unpatch_ray()
    assert DAGNode.experimental_compile is original


def test_public_namespace_is_exactly_the_api() -> None:
    assert sorted(raycg.__all__) == ["compile", "patch_ray", "unpatch_ray"]


def test_unknown_option_is_named() -> None:
    with pytest.raises(TypeError, match="max_inflight"):
        raycg.compile(None, max_inflight=3)
