"""Fixtures every test folder shares (pytest finds this file above them all)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray cluster for this pytest(-xdist) worker, shut down at the end if this
    fixture started it. Ray is imported here, not at the top: the transports' tests run
    where Ray is not installed.

    ``address="local"``: always a cluster of this worker's own. A bare ``ray.init()``
    joins the newest cluster on the machine (/tmp/ray/ray_current_cluster), which may be
    a multi-node test's ``ray.cluster_utils.Cluster`` in another pytest worker."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()
