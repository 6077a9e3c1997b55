"""The caller's process exits (normally, by an exception, by SIGKILL): every executor
stops and nothing remains in /dev/shm. The actors are detached, so they outlive the
caller and we can look inside them afterwards."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import ray

from raycg.runtime import actor_running_graphs
from raycg.runtime.testing import new_shm_entries, shm_entries

from .conftest import Worker

pytestmark = [pytest.mark.ray, pytest.mark.timeout(90)]

CALLER = textwrap.dedent(
    """
    import os, signal, sys, ray, raycg
    from ray.dag import InputNode
    ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False)
    a, b = ray.get_actor(sys.argv[3]), ray.get_actor(sys.argv[4])
    with InputNode() as inp:
        graph = raycg.compile(b.sleep_then_echo.bind(a.inc.bind(inp), 0.2))
    assert ray.get(graph.execute(1)) == 2
    refs = [graph.execute(i) for i in range(5)]   # left in flight
    print("READY", flush=True)
    how = sys.argv[5]
    if how == "exit":
        sys.exit(0)
    if how == "raise":
        raise RuntimeError("the caller fails")
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize("how", ["exit", "raise", "sigkill"])
def test_caller_exit_stops_every_executor(ray_local: None, how: str, tmp_path: object) -> None:
    namespace = f"caller-exit-{uuid.uuid4().hex[:8]}"
    names = [f"a-{how}", f"b-{how}"]
    actors = [Worker.options(name=n, namespace=namespace, lifetime="detached").remote() for n in names]
    try:
        ray.get([h.pid.remote() for h in actors])
        shm_before = shm_entries()
        address = ray.get_runtime_context().gcs_address
        proc = subprocess.run(
            [sys.executable, "-c", CALLER, address, namespace, *names, how],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "READY" in proc.stdout, proc.stderr[-2000:]
        deadline = time.monotonic() + 10
        running = [g for h in actors for g in actor_running_graphs(h)]
        while running and time.monotonic() < deadline:
            time.sleep(0.1)
            running = [g for h in actors for g in actor_running_graphs(h)]
        assert running == [], f"executors survive the caller ({how}): {running}"
        assert new_shm_entries(shm_before) == set()
        assert ray.get(actors[0].inc.remote(1)) == 2  # the actors themselves are fine
    finally:
        for h in actors:
            ray.kill(h)
