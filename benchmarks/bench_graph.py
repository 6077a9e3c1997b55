"""Compiled-graph benchmark: Ray core vs Ray's Compiled Graph vs raycg, on the same graphs.

Three engines, in one run, each on its own actors: Ray core (plain ``.remote()`` calls),
Ray's Compiled Graph (``dag.experimental_compile()``) and raycg (``raycg.compile(dag)``).
Measured: the latency of one execution (echo, chains of 2 and 4, fan-out to 4, 1 and
8 MiB numpy arrays), the throughput of a chain of 2 with 8 executions in flight, the
wall time of a first compile on fresh actors, and the CPU an idle graph burns.

Fairness on a small machine: Ray's Compiled Graph busy-polls, each of its actors burning
a core for as long as its graph exists, so only the engine whose turn it is may run: the
other engines' actor processes are stopped (SIGSTOP) and continued (SIGCONT) when their
turn comes. The engines take turns in short batches, each round starting with the next
one, so slow drift is shared; every batch begins with unrecorded executions (its actors
were stopped since their last batch), and the garbage collector is off while timing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import ray
from ray.dag import InputNode

import raycg

from . import _util
from ._graph_cases import (
    COMPILE_ACTORS,
    COMPILED,
    CORE,
    ENGINES,
    FIRST_TIMEOUT_S,
    IDLE_ACTORS,
    IN_FLIGHT,
    LATENCY_CASES,
    QUICK,
    RAY_CG,
    RAYCG,
    SMALL_VALUE,
    Case,
    Plan,
    Results,
    Sampling,
    Seconds,
    Shape,
    Stage,
    chain,
    value_for,
)
from ._graph_report import entry, plot

SECTION = "Compiled graphs"
PLOT_PATH = _util.RESULTS_PATH.parent / "img" / "graph-latency.svg"


# --- the engines' actors, and whose turn it is ----------------------------------------


class Deployment:
    """One engine's fresh actors for one case, and the case's graph on them.

    Each actor serves one plain call (its pid) before anything is compiled, so that
    ``compile_s``, the wall time of the compile, never counts actor start-up.
    ``first_s`` adds the first execution: an engine may defer set-up work to it.
    """

    def __init__(self, engine: str, shape: Shape, loop: asyncio.AbstractEventLoop | None = None):
        self.engine = engine
        self.loop = loop
        self.actors = [Stage.remote() for _ in range(shape.n_actors)]
        self.pids: list[int] = ray.get([actor.pid.remote() for actor in self.actors])
        self.graph: Any = None
        self.compile_s = self.first_s = float("nan")
        if engine == CORE:
            self.submit: Callable[[Any], Any] = functools.partial(shape.call, self.actors)
            return
        with InputNode() as inp:
            dag = shape.dag(self.actors, inp)
        if loop is not None:  # Ray's async graph binds to the loop current at its compile
            asyncio.set_event_loop(loop)
        options = {"enable_asyncio": True} if loop is not None else {}
        t0 = time.perf_counter()
        self.graph = (
            dag.experimental_compile(**options) if engine == RAY_CG else raycg.compile(dag, **options)
        )
        self.compile_s = time.perf_counter() - t0
        self.submit = self.graph.execute
        if loop is not None:
            self.first_s = time.perf_counter() - t0
            return
        ray.get(self.submit(SMALL_VALUE), timeout=FIRST_TIMEOUT_S)
        self.first_s = time.perf_counter() - t0

    def close(self) -> None:
        try:
            if self.graph is not None:
                self.graph.teardown()
        finally:
            for actor in self.actors:
                ray.kill(actor)  # its worker process exits: the process count stays low


class Turns:
    """Lets one engine's actors run at a time; the others' processes are stopped."""

    def __init__(self) -> None:
        self._pids: dict[str, list[int]] = {}
        self._current: str | None = None

    def add(self, engine: str, pids: list[int]) -> None:
        self._pids[engine] = pids
        self._signal(pids, signal.SIGSTOP)  # a Ray CG graph spins from its compile on

    def give(self, engine: str) -> None:
        if engine == self._current:
            return
        for other, pids in self._pids.items():
            if other != engine:
                self._signal(pids, signal.SIGSTOP)
        self._signal(self._pids[engine], signal.SIGCONT)
        self._current = engine

    def release(self) -> None:
        """Continue every process: teardown and ray.kill need them running."""
        for pids in self._pids.values():
            self._signal(pids, signal.SIGCONT)
        self._current = None

    @staticmethod
    def _signal(pids: list[int], sig: int) -> None:
        for pid in pids:
            os.kill(pid, sig)


@contextlib.contextmanager
def deployed(
    shape: Shape, engines: tuple[str, ...] = ENGINES, loop: asyncio.AbstractEventLoop | None = None
) -> Iterator[tuple[dict, Turns]]:
    """Each engine's deployment of ``shape``, checked, all stopped; then torn down and killed."""
    deployments: dict[str, Deployment] = {}
    turns = Turns()
    try:
        for engine in engines:
            deployments[engine] = Deployment(engine, shape, loop)
            turns.add(engine, deployments[engine].pids)
        for engine, deployment in deployments.items():
            turns.give(engine)
            if loop is None:
                _check(deployment, shape)
        yield deployments, turns
    finally:
        turns.release()
        for deployment in deployments.values():
            deployment.close()


def _check(deployment: Deployment, shape: Shape) -> None:
    """One execution (it also warms the graph up), and what it returned."""
    for size in ("small", "mib1"):
        value = value_for(size)
        out = ray.get(deployment.submit(value), timeout=FIRST_TIMEOUT_S)
        expected = shape.expect(shape.n_actors, value)
        same = [np.array_equal(a, b) for a, b in zip(_as_list(out), _as_list(expected))]
        if not all(same):
            raise AssertionError(f"{deployment.engine} returned something other than expected")


def _as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


# --- measuring ----------------------------------------------------------------------


def _latency_runner(deployment: Deployment, turns: Turns, value: Any, warmup: int) -> Callable:
    def execute(v: Any) -> object:
        return ray.get(deployment.submit(v))

    def run(n: int) -> list[int]:
        turns.give(deployment.engine)
        for _ in range(warmup):
            execute(value)
        with _util.gc_disabled():
            return _util.time_calls(execute, value, n)

    return run


def _pipeline(submit: Callable[[Any], Any], value: Any, n: int) -> None:
    """``n`` executions, ``IN_FLIGHT`` of them submitted at any time: get the oldest, submit one."""
    in_flight = collections.deque(submit(value) for _ in range(min(IN_FLIGHT, n)))
    for _ in range(n - len(in_flight)):
        ray.get(in_flight.popleft())
        in_flight.append(submit(value))
    while in_flight:
        ray.get(in_flight.popleft())


def _pipelined_runner(deployment: Deployment, turns: Turns, warmup: int) -> Callable:
    """Per batch, one sample: nanoseconds per execution over the whole batch."""

    def run(n: int) -> list[int]:
        turns.give(deployment.engine)
        _pipeline(deployment.submit, SMALL_VALUE, warmup)
        with _util.gc_disabled():
            t0 = time.perf_counter_ns()
            _pipeline(deployment.submit, SMALL_VALUE, n)
            return [(time.perf_counter_ns() - t0) // n]

    return run


async def _pipeline_async(graph: Any, value: Any, n: int) -> None:
    """As _pipeline, with execute_async and await: ``IN_FLIGHT`` futures outstanding."""
    in_flight = collections.deque([await graph.execute_async(value) for _ in range(min(IN_FLIGHT, n))])
    for _ in range(n - len(in_flight)):
        await in_flight.popleft()
        in_flight.append(await graph.execute_async(value))
    while in_flight:
        await in_flight.popleft()


def _async_runner(deployment: Deployment, turns: Turns, warmup: int) -> Callable:
    """Per batch, one sample: nanoseconds per execution, on the deployment's event loop."""
    loop = deployment.loop
    assert loop is not None

    def run(n: int) -> list[int]:
        turns.give(deployment.engine)
        loop.run_until_complete(_pipeline_async(deployment.graph, SMALL_VALUE, warmup))
        with _util.gc_disabled():
            t0 = time.perf_counter_ns()
            loop.run_until_complete(_pipeline_async(deployment.graph, SMALL_VALUE, n))
            return [(time.perf_counter_ns() - t0) // n]

    return run


def measure_async_throughput(plan: Plan) -> dict[str, list[int]]:
    """The pipelined chain of 2 again, from an event loop (enable_asyncio=True); Ray core
    has no compiled graph to run this way."""
    sampling = plan.pipelined
    loop = asyncio.new_event_loop()
    try:
        with deployed(chain(2), (RAY_CG, RAYCG), loop) as (deployments, turns):
            runners = {e: _async_runner(d, turns, sampling.warmup) for e, d in deployments.items()}
            return _util.interleave(runners, sampling.total, sampling.batch)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def measure_latency(case: Case, plan: Plan) -> dict[str, list[int]]:
    sampling: Sampling = getattr(plan, case.size)
    value = value_for(case.size)
    with deployed(case.shape) as (deployments, turns):
        runners = {e: _latency_runner(d, turns, value, sampling.warmup) for e, d in deployments.items()}
        return _util.interleave(runners, sampling.total, sampling.batch)


def measure_throughput(plan: Plan) -> dict[str, list[int]]:
    sampling = plan.pipelined
    with deployed(chain(2)) as (deployments, turns):
        runners = {e: _pipelined_runner(d, turns, sampling.warmup) for e, d in deployments.items()}
        return _util.interleave(runners, sampling.total, sampling.batch)


def measure_compile(plan: Plan) -> tuple[Seconds, Seconds]:
    """Seconds per first compile of a chain over n fresh actors, and to its first result.

    One engine's actors exist at a time (nothing to stop); the engines alternate which
    goes first from one repetition to the next.
    """
    compile_s: Seconds = {n: {e: [] for e in COMPILED} for n in COMPILE_ACTORS}
    first_s: Seconds = {n: {e: [] for e in COMPILED} for n in COMPILE_ACTORS}
    for rep in range(plan.compile_reps):
        for n in COMPILE_ACTORS:
            for engine in COMPILED[rep % 2 :] + COMPILED[: rep % 2]:
                with deployed(chain(n), (engine,)) as (deployments, _):
                    compile_s[n][engine].append(deployments[engine].compile_s)
                    first_s[n][engine].append(deployments[engine].first_s)
    return compile_s, first_s


def measure_idle(plan: Plan) -> tuple[dict[str, float], dict[str, float]]:
    """What a graph (a chain of 2) burns while nobody executes it: % of a core per
    actor, and % of a core for the driver and the actors together (engine -> %)."""
    with deployed(chain(IDLE_ACTORS)) as (deployments, turns):
        idle = {e: _idle_pct(d, turns, plan.idle_s) for e, d in deployments.items()}
    return {e: per_actor for e, (per_actor, _) in idle.items()}, {e: total for e, (_, total) in idle.items()}


def _idle_pct(deployment: Deployment, turns: Turns, idle_s: float) -> tuple[float, float]:
    """(% per actor, % for the driver and the actors together). The driver's share is
    its whole process: Ray's own threads and the driver-side threads of every engine's
    graph (they all exist at once; only the actors of the others are stopped)."""
    turns.give(deployment.engine)
    ray.get(deployment.submit(SMALL_VALUE))
    time.sleep(0.5)  # past every wait's spin: from here on the graph is idle
    pids = [os.getpid(), *deployment.pids]
    cpu0, t0 = [_util.cpu_seconds_fine(p) for p in pids], time.monotonic()
    time.sleep(idle_s)
    cpu1, t1 = [_util.cpu_seconds_fine(p) for p in pids], time.monotonic()
    used = [b - a for a, b in zip(cpu0, cpu1)]
    wall = t1 - t0
    return 100 * sum(used[1:]) / wall / len(deployment.pids), 100 * sum(used) / wall


def run(plan: Plan) -> Results:
    ray.init(include_dashboard=False, log_to_driver=False)
    # Ray's Compiled Graph logs every teardown at INFO, dozens of lines per run.
    logging.getLogger("ray.dag.compiled_dag_node").setLevel(logging.WARNING)
    try:
        latency = {}
        for case in LATENCY_CASES:
            print(f"measuring: {case.label}", flush=True)
            latency[case.label] = measure_latency(case, plan)
        print("measuring: throughput, compile time, idle CPU", flush=True)
        throughput = measure_throughput(plan)
        print("measuring: asyncio throughput", flush=True)
        async_throughput = measure_async_throughput(plan)
        compile_s, first_s = measure_compile(plan)
        return Results(latency, throughput, async_throughput, compile_s, first_s, *measure_idle(plan))
    finally:
        ray.shutdown()


def main(argv: list[str]) -> int:
    parser = _util.make_parser("graph", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    load = _util.warn_if_busy()
    t0 = time.monotonic()
    results = run(plan)
    # After as well as before: other work that starts during a run shows only here.
    text = entry(plan, args.quick, (load, os.getloadavg()[0]), results)
    print(text)
    print(f"\n({time.monotonic() - t0:.0f} s)")
    if args.record:
        plot(results, f"python -m benchmarks graph, {_util.now_utc()}", PLOT_PATH)
        _util.record_run(SECTION, text)
        print(f"\nrecorded in {_util.RESULTS_PATH}, plot in {PLOT_PATH}")
    return 0  # a missed target is a result, not a failure to run
