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
import re

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
# How a raycg without cross-node channels refuses a graph across nodes (at compile, or at
# setup once the compiler plans the edges); deploy/cluster.sh check knows it too.
REFUSED = re.compile(r"cross-node edges are not supported|no cross-node \(gRPC\) channel yet")
# RAYCG_CLUSTER_SCENARIOS: a comma-separated subset ("" for the check alone); all by default.
_ONLY = os.environ.get("RAYCG_CLUSTER_SCENARIOS")
if _ONLY is not None:
    SCENARIOS = [s for s in SCENARIOS if s in _ONLY.split(",")]
# Random per run, but the same in every pytest-xdist worker (they must collect the same
# test ids): the workers share the run's uid.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
BASE_SEED = int(os.environ.get("CHAOS_SEED", int(_RUN[:5], 16) if _RUN else random.randrange(1 << 20)))
SEEDS = [BASE_SEED + k for k in range(int(os.environ.get("CHAOS_SEEDS", "2")))]

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        os.environ.get("RAYCG_CLUSTER") != "1", reason="needs the Docker cluster (./dev cluster chaos)"
    ),
]


def test_check() -> None:
    """The first check on the cluster: a plain Ray task pinned to each node, then a graph
    across the nodes with its time per execution (examples/cluster.py), and the quickstart,
    driven from the head. A raycg that refuses graphs across nodes runs a graph within
    each node instead, driven from that node, and the quickstart on a Ray of its own."""
    from ._docker import HEAD, WORKERS
    from ._host import cluster

    c = cluster()
    c.heal()
    out = _example(c, HEAD)
    if REFUSED.search(out):
        print("this raycg refuses graphs across nodes: a graph within each node instead")
        for node in (HEAD, *WORKERS):
            local = _example(c, node, "--local")
            assert f"within node {node}" in local and "us per execution" in local, local
            print(local)
        # The quickstart's two actors may land on two nodes: a Ray of its own, no network.
        image = c.container(HEAD).image
        raw = c.client.containers.run(
            image,
            ["python", "examples/quickstart.py", "--n", "200"],
            network_mode="none",
            shm_size="1g",
            remove=True,
            stderr=True,
        )
        quick = raw.decode(errors="replace")
    else:
        assert f"across {1 + len(WORKERS)} nodes" in out and "(pipelined)" in out, out
        print(out)
        quick = _example(c, HEAD, script="examples/quickstart.py")
    assert "second graph on the same actors: AGAIN" in quick and "chain of 2" in quick, quick
    print("\n".join(line for line in quick.splitlines() if not re.search(r"INFO|WARN|network_util", line)))
    for node in (HEAD, *WORKERS):
        assert f"pinned to node:{node} ran on {node}" in out, out


def _example(c: object, node: str, *args: str, script: str = "examples/cluster.py") -> str:
    from ._docker import Driver

    driver = Driver(c, node, ["python", script, "--n", "200", *args])  # type: ignore[arg-type]
    driver.exit_code(180)
    driver.expect_end(30)
    return "\n".join(line for line in driver.output if "\tINFO " not in line)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario: str, seed: int) -> None:
    from ._host import cluster, reset

    try:
        print(run(scenario, seed).line())
    except BaseException:
        reset(cluster())  # the next scenario starts clean
        raise


def run(scenario: str, seed: int) -> Outcome:
    """One run of ``module[:variant]``."""
    name, _, variant = scenario.partition(":")
    module = importlib.import_module(f"chaos.cluster.{name}")
    return module.run(seed, variant) if variant else module.run(seed)  # type: ignore[no-any-return]
