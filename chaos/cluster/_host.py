"""The host half every scenario shares: a clean cluster before, a driver started and
ready, the fault's time, and nothing left in any container after."""

from __future__ import annotations

import os
import time

from .._harness import Outcome
from ._docker import Cluster, Driver

# A node fault must reach the caller within this many seconds of the moment it can be
# known: the fault itself for a killed container, the end of Ray's node-death timeout
# for a node that stops answering.
NODE_BOUND_S = float(os.environ.get("RAYCG_CHAOS_NODE_BOUND_S", "10"))
# deploy/compose.chaos.yaml shortens Ray's health checks: 5 misses in a row, each a check
# given 1 s, 1 s apart, so a silent node is declared dead some 10 s after it went silent.
NODE_DEATH_S = 5 * (1.0 + 1.0)
# Driver start, cluster connect and a compile across three nodes, on 2 busy cores.
READY_TIMEOUT_S = 120.0
# Everything raycg made must be gone from every container within this many seconds.
CLEANUP_BOUND_S = 10.0


_cluster: Cluster | None = None


def cluster() -> Cluster:
    """The running cluster's handle, made once per process."""
    global _cluster
    if _cluster is None:
        _cluster = Cluster()
    return _cluster


def start(cluster: Cluster, module: str, seed: int, *args: str) -> Driver:
    """Every node up and clean, then the driver started and its graph running."""
    cluster.heal()
    left = cluster.leftovers()
    assert not left, f"the cluster was not clean before the run: {left}"
    driver = cluster.drive(module, seed, *args)
    driver.expect("READY", READY_TIMEOUT_S)
    return driver


def reset(cluster: Cluster) -> None:
    """After a failed run: restart the containers it left something in, so that the next
    run starts clean (its own check of that would fail otherwise)."""
    cluster.heal()
    for service in cluster.leftovers():
        cluster.restart(service)
    cluster.heal()


def clean(cluster: Cluster) -> None:
    """Nothing of raycg's left in any running container (polled up to CLEANUP_BOUND_S)."""
    deadline = time.monotonic() + CLEANUP_BOUND_S
    while True:
        left = cluster.leftovers()
        if not left:
            return
        assert time.monotonic() < deadline, f"left behind after {CLEANUP_BOUND_S} s: {left}"
        time.sleep(0.5)


def within(took: float, bound: float, what: str) -> float:
    assert took <= bound, f"{what} came {took:.2f} s after the fault (bound {bound} s)"
    return max(took, 0.0)


def outcome(scenario: str, seed: int, fault: str, error: str, took: float, detail: str = "") -> Outcome:
    return Outcome(scenario, seed, fault, error, took, detail)
