"""Compiler tests run on a real local Ray: the frontend reads real DAG nodes and
placement asks real actors where they run. The compiler creates nothing on the actors,
so one set of actors serves every test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ray
from compiler_helpers import Echo


@pytest.fixture(scope="session")
def actors(ray_local: None) -> list[Any]:
    """Three live Echo actors, ready (their creation finished) before any test uses them."""
    handles = [Echo.remote() for _ in range(3)]
    ray.get([h.echo.remote(None) for h in handles])
    return handles


@pytest.fixture
def new_actor(ray_local: None) -> Iterator[Callable[[], Any]]:
    """Makes an actor of the test's own (to kill, or to keep busy); killed at the end."""
    made: list[Any] = []

    def make() -> Any:
        made.append(Echo.remote())
        ray.get(made[-1].echo.remote(None))
        return made[-1]

    yield make
    for handle in made:
        ray.kill(handle)
