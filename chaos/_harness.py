"""What every chaos run shares: the cluster, the actors, the leak checks, the bounds."""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray

# A documented error must reach the caller within this many seconds of the fault.
ERROR_BOUND_S = 2.0
# Executors and channels must be gone within this many seconds of the graph's end.
CLEANUP_BOUND_S = 10.0


@ray.remote(num_cpus=0, max_restarts=0)
class Stage:
    """One stage of the pipelined graph under test."""

    def inc(self, x: int) -> int:
        return x + 1

    def work(self, x: Any, seconds: float = 0.002) -> Any:
        time.sleep(seconds)
        return x

    def pid(self) -> int:
        return os.getpid()


@dataclasses.dataclass
class Outcome:
    """What one run saw: the fault, what the caller got, and how fast."""

    scenario: str
    seed: int
    fault: str
    error: str
    seconds_to_error: float
    detail: str = ""

    def line(self) -> str:
        return (
            f"[chaos] {self.scenario} seed={self.seed}: {self.fault} -> {self.error} "
            f"in {self.seconds_to_error:.3f} s {self.detail}"
        )


def ensure_ray() -> None:
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


def make_stages(n: int, **options: Any) -> list[Any]:
    stages = [Stage.options(**options).remote() for _ in range(n)]
    ray.get([s.pid.remote() for s in stages])
    return stages


def kill_all(stages: list[Any]) -> None:
    for s in stages:
        try:
            ray.kill(s)
        except Exception:
            pass


@contextmanager
def no_leaks(stages: list[Any]) -> Iterator[None]:
    """Around a run: afterwards, within CLEANUP_BOUND_S, no new /dev/shm entry, and on
    both sides (this process, and each surviving stage, probed through __ray_call__) no
    raycg fd, mapping or thread beyond the baseline, and no executor left on a stage."""
    from raycg.runtime import actor_running_graphs
    from raycg.runtime.testing import (
        actor_resources,
        new_shm_entries,
        process_resources,
        resources_left,
        shm_entries,
    )

    shm = shm_entries()
    driver = process_resources()
    before = {id(s): actor_resources(s) for s in stages}
    yield
    deadline = time.monotonic() + CLEANUP_BOUND_S
    while True:
        problems = []
        if new_shm_entries(shm):
            problems.append(f"/dev/shm: {new_shm_entries(shm)}")
        here = resources_left(driver, process_resources())
        if here:
            problems.append(f"driver: {here}")
        for s in stages:
            try:
                running = actor_running_graphs(s)
                left = resources_left(before[id(s)], actor_resources(s))
            except ray.exceptions.RayActorError:
                continue  # the stage we killed
            if running:
                problems.append(f"executors on {s}: {running}")
            if left:
                problems.append(f"in {s}: {left}")
        if not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind after {CLEANUP_BOUND_S} s: {problems}")
        time.sleep(0.1)


def expect_error(
    run: Callable[[], Any],
    expected: type[BaseException] | tuple[type[BaseException], ...],
    since: float | list[float],
    bound_s: float = ERROR_BOUND_S,
) -> tuple[BaseException, float]:
    """Run until ``run`` raises; check the class and that it came within ``bound_s`` of
    the fault's time (``since``, or its first element once a fault thread set it)."""
    give_up = time.monotonic() + 30.0
    try:
        while time.monotonic() < give_up:
            run()
        raise AssertionError(f"no {expected} within 30 s")
    except expected as e:
        fault_at = since if isinstance(since, float) else since[0]
        took = time.monotonic() - fault_at
        assert took <= bound_s, f"{type(e).__name__} came {took:.2f} s after the fault"
        return e, max(took, 0.0)


def cli(scenario: Callable[[int], Outcome]) -> None:
    """``python -m chaos.<name> --seed N [--runs K]``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    ensure_ray()
    for k in range(args.runs):
        seed = args.seed + k
        print(f"[chaos] seed={seed} (replay: --seed {seed})", flush=True)
        print(scenario(seed).line(), flush=True)
    ray.shutdown()
    sys.exit(0)
