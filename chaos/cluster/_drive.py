"""The in-cluster half every scenario shares: stages pinned to the nodes, the graph
pipelined across them, and the lines the driver reports to the host.

Runs inside the head container (the image has chaos/ at /opt/raycg/chaos). The host
reads these lines, each on its own stdout line: ``READY``, ``ERROR <class> <message>``,
``TIMEOUT <message>``, ``RESULT <json>``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.dag import InputNode

import raycg

from .._harness import Stage

# The nodes of deploy/compose.yaml, in pipeline order: the driver's node first.
# RAYCG_CHAOS_NODES=head,head,head tries the harness on a raycg that refuses graphs across
# nodes (the host passes RAYCG_CHAOS_* on to the driver).
NODES = tuple(os.environ.get("RAYCG_CHAOS_NODES", "head,w1,w2").split(","))
# Executions in flight while a fault hits.
DEPTH = 8
# Seconds the survivors' executors may take to stop once their graph is gone.
CLEANUP_BOUND_S = 10.0


def say(kind: str, text: str = "") -> None:
    print(f"{kind} {text}".rstrip(), flush=True)


def result(**fields: Any) -> None:
    say("RESULT", json.dumps(fields))


def pinned(node: str, **options: Any) -> dict[str, Any]:
    """Actor options that place it on ``node`` (deploy/compose.yaml's node:<name> resource)."""
    return {"resources": {f"node:{node}": 0.001}, **options}


def make_stages(nodes: tuple[str, ...] = NODES, **options: Any) -> dict[str, Any]:
    """One Stage actor per node, started and answering."""
    stages = {node: Stage.options(**pinned(node, **options)).remote() for node in dict.fromkeys(nodes)}  # type: ignore[attr-defined]
    ray.get([s.pid.remote() for s in stages.values()], timeout=60)
    return stages


def actor_ids(stages: dict[str, Any]) -> dict[str, str]:
    return {node: s._actor_id.hex() for node, s in stages.items()}


def chain(stages: list[Any], **options: Any) -> Any:
    """A graph of ``stages``, in order, compiled: stage k's work feeds stage k+1's."""
    with InputNode() as inp:
        dag = inp
        for s in stages:
            dag = s.work.bind(dag, 0.001)
    return raycg.compile(dag, max_inflight_executions=DEPTH, **options)


def pump(graph: Any, get: Callable[[Any], Any] = ray.get) -> BaseException:
    """Execute with DEPTH in flight, checking every result, until a call raises; return
    what it raised (reported as ``ERROR``)."""
    inflight: collections.deque[tuple[int, Any]] = collections.deque()
    k = 0
    try:
        while True:
            inflight.append((k, graph.execute(k)))
            k += 1
            if len(inflight) >= DEPTH:
                want, ref = inflight.popleft()
                got = get(ref)
                assert got == want, f"execution {want} returned {got!r}"
    except AssertionError:
        raise
    except Exception as e:
        say("ERROR", f"{type(e).__name__} {str(e).splitlines()[0] if str(e) else ''}")
        return e


def warm(graph: Any, n: int = 50) -> None:
    for k in range(n):
        assert ray.get(graph.execute(k)) == k


def reuse(stages: list[Any]) -> None:
    """The survivors serve a new graph across their nodes, then stop its executors."""
    graph = chain(stages)
    warm(graph, 20)
    graph.teardown()
    wait_idle(stages)


def wait_idle(stages: list[Any]) -> float:
    """Seconds until no executor runs on any of ``stages`` (at most CLEANUP_BOUND_S)."""
    from raycg.runtime import actor_running_graphs

    t0 = time.monotonic()
    while True:
        running = {repr(s): actor_running_graphs(s) for s in stages}
        if not any(running.values()):
            return time.monotonic() - t0
        assert time.monotonic() - t0 < CLEANUP_BOUND_S, f"executors left on the survivors: {running}"
        time.sleep(0.1)


def node_ids(node: str) -> set[str]:
    """Ray's ids of the live nodes offering ``node:<node>``."""
    return {n["NodeID"] for n in ray.nodes() if n["Alive"] and f"node:{node}" in n["Resources"]}


def wait_node(node: str, old: set[str], timeout_s: float = 90.0) -> None:
    """Until a live node other than ``old`` offers ``node:<node>`` (a restarted container
    has rejoined as a new Ray node) and none of ``old`` is alive."""
    deadline = time.monotonic() + timeout_s
    while True:
        ids = node_ids(node)
        if ids and not ids & old:
            return
        assert time.monotonic() < deadline, f"{node} did not rejoin as a new node within {timeout_s} s"
        time.sleep(0.5)


def wait_signal(name: str, timeout_s: float = 180.0) -> None:
    """Until the host says ``name`` (``Cluster.signal``: a file in this container's /tmp)."""
    path = f"/tmp/raycg-chaos-{name}"
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"the host did not signal {name!r} within {timeout_s} s"
        time.sleep(0.2)
    os.unlink(path)


def main(
    drive: Callable[[int, argparse.Namespace], None],
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """``python -m chaos.cluster.<name> --drive --seed N``: the driver's half."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--drive", action="store_true")
    parser.add_argument("--seed", type=int, required=True)
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    ray.init(log_to_driver=False)  # RAY_ADDRESS: the head
    try:
        drive(args.seed, args)
    finally:
        ray.shutdown()
    sys.exit(0)
