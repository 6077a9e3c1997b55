"""A caller SIGKILLed mid-graph, with its graph's actors on other Ray nodes: every
executor there stops and frees its channels, and the ring hosts drop their rings and
gRPC servers. On one node the actors watch the caller's process (test_caller_exit.py);
across nodes they cannot, and learn it from the streams the caller fed, which break.
On test_multinode.py's cluster (head: the callers' node; n1, n2: the actors')."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from typing import Any

import pytest
import ray

from raycg.runtime import actor_running_graphs
from raycg.runtime.testing import actor_resources, resources_left

from . import test_multinode
from .conftest import Worker

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

cluster = test_multinode.cluster

# driver -> a1 (n1) -> a2 (n2) -> driver: every edge a gRPC stream. "busy" leaves
# executions in flight (a2 sleeps in one, then writes toward the dead caller); "idle"
# leaves both executors waiting for input fed by the caller's stream.
CALLER = textwrap.dedent(
    """
    import os, signal, sys, ray, raycg
    from ray.dag import InputNode
    ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False)
    a1, a2 = ray.get_actor(sys.argv[3]), ray.get_actor(sys.argv[4])
    with InputNode() as inp:
        graph = raycg.compile(a2.sleep_then_echo.bind(a1.inc.bind(inp), 0.5), get_timeout=60)
    assert ray.get(graph.execute(1)) == 2
    if sys.argv[5] == "busy":
        refs = [graph.execute(i) for i in range(3)]   # left in flight
    print("READY", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _hosting_left(_instance: object) -> list[str]:
    """Runs on an actor: the graphs it hosts rings for, and its gRPC server if it runs."""
    from raycg.runtime import _hosting

    return [*_hosting._hosted, *([repr(_hosting._server)] if _hosting._server is not None else [])]


def _left(actors: list[Any], before: list[dict[str, list[str]]]) -> list[Any]:
    """What is still there of the caller's graph on each actor, empty when nothing is."""
    return [
        (
            actor_running_graphs(h),
            ray.get(h.__ray_call__.remote(_hosting_left)),
            resources_left(b, actor_resources(h)),
        )
        for h, b in zip(actors, before)
    ]


@pytest.mark.parametrize("state", ["busy", "idle"])
def test_a_killed_caller_stops_the_executors_on_other_nodes(cluster: object, state: str) -> None:
    namespace = f"xnode-caller-{uuid.uuid4().hex[:8]}"
    names = [f"a1-{state}", f"a2-{state}"]
    actors = [
        Worker.options(name=n, namespace=namespace, lifetime="detached", resources={node: 1}).remote()  # type: ignore[attr-defined]
        for n, node in zip(names, ("n1", "n2"))
    ]
    try:
        ray.get([h.pid.remote() for h in actors])
        before = [actor_resources(h) for h in actors]
        address = ray.get_runtime_context().gcs_address
        proc = subprocess.run(
            [sys.executable, "-c", CALLER, address, namespace, *names, state],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert "READY" in proc.stdout, proc.stderr[-2000:]
        nothing = [([], [], {})] * len(actors)
        deadline = time.monotonic() + 20  # a bound, not a timing assertion
        left = _left(actors, before)
        while left != nothing and time.monotonic() < deadline:
            time.sleep(0.2)
            left = _left(actors, before)
        assert left == nothing, f"the caller's graph survives it on the other nodes ({state}): {left}"
        assert ray.get(actors[0].inc.remote(1)) == 2  # the actors themselves are fine
    finally:
        for h in actors:
            ray.kill(h)
