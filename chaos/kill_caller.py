"""SIGKILL the caller at a random point while it drives a pipelined graph over
detached stages. Every executor must stop within the bound and nothing may remain in
/dev/shm; the stages themselves stay healthy."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
import uuid

import ray

from ._harness import CLEANUP_BOUND_S, Outcome, Stage, cli, kill_all

CALLER = textwrap.dedent(
    """
    import collections, sys, ray, raycg
    from ray.dag import InputNode
    ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False)
    a, b = ray.get_actor("a", namespace=sys.argv[2]), ray.get_actor("b", namespace=sys.argv[2])
    with InputNode() as inp:
        graph = raycg.compile(b.work.bind(a.work.bind(inp)), max_inflight_executions=8)
    print("READY", flush=True)
    inflight = collections.deque()
    while True:
        inflight.append(graph.execute(1))
        if len(inflight) >= 8:
            ray.get(inflight.popleft())
    """
)


def run(seed: int) -> Outcome:
    from raycg.runtime import actor_running_graphs
    from raycg.runtime.testing import new_shm_entries, shm_entries

    rng = random.Random(seed)
    delay = rng.uniform(0.1, 1.0)
    namespace = f"chaos-{uuid.uuid4().hex[:8]}"
    stages = [Stage.options(name=n, namespace=namespace, lifetime="detached").remote() for n in "ab"]
    try:
        ray.get([s.pid.remote() for s in stages])
        shm = shm_entries()
        child = subprocess.Popen(
            [sys.executable, "-c", CALLER, ray.get_runtime_context().gcs_address, namespace],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "READY"
            time.sleep(delay)
        finally:
            child.kill()
            child.wait(30)
        killed = time.monotonic()
        while any(actor_running_graphs(s) for s in stages):
            assert time.monotonic() - killed < CLEANUP_BOUND_S, "executors outlive their caller"
            time.sleep(0.05)
        took = time.monotonic() - killed
        assert new_shm_entries(shm) == set()
        assert ray.get([s.inc.remote(1) for s in stages]) == [2, 2]
        return Outcome("kill_caller", seed, f"SIGKILL caller after {delay:.2f} s", "executors stopped", took)
    finally:
        kill_all(stages)


if __name__ == "__main__":
    cli(run)
