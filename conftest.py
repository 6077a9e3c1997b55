"""Fixtures every test folder shares (pytest finds this file above them all)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray cluster for this pytest(-xdist) worker, shut down at the end if this
    fixture started it. Ray is imported here, not at the top: the transports' tests run
    where Ray is not installed."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()
