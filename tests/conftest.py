"""Cross-package runs on a real local Ray: one cluster per pytest(-xdist) worker."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import ray

from raycg.transports import process_start_time


@ray.remote(num_cpus=0)
class Worker:
    """The actor most tests use: small methods covering every argument shape."""

    def echo(self, x: object) -> object:
        return x

    def inc(self, x: int) -> int:
        return x + 1

    def add(self, x: int, y: int = 0) -> int:
        return x + y

    def pair(self, x: object) -> tuple[object, object]:
        return x, x

    def concat(self, *parts: object) -> str:
        return "".join(str(p) for p in parts)

    def sleep_then_echo(self, x: object, seconds: float = 0.5) -> object:
        time.sleep(seconds)
        return x

    def wait_for(self, x: object, path: str, timeout_s: float = 20.0) -> object:
        """Return ``x`` once ``path`` exists (the caller creates it when the test's
        condition holds); a bound, not a measure: past it, the test's premise failed."""
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} was never created")
            time.sleep(0.002)
        return x

    def fail(self, x: object) -> object:
        raise KeyError(f"no key {x!r}")

    def exit_if(self, x: int) -> int:
        if x < 0:
            os._exit(1)
        return x

    def pid(self) -> int:
        return os.getpid()


@pytest.fixture(scope="session")
def actors(ray_local: None) -> list[ray.actor.ActorHandle]:
    """Four long-lived actors shared by the tests that leave them healthy."""
    handles = [Worker.remote() for _ in range(4)]
    ray.get([h.pid.remote() for h in handles])
    return handles


@pytest.fixture
def no_leaks(actors: list[ray.actor.ActorHandle]) -> Iterator[None]:
    """After the test, on both sides: no new /dev/shm entry; in this process and in each
    shared actor, no raycg fd, mapping or thread beyond what was there before (and no
    executor left running on the actors)."""
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
    before = [actor_resources(a) for a in actors]
    yield
    deadline = time.monotonic() + 5
    while True:
        running = [g for a in actors for g in actor_running_graphs(a)]
        left = {i: resources_left(b, actor_resources(a)) for i, (a, b) in enumerate(zip(actors, before))}
        left = {i: what for i, what in left.items() if what}
        if (not running and not left) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not running, f"executors still running on the actors: {running}"
    assert not left, f"left behind in actors (by index): {left}"
    assert new_shm_entries(shm) == set(), "new entries in /dev/shm"
    assert resources_left(driver, process_resources()) == {}, "raycg fds, mappings or threads left here"


def wait_process_gone(pid: int, timeout_s: float = 10.0) -> None:
    """Until process ``pid`` has exited (a zombie counts): ray.kill returns before."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process_start_time(pid) is None:  # gone, or a zombie
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still runs after {timeout_s} s")
