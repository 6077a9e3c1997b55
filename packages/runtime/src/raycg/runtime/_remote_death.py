"""Which actor of another node died, when a stream from that node broke.

The caller's /proc monitor cannot see a remote process, and a broken gRPC stream (a reset,
or keepalives unanswered) is noticed before Ray's tables say why: a killed remote actor is
marked dead by its raylet within about a second, a lost node only after the GCS's health
checks give up (3 s x 5 by default: ~15 s). So on a fault, and only then, the caller asks,
for a bounded time (``PROBE_S``, at most the caller's timeout), every ``INTERVAL_S``:

1. Ray's node table (``ray.nodes()``): a remote actor's node marked dead;
2. Ray's actor table (``ray._private.state``): a remote actor marked dead;
3. the remote nodes' raylets: a TCP connect to the address Ray registered for each. A
   refusal means the raylet's process is gone (the node is lost) seconds before the GCS
   says so; a connect that times out (a machine gone, or a network cut) answers nothing.

The first dead actor found is the cause; none found within the bound: a network fault.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import ray

from raycg.proto import Plan

PROBE_S = 3.0  # covers Ray marking a killed actor dead, and a raylet's port closing
INTERVAL_S = 0.2
CONNECT_TIMEOUT_S = 0.3


class RemoteDeath:
    """The graph's actors on other nodes, and the answer of the one lookup a fault gets."""

    def __init__(self, plan: Plan):
        self._remote = [(a.actor_id, a.node_id) for a in plan.actors if a.node_id != plan.driver_node_id]
        self._lock = threading.Lock()
        self._asked: threading.Event | None = None  # set once the answer is in
        self._answer: tuple[str, str] | None = None

    @staticmethod
    def of(plan: Plan) -> RemoteDeath | None:
        """None where every actor is on the caller's node (the monitor sees them all)."""
        cause = RemoteDeath(plan)
        return cause if cause._remote else None

    def first_dead(self, budget_s: float) -> tuple[str, str] | None:
        """(actor id, why) of the first remote actor found dead, or None (all alive).

        Asked once: the first caller looks, for at most ``min(PROBE_S, budget_s)``; others
        wait for its answer (bounded as well). No lock is held while looking."""
        with self._lock:
            asked, first = self._asked, self._asked is None
            if asked is None:
                asked = self._asked = threading.Event()
        if first:
            try:
                self._answer = _look(self._remote, min(PROBE_S, budget_s))
            finally:
                asked.set()
        else:
            asked.wait(PROBE_S + len(self._remote) * CONNECT_TIMEOUT_S + 1.0)
        return self._answer


def _look(remote: list[tuple[str, str]], bound_s: float) -> tuple[str, str] | None:
    deadline = time.monotonic() + max(0.0, bound_s)
    while True:
        found = _dead_now(remote)
        if found is not None or time.monotonic() + INTERVAL_S > deadline:
            return found
        time.sleep(INTERVAL_S)


def _dead_now(remote: list[tuple[str, str]]) -> tuple[str, str] | None:
    from ray._private import state  # Ray's actor table: no public API without a dashboard

    try:
        nodes: dict[str, dict[str, Any]] = {n["NodeID"]: n for n in ray.nodes()}
    except Exception:  # the GCS unreachable: Ray cannot say; the raylets may
        nodes = {}
    for actor_id, node_id in remote:
        if node_id in nodes and not nodes[node_id].get("Alive", True):
            return actor_id, f"its node {node_id[:8]} is dead"
    for actor_id, _ in remote:
        try:
            info = state.actors(actor_id=actor_id)
        except Exception:
            break
        if info and info.get("State") == "DEAD":
            return actor_id, "Ray reports it dead"
    probed: set[str] = set()
    for actor_id, node_id in remote:
        node = nodes.get(node_id)
        if node is None or node_id in probed:
            continue
        probed.add(node_id)
        address = (node["NodeManagerAddress"], int(node["NodeManagerPort"]))
        if _refuses(address):
            where = f"{address[0]}:{address[1]}"
            return actor_id, f"its node {node_id[:8]} is lost (its raylet at {where} is gone)"
    return None


def _refuses(address: tuple[str, int]) -> bool:
    """Whether nothing listens at ``address`` (a refusal; a timeout says nothing)."""
    try:
        with socket.create_connection(address, timeout=CONNECT_TIMEOUT_S):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
