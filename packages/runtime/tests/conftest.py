"""The runtime's own tests: hand-written Plans (no compiler), on a real local Ray."""

from __future__ import annotations

import pytest
import ray


@ray.remote(num_cpus=0)
class Adder:
    def add(self, x: int, y: int = 0) -> int:
        return x + y

    def split(self, x: int) -> tuple[int, int]:
        return x, -x


@pytest.fixture(scope="session")
def adders(ray_local: None) -> list:
    handles = [Adder.remote() for _ in range(2)]
    ray.get([h.add.remote(1) for h in handles])
    return handles
