"""graph.stats(): counts and latency percentiles per task and per channel."""

from __future__ import annotations

import pytest
import ray
import torch
from ray.dag import InputNode, MultiOutputNode

import raycg
import raycg.collective

pytestmark = [pytest.mark.ray, pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]


def test_stats_count_tasks_and_channels(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        graph = raycg.compile(b.inc.bind(a.inc.bind(a.inc.bind(inp))))
    try:
        for i in range(50):
            assert ray.get(graph.execute(i)) == i + 3
        stats = graph.stats()
    finally:
        graph.teardown()
    tasks = stats["tasks"]
    assert len(tasks) == 3
    assert all(t["count"] == 50 and t["errors"] == 0 and t["p50_us"] > 0 for t in tasks.values()), tasks
    transports = {c["transport"] for c in stats["channels"].values()}
    assert transports == {"shm", "inproc"}
    assert stats["caller"]["executions_submitted"] == 50
    assert stats["caller"]["results_read"] == 50


@ray.remote(num_cpus=0)
class Member:
    def ready(self) -> bool:
        return True

    def make(self, n: int) -> torch.Tensor:
        return torch.full((4,), float(n))

    def keep(self, *ts: torch.Tensor) -> list[float]:
        return [float(t.sum()) for t in ts]


def test_stats_and_visualize_name_tensor_channels_and_collectives(ray_local: None) -> None:
    a, b = Member.remote(), Member.remote()
    ray.get([a.ready.remote(), b.ready.remote()], timeout=300)
    with InputNode() as inp:
        made = [a.make.bind(inp).with_tensor_transport(device="cpu"), b.make.bind(inp)]
        summed = raycg.collective.allreduce.bind(made)
        dag = MultiOutputNode([b.keep.bind(summed[1], made[0]), a.keep.bind(summed[0])])
    graph = raycg.compile(dag, get_timeout=60)
    try:
        for i in range(5):
            assert ray.get(graph.execute(i)) == [[8.0 * i, 4.0 * i], [8.0 * i]]
        stats = graph.stats()
        drawing = graph.visualize(format="ascii")  # names them as stats does
    finally:
        graph.teardown()
        for h in (a, b):
            ray.kill(h)
    transports = {c["transport"] for c in stats["channels"].values()}
    assert "shm, tensors -> cpu" in transports, stats["channels"]  # a.make -> b.keep
    (coll,) = stats["collectives"].values()
    assert (coll["op"], coll["communicator"]) == ("allreduce SUM", "cpu communicator")
    assert [m["count"] for m in coll["members"].values()] == [5, 5], coll
    assert "coll0: allreduce SUM via cpu communicator, ranks " in drawing, drawing
    assert any(line.endswith("  (tensors -> cpu)") for line in drawing.splitlines()), drawing
