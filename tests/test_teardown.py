"""Teardown, reuse, and what an idle graph costs."""

from __future__ import annotations

import gc
import os
import time

import pytest
import ray
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import RayChannelError

import raycg
from raycg.runtime import actor_running_graphs

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaks")]


def chain(actors: list) -> object:
    a, b = actors[:2]
    with InputNode() as inp:
        return b.inc.bind(a.inc.bind(inp))


def test_teardown_is_idempotent_and_later_use_raises(actors: list) -> None:
    g = raycg.compile(chain(actors))
    assert ray.get(g.execute(1)) == 3
    g.teardown()
    g.teardown()
    with pytest.raises(RayChannelError, match="torn down"):
        g.execute(1)
    assert actor_running_graphs(actors[0]) == []


def test_actors_serve_calls_and_a_new_graph_at_once(actors: list) -> None:
    g = raycg.compile(chain(actors))
    ray.get(g.execute(1))
    g.teardown()
    assert ray.get(actors[0].inc.remote(1)) == 2
    with InputNode() as inp:
        dag = MultiOutputNode([actors[1].echo.bind(inp), actors[0].inc.bind(inp)])
    g2 = raycg.compile(dag)
    assert ray.get(g2.execute(1)) == [1, 2]
    g2.teardown()


def test_dropping_the_last_reference_tears_down_without_the_collector(actors: list) -> None:
    # Promptly: by reference counting alone, not at some later generation-2 collection.
    g = raycg.compile(chain(actors))
    assert ray.get(g.execute(1)) == 3
    g.execute(2)  # dropped unfetched
    pending = g.execute(3)  # held past the graph
    graph_id = g.graph_id
    gc.disable()
    try:
        del g
        assert graph_id in actor_running_graphs(actors[0])  # the pending ref keeps it
        time.sleep(0.3)  # a few rounds of the caller's monitor, which must not keep it either
        del pending
        deadline = time.monotonic() + 5
        while graph_id in actor_running_graphs(actors[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert graph_id not in actor_running_graphs(actors[0])
    finally:
        gc.enable()
    g2 = raycg.compile(chain(actors))  # the same actors, at once
    assert ray.get(g2.execute(1)) == 3
    g2.teardown()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_graph_costs_no_cpu(actors: list) -> None:
    g = raycg.compile(chain(actors))
    try:
        ray.get(g.execute(1))
        pids = ray.get([a.pid.remote() for a in actors[:2]])
        time.sleep(0.2)  # past the short spin
        before = [_cpu_seconds(p) for p in pids]
        time.sleep(2.0)
        used = [_cpu_seconds(p) - b for p, b in zip(pids, before)]
        # Generous bound (a busy-polling executor would use ~2 s here): it sleeps.
        assert all(u < 0.2 for u in used), used
    finally:
        g.teardown()


def test_execute_from_another_process_is_refused(actors: list) -> None:
    g = raycg.compile(chain(actors))
    try:
        g._pid = -1  # what a forked child sees: the graph belongs to another process
        with pytest.raises(RayChannelError, match="only that process may execute it"):
            g.execute(1)
    finally:
        g._pid = os.getpid()
        g.teardown()
