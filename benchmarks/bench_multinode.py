"""Across nodes: Ray core vs Ray's Compiled Graph vs raycg, driver on one node, actor on another.

A 2-node ``ray.cluster_utils.Cluster`` on this machine (the head, where the driver runs,
and one worker node offering the custom resource ``far``); each engine gets its own echo
actor pinned to the worker node. Measured in one run, the engines taking turns (one
engine's actor alive at a time, ``ROUNDS`` rounds): the round trip of a small value
(driver -> actor -> driver), and the throughput of a 64 MiB numpy array echoed the same
way (it crosses twice). In raycg's turns, the same echoes also run over a bare sync
grpcio stream between the same two processes (the driver, and a server started inside
raycg's actor): the bytes, 1 MiB messages, no graph. The floor a graph's gRPC channel
is held to (issue 11: 64 MiB within 2x of it), and what a round trip costs here at all.

Ray's own servers listen on this machine's address (as Ray registers it); raycg's gRPC
servers listen on loopback (RAYCG_GRPC_HOST=127.0.0.1, inherited by the nodes' processes).
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import ray
from ray.cluster_utils import Cluster
from ray.dag import InputNode

import raycg

from . import _util
from ._graph_cases import COMPILED, CORE, ENGINES, FIRST_TIMEOUT_S, MIB, RAY_CG, SMALL_VALUE, Sampling, Stage
from .bench_grpc import CHUNK_BYTES, OPTIONS, _bare_handler

SECTION = "Across nodes"
BIG = 64 * MIB
ECHO_LIMIT = 0.3  # raycg's echo p50 over Ray CG's, at most (issue 11)
BIG_LIMIT = 1.0  # raycg's time per 64 MiB over Ray CG's, at most: throughput at least Ray CG's
BARE_LIMIT = 2.0  # raycg's time per 64 MiB over a bare grpcio stream's, at most (issue 11)
BARE = "bare grpcio"  # a row of the table, measured in raycg's turns
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


# --- a bare grpcio stream between the driver and raycg's actor ------------------------

_SERVERS: list[Any] = []  # the bare server, in the actor's process: kept until stopped


def _start_bare(_actor: object) -> int:
    """Run in the actor's process (``__ray_call__``): a bare echo server on loopback."""
    server = grpc.server(futures.ThreadPoolExecutor(2), options=OPTIONS)
    server.add_generic_rpc_handlers([_bare_handler(_echo_back)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    _SERVERS.append(server)
    return port


def _stop_bare(_actor: object) -> None:
    while _SERVERS:
        _SERVERS.pop().stop(None)


def _echo_back(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    """S: a small value, echoed; a big value's messages are held until E, then sent back
    (as the graph's actor gets a whole value before it returns it)."""
    held: list[bytes] = []
    for msg in requests:
        if msg[:1] == b"S":
            yield msg
        elif msg[:1] == b"E":
            yield from held
            yield b"E"
            held = []
        else:
            held.append(msg)


class BareEcho:
    """The driver's end of the bare stream to the server in ``far``'s actor."""

    def __init__(self, far: Far):
        self._far = far
        port = ray.get(far.actor.__ray_call__.remote(_start_bare), timeout=FIRST_TIMEOUT_S)
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._responses = self._channel.stream_stream("/bench.Bare/Stream")(iter(self._queue.get, None))

    def echo(self, value: Any) -> None:
        if isinstance(value, bytes):
            for off in range(0, len(value), CHUNK_BYTES):
                self._queue.put(value[off : off + CHUNK_BYTES])  # a copy, as raycg's messages are
            self._queue.put(b"E")
            while next(self._responses) != b"E":
                pass
        else:
            self._queue.put(b"S42")
            next(self._responses)

    def close(self) -> None:
        self._queue.put(None)
        self._channel.close()
        ray.get(self._far.actor.__ray_call__.remote(_stop_bare), timeout=FIRST_TIMEOUT_S)


def _time_bare(bare: BareEcho, value: Any, sampling: Sampling, rounds: int) -> list[int]:
    for _ in range(sampling.warmup + 1):
        bare.echo(value)
    with _util.gc_disabled():
        return _util.time_calls(bare.echo, value, -(-sampling.total // rounds))


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
    """size ("small", "big") -> engine (and BARE) -> ns per echo."""
    cluster = _start()
    big = np.ones(BIG // 8)
    big_bytes = big.tobytes()
    out: dict[str, dict[str, list[int]]] = {size: {e: [] for e in (*ENGINES, BARE)} for size in sampling}
    try:
        for r in range(ROUNDS):
            for engine in ENGINES[r % len(ENGINES) :] + ENGINES[: r % len(ENGINES)]:
                far = Far(engine)
                try:
                    assert ray.get(far.submit(SMALL_VALUE), timeout=FIRST_TIMEOUT_S) == SMALL_VALUE
                    assert np.array_equal(ray.get(far.submit(big), timeout=FIRST_TIMEOUT_S), big)
                    for size, value in (("small", SMALL_VALUE), ("big", big)):
                        out[size][engine] += _time(far, value, sampling[size], ROUNDS)
                    if engine == COMPILED[1]:  # the same two processes, without the graph
                        bare = BareEcho(far)
                        try:
                            for size, raw in (("small", SMALL_VALUE), ("big", big_bytes)):
                                out[size][BARE] += _time_bare(bare, raw, sampling[size], ROUNDS)
                        finally:
                            bare.close()
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
    for engine in (*ENGINES, BARE):
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
        _util.Target(
            "64 MiB echo time, raycg / bare grpcio", p["big"][ours] / p["big"][BARE], BARE_LIMIT, "x"
        ),
    ]
    floor = p["small"][BARE] / p["small"][cg]
    n_small, n_big = (len(results[s][ours]) for s in ("small", "big"))
    return "\n".join(
        [
            f"### {_util.now_utc()}{' (--quick: a smoke run)' if quick else ''}",
            "",
            f"Machine: {_util.describe_machine()}, Ray {ray.__version__}.",
            f"Run: `python -m benchmarks multinode`: a 2-node ray.cluster_utils.Cluster on this machine "
            f"(head: the driver; worker: one echo actor per engine, pinned by a custom resource), "
            f"{n_small} small and {n_big} 64 MiB echoes per engine, in 2 rounds of turns; "
            f"raycg's streams on loopback; load average {loads[0]:.2f} before, {loads[1]:.2f} after. "
            f"{BARE}: a bare sync grpcio stream between the driver and raycg's actor (the same two "
            f"processes), in raycg's turns.",
            "",
            table,
            "",
            _util.format_targets(targets),
            "",
            f"The floor: a bare grpcio round trip is {floor:.2f}x Ray CG's echo here; raycg's echo is "
            f"{p['small'][ours] / p['small'][BARE]:.2f}x the bare round trip.",
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
