"""The cluster-scale chaos scenarios under pytest, on the running Docker cluster.

    ./dev cluster chaos          (up, then this, then down)
    RAYCG_CLUSTER=1 pytest -p no:xdist -m cluster chaos/cluster   (a cluster already up)

Skipped unless RAYCG_CLUSTER=1: the ordinary suite has no cluster. CHAOS_SEEDS (default
2) seeds per scenario, fresh each run (CHAOS_SEED fixes the first); the seed is in the
test id, so a failure replays with ``python -m chaos.cluster.report --only <scenario>
--seed N``. One run at a time: the scenarios share the cluster.
"""

from __future__ import annotations

import importlib
import os
import random

import pytest

from .._harness import Outcome

# module[:variant]
SCENARIOS = [
    "kill_worker",
    "pause_worker:short",
    "pause_worker:long",
    "partition_worker",
    "restart_worker",
    "exhaust_capacity:free",
    "exhaust_capacity:hold",
    "kill_driver",
]
BASE_SEED = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 20)))
SEEDS = [BASE_SEED + k for k in range(int(os.environ.get("CHAOS_SEEDS", "2")))]

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        os.environ.get("RAYCG_CLUSTER") != "1", reason="needs the Docker cluster (./dev cluster chaos)"
    ),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario: str, seed: int) -> None:
    print(run(scenario, seed).line())


def run(scenario: str, seed: int) -> Outcome:
    """One run of ``module[:variant]``."""
    name, _, variant = scenario.partition(":")
    module = importlib.import_module(f"chaos.cluster.{name}")
    return module.run(seed, variant) if variant else module.run(seed)  # type: ignore[no-any-return]
