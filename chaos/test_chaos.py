"""The chaos scenarios under pytest: ``pytest -m chaos chaos`` (``tox -e chaos``).

CHAOS_SEEDS (default 2) seeds per scenario; the seed is in the test id, so a failure
replays with ``python -m chaos.<scenario> --seed N``.
"""

from __future__ import annotations

import importlib
import os
import random
from collections.abc import Iterator

import pytest
import ray

SCENARIOS = [
    "kill_actor",
    "kill_caller",
    "stall_channel",
    "stall_communicator",
    "stall_transfer",
    "exhaust_capacity",
    "teardown_midway",
]
# Random per run, but the same in every pytest-xdist worker (they must collect the same
# test ids): the workers share the run's uid.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
BASE_SEED = int(os.environ.get("CHAOS_SEED", int(_RUN[:5], 16) if _RUN else random.randrange(1 << 20)))
SEEDS = [BASE_SEED + k for k in range(int(os.environ.get("CHAOS_SEEDS", "2")))]

# Across nodes: on a multi-node Cluster of their own (chaos._nodes), after the others.
NETWORK_SCENARIOS = ["stall_network", "cut_network", "lose_node"]

pytestmark = [pytest.mark.chaos, pytest.mark.ray, pytest.mark.timeout(120)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(ray_local: None, scenario: str, seed: int) -> None:
    module = importlib.import_module(f"chaos.{scenario}")
    outcome = module.run(seed)
    print(outcome.line())


@pytest.fixture(scope="module")
def nodes(ray_local: None) -> Iterator[None]:
    from . import _nodes

    _nodes.start()  # this worker's single-node Ray goes down meanwhile
    try:
        yield
    finally:
        _nodes.stop()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # as ray_local did


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scenario", NETWORK_SCENARIOS)
def test_network_scenario(nodes: None, scenario: str, seed: int) -> None:
    module = importlib.import_module(f"chaos.{scenario}")
    outcome = module.run(seed)
    print(outcome.line())
