"""Wait until the cluster has the given number of live nodes; run on the head.

    python -m deploy.wait_joined NODES TIMEOUT_S

Exits 0 once ``ray.nodes()`` lists exactly NODES live nodes, 1 if that did not happen
within TIMEOUT_S seconds (or Ray could not be reached: deploy/cluster.sh retries).

Exactly, not at least: a worker restarted after a kill joins as a new node while Ray
still counts its old incarnation alive, until the GCS's health checks give up on it
(the node-death window). Until then the old one still offers the worker's resources, so
an actor pinned to that worker can be placed on it and die at once when it is declared
dead (seen in CI: kill_worker's second seed).
"""

from __future__ import annotations

import sys
import time

import ray


def main(want: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    ray.init(log_to_driver=False)  # RAY_ADDRESS: the head
    try:
        while True:
            alive = [n["NodeManagerHostname"] for n in ray.nodes() if n["Alive"]]
            if len(alive) == want:
                print(f"{len(alive)} nodes joined: {', '.join(sorted(alive))}")
                return 0
            if time.monotonic() > deadline:
                print(f"{len(alive)} of {want} nodes joined: {alive}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), float(sys.argv[2])))
