"""Across nodes: Ray core vs Ray's Compiled Graph vs raycg, driver on one node, actor on another.

A 2-node ``ray.cluster_utils.Cluster`` on this machine (the head, where the driver runs,
and one worker node offering the custom resource ``far``); each engine gets its own echo
actor pinned to the worker node. Measured in one run, the engines taking turns (one
engine's actor alive at a time, ``ROUNDS`` rounds): the round trip of a small value
(driver -> actor -> driver), and the throughput of a 64 MiB numpy array echoed the same
way (it crosses twice).

Ray's own servers listen on this machine's address (as Ray registers it); raycg's gRPC
servers listen on loopback (RAYCG_GRPC_HOST=127.0.0.1, inherited by the nodes' processes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from ray.cluster_utils import Cluster
from ray.dag import InputNode

import raycg

from . import _util
from ._graph_cases import COMPILED, CORE, ENGINES, FIRST_TIMEOUT_S, MIB, RAY_CG, SMALL_VALUE, Sampling, Stage

SECTION = "Across nodes"
BIG = 64 * MIB
ECHO_LIMIT = 0.3  # raycg's echo p50 over Ray CG's, at most (issue 11)
BIG_LIMIT = 1.0  # raycg's time per 64 MiB over Ray CG's, at most: throughput at least Ray CG's
FULL = {"small": Sampling(600, 0, 20), "big": Sampling(12, 0, 1)}
QUICK = {"small": Sampling(100, 0, 5), "big": Sampling(4, 0, 1)}
# Each engine's actor and graph made anew each round, the engines in turn, each round
# starting with the next: the SIGSTOP turns of bench_graph.py would stop raycg's gRPC
# server answering keepalives (its stream breaks after 2 s), and a stopped Ray CG actor
# is no fairer; so only one engine's actor exists at a time (Ray CG's spins a core).
ROUNDS = 2


class Far:
    """One engine's echo actor on the worker node, and its graph."""

    def __init__(self, engine: str):
        self.engine = engine
        self.actor = Stage.options(resources={"far": 1}).remote()  # type: ignore[attr-defined]
        self.pids = [ray.get(self.actor.pid.remote())]
        self.graph: Any = None
        if engine == CORE:
            self.submit: Callable[[Any], Any] = self.actor.echo.remote
            return
        with InputNode() as inp:
            dag = self.actor.echo.bind(inp)
        self.graph = dag.experimental_compile() if engine == RAY_CG else raycg.compile(dag)
        self.submit = self.graph.execute

    def close(self) -> None:
        try:
            if self.graph is not None:
                self.graph.teardown()
        finally:
            ray.kill(self.actor)


def _time(far: Far, value: Any, sampling: Sampling, rounds: int) -> list[int]:
    def execute(v: Any) -> object:
        return ray.get(far.submit(v), timeout=FIRST_TIMEOUT_S)

    for _ in range(sampling.warmup):
        execute(value)
    with _util.gc_disabled():
        return _util.time_calls(execute, value, -(-sampling.total // rounds))


def _start() -> Cluster:
    os.environ["RAYCG_GRPC_HOST"] = "127.0.0.1"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2, resources={"far": 10})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def run(sampling: dict[str, Sampling]) -> dict[str, dict[str, list[int]]]:
    """size ("small", "big") -> engine -> ns per echo."""
    cluster = _start()
    big = np.ones(BIG // 8)
    out: dict[str, dict[str, list[int]]] = {size: {e: [] for e in ENGINES} for size in sampling}
    try:
        for r in range(ROUNDS):
            for engine in ENGINES[r % len(ENGINES) :] + ENGINES[: r % len(ENGINES)]:
                far = Far(engine)
                try:
                    assert ray.get(far.submit(SMALL_VALUE), timeout=FIRST_TIMEOUT_S) == SMALL_VALUE
                    assert np.array_equal(ray.get(far.submit(big), timeout=FIRST_TIMEOUT_S), big)
                    for size, value in (("small", SMALL_VALUE), ("big", big)):
                        out[size][engine] += _time(far, value, sampling[size], ROUNDS)
                finally:
                    far.close()
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAYCG_GRPC_HOST", None)


def entry(results: dict[str, dict[str, list[int]]], quick: bool, loads: tuple[float, float]) -> str:
    p = {size: {e: _util.percentile_us(ns, 50) for e, ns in by.items()} for size, by in results.items()}
    rows = []
    for engine in ENGINES:
        big_ms = p["big"][engine] / 1e3
        rows.append(
            [
                engine,
                _util.format_number(p["small"][engine]),
                _util.format_number(_util.percentile_us(results["small"][engine], 90)),
                _util.format_number(big_ms),
                _util.format_number(2 * BIG / (big_ms / 1e3) / 1e9),
            ]
        )
    table = _util.format_table(
        ["Engine", "echo p50 us", "echo p90 us", "64 MiB echo p50 ms", "64 MiB GB/s (both ways)"], rows
    )
    cg, ours = COMPILED
    targets = [
        _util.Target("echo p50, raycg / Ray CG", p["small"][ours] / p["small"][cg], ECHO_LIMIT, "x"),
        _util.Target("64 MiB echo time, raycg / Ray CG", p["big"][ours] / p["big"][cg], BIG_LIMIT, "x"),
    ]
    n_small, n_big = (len(results[s][ours]) for s in ("small", "big"))
    return "\n".join(
        [
            f"### {_util.now_utc()}{' (--quick: a smoke run)' if quick else ''}",
            "",
            f"Machine: {_util.describe_machine()}, Ray {ray.__version__}.",
            f"Run: `python -m benchmarks multinode`: a 2-node ray.cluster_utils.Cluster on this machine "
            f"(head: the driver; worker: one echo actor per engine, pinned by a custom resource), "
            f"{n_small} small and {n_big} 64 MiB echoes per engine, in 2 rounds of turns; "
            f"raycg's streams on loopback; load average {loads[0]:.2f} before, {loads[1]:.2f} after.",
            "",
            table,
            "",
            _util.format_targets(targets),
        ]
    )


def main(argv: list[str]) -> int:
    parser = _util.make_parser("multinode", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    load = _util.warn_if_busy()
    t0 = time.monotonic()
    results = run(QUICK if args.quick else FULL)
    text = entry(results, args.quick, (load, os.getloadavg()[0]))
    print(text)
    print(f"\n({time.monotonic() - t0:.0f} s)")
    if args.record:
        _util.record_run(SECTION, text)
        print(f"\nrecorded in {_util.RESULTS_PATH}")
    return 0  # a missed target is a result, not a failure to run
