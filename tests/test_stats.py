"""graph.stats(): counts and latency percentiles per task and per channel."""

from __future__ import annotations

import pytest
import ray
from ray.dag import InputNode

import raycg

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
