"""Each actor computes its tasks in the order they were bound, every execution (as Ray)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.dag import InputNode, MultiOutputNode

import raycg

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaks")]


@ray.remote(num_cpus=0)
class Stage:
    """A pipeline stage that logs each call: the order is the point."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def fwd(self, x: int, microbatch: int) -> int:
        self.calls.append(f"F{microbatch}")
        return x + 1

    def bwd(self, x: int, microbatch: int) -> int:
        self.calls.append(f"B{microbatch}")
        return x * 10

    def take_log(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture(scope="module")
def stages(ray_local: None) -> Iterator[list[Any]]:
    handles = [Stage.remote() for _ in range(2)]
    ray.get([h.take_log.remote() for h in handles])
    yield handles
    for h in handles:
        ray.kill(h)


def _bind(stages: list[Any], order: list[str]) -> Any:
    """Bind "0F1" (stage 0, forward of microbatch 1), ... in ``order``; 3 microbatches."""
    nodes: dict[str, Any] = {}
    with InputNode() as inp:
        for step in order:
            stage, kind, m = int(step[0]), step[1], int(step[2])
            if kind == "F":
                src = inp[m - 1] if stage == 0 else nodes[f"0F{m}"]
                nodes[step] = stages[stage].fwd.bind(src, m)
            else:
                src = nodes[f"1F{m}"] if stage == 1 else nodes[f"1B{m}"]
                nodes[step] = stages[stage].bwd.bind(src, m)
        return MultiOutputNode([nodes[f"0B{m}"] for m in (1, 2, 3)])


@pytest.mark.parametrize(
    "order",
    [
        pytest.param("0F1 0F2 0F3 1F1 1F2 1F3 1B1 1B2 1B3 0B1 0B2 0B3", id="all_F_then_all_B"),
        pytest.param("0F1 0F2 1F1 1B1 0B1 0F3 1F2 1B2 0B2 1F3 1B3 0B3", id="1F1B"),
    ],
)
def test_each_stage_logs_its_bind_order_every_execution(stages: list[Any], order: str) -> None:
    steps = order.split()
    graph = raycg.compile(_bind(stages, steps))
    try:
        for k in range(4):
            assert ray.get(graph.execute(k, k, k)) == [(k + 2) * 100] * 3
    finally:
        graph.teardown()
    for stage, log in enumerate(ray.get([s.take_log.remote() for s in stages])):
        bound = [step[1:] for step in steps if step[0] == str(stage)]
        assert log == bound * 4
