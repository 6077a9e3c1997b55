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
import dataclasses
import functools
import logging
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.dag import InputNode, MultiOutputNode

import raycg

from . import _util

SECTION = "Compiled graphs"
PLOT_PATH = _util.RESULTS_PATH.parent / "img" / "graph-latency.svg"

CORE, RAY_CG, RAYCG = "Ray core", "Ray CG", "raycg"
ENGINES = (CORE, RAY_CG, RAYCG)
COMPILED = (RAY_CG, RAYCG)

SMALL_VALUE = 42
MIB = 1 << 20
IN_FLIGHT = 8  # executions submitted and not yet read, in the throughput case
COMPILE_ACTORS = (1, 4, 8)
IDLE_ACTORS = 2
# Ray CG's first execution over 8 actors takes seconds here (every actor busy-polls on
# two cores), past its default get timeout of 10 s.
FIRST_TIMEOUT_S = 120.0


@ray.remote(num_cpus=0)  # no CPU reserved: a dozen actors must fit on a 2-core machine
class Stage:
    def echo(self, value: object) -> object:
        return value

    def pid(self) -> int:
        return os.getpid()


# --- what is run --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How many executions to time, in batches of how many, after how many unrecorded."""

    total: int
    batch: int
    warmup: int


# Many short batches: where the kernel places the caller and the actors (one CPU or two)
# moves a small latency by up to 4x, and each batch after a sleep draws it anew.
@dataclasses.dataclass(frozen=True)
class Plan:
    small: Sampling = Sampling(2_000, 100, 20)
    mib1: Sampling = Sampling(300, 30, 3)
    mib8: Sampling = Sampling(90, 10, 2)
    pipelined: Sampling = Sampling(3_000, 300, 2 * IN_FLIGHT)
    compile_reps: int = 3
    idle_s: float = 3.0


QUICK = Plan(
    small=Sampling(300, 100, 10),
    mib1=Sampling(60, 20, 2),
    mib8=Sampling(20, 10, 2),
    pipelined=Sampling(600, 200, IN_FLIGHT),
    compile_reps=1,
    idle_s=1.0,
)


@dataclasses.dataclass(frozen=True)
class Shape:
    """A graph over ``n_actors`` actors: as a DAG to compile, and as plain Ray calls."""

    n_actors: int
    dag: Callable[[list[Any], Any], Any]  # (actors, input node) -> DAG
    call: Callable[[list[Any], Any], Any]  # (actors, value) -> ref or list of refs
    expect: Callable[[int, Any], Any]  # (n_actors, value) -> what an execution returns


def _chain_dag(actors: list[Any], inp: Any) -> Any:
    node = inp
    for actor in actors:
        node = actor.echo.bind(node)
    return node


def _chain_call(actors: list[Any], value: Any) -> Any:
    ref = value
    for actor in actors:
        ref = actor.echo.remote(ref)  # a ref as argument: Ray passes the value along
    return ref


def _fan_out_dag(actors: list[Any], inp: Any) -> Any:
    return MultiOutputNode([actor.echo.bind(inp) for actor in actors])


def _fan_out_call(actors: list[Any], value: Any) -> list[Any]:
    return [actor.echo.remote(value) for actor in actors]


def chain(n: int) -> Shape:
    return Shape(n, _chain_dag, _chain_call, lambda _, value: value)


def fan_out(n: int) -> Shape:
    return Shape(n, _fan_out_dag, _fan_out_call, lambda n, value: [value] * n)


@dataclasses.dataclass(frozen=True)
class Case:
    """One latency measurement, and its target: raycg's p50 over Ray CG's, at most."""

    label: str
    shape: Shape
    size: str  # "small", "mib1" or "mib8": which value, and which Sampling of the Plan
    limit: float


LATENCY_CASES = (
    Case("echo", chain(1), "small", 0.25),
    Case("chain of 2", chain(2), "small", 0.3),
    Case("chain of 4", chain(4), "small", 0.15),
    Case("fan-out to 4", fan_out(4), "small", 0.15),
    Case("1 MiB numpy echo", chain(1), "mib1", 0.5),
    Case("8 MiB numpy echo", chain(1), "mib8", 0.8),
)
THROUGHPUT_LIMIT = 3.0  # raycg at least 3x Ray CG's executions/s
COMPILE_LIMIT = 0.5
IDLE_LIMIT_PCT = 1.0


def _value(size: str) -> Any:
    if size == "small":
        return SMALL_VALUE
    return np.ones((MIB if size == "mib1" else 8 * MIB) // 8)  # float64


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
        value = _value(size)
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
    value = _value(case.size)
    with deployed(case.shape) as (deployments, turns):
        runners = {e: _latency_runner(d, turns, value, sampling.warmup) for e, d in deployments.items()}
        return _util.interleave(runners, sampling.total, sampling.batch)


def measure_throughput(plan: Plan) -> dict[str, list[int]]:
    sampling = plan.pipelined
    with deployed(chain(2)) as (deployments, turns):
        runners = {e: _pipelined_runner(d, turns, sampling.warmup) for e, d in deployments.items()}
        return _util.interleave(runners, sampling.total, sampling.batch)


Seconds = dict[int, dict[str, list[float]]]  # actors -> engine -> one per repetition


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


def measure_idle(plan: Plan) -> dict[str, float]:
    """% of a core per actor that a graph (a chain of 2) burns while nobody executes it."""
    with deployed(chain(IDLE_ACTORS)) as (deployments, turns):
        return {e: _idle_pct(d, turns, plan.idle_s) for e, d in deployments.items()}


def _idle_pct(deployment: Deployment, turns: Turns, idle_s: float) -> float:
    turns.give(deployment.engine)
    ray.get(deployment.submit(SMALL_VALUE))
    cpu0, t0 = sum(map(_util.cpu_seconds, deployment.pids)), time.monotonic()
    time.sleep(idle_s)
    cpu1, t1 = sum(map(_util.cpu_seconds, deployment.pids)), time.monotonic()
    return 100 * (cpu1 - cpu0) / (t1 - t0) / len(deployment.pids)


@dataclasses.dataclass
class Results:
    latency: dict[str, dict[str, list[int]]]  # case label -> engine -> ns per execution
    throughput: dict[str, list[int]]  # engine -> ns per execution, one per batch
    async_throughput: dict[str, list[int]]  # the same, with execute_async and await
    compile_s: Seconds
    first_s: Seconds  # compile and first execution
    idle_pct: dict[str, float]  # engine -> % of a core per actor


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
        return Results(latency, throughput, async_throughput, compile_s, first_s, measure_idle(plan))
    finally:
        ray.shutdown()


# --- reporting ----------------------------------------------------------------------


def p50_us(samples: list[int]) -> float:
    return _util.percentile_us(samples, 50)


def executions_per_s(samples: list[int]) -> float:
    return 1e9 / statistics.median(samples)


def actors_label(n: int) -> str:
    return f"{n} actor{'s' * (n > 1)}"


def median_ms(times: list[float]) -> float:
    """Milliseconds, the median of ``times`` (seconds); NaN for an engine with nothing to time."""
    return 1e3 * statistics.median(times) if times else float("nan")


class AtLeast(_util.Target):
    """A goal that ``measured`` reach ``limit``: for throughput, where more is better."""

    @property
    def met(self) -> bool:
        return self.measured >= self.limit


def _row(what: str, values: dict[str, float], ratio: str) -> list[str]:
    return [what, *(_util.format_number(values.get(e, float("nan"))) for e in ENGINES), ratio]


def _ratio_row(what: str, values: dict[str, float], suffix: str = "") -> list[str]:
    return _row(what, values, f"{values[RAYCG] / values[RAY_CG]:.3g}{suffix}")


def table(results: Results) -> str:
    rows = []
    for case in LATENCY_CASES:
        samples = results.latency[case.label]
        for q in (50, 90) if case.size == "small" else (50,):
            values = {e: _util.percentile_us(s, q) for e, s in samples.items()}
            rows.append(_ratio_row(f"{case.label}, p{q} (µs)", values))
    throughput = {e: executions_per_s(s) for e, s in results.throughput.items()}
    rows.append(_ratio_row(f"chain of 2, {IN_FLIGHT} in flight (executions/s)", throughput, "x"))
    async_tp = {e: executions_per_s(s) for e, s in results.async_throughput.items()}
    rows.append(_ratio_row(f"the same, asyncio, {IN_FLIGHT} in flight (executions/s)", async_tp, "x"))
    for n, times in results.compile_s.items():
        values = {e: median_ms(t) for e, t in times.items()}
        rows.append(_ratio_row(f"cold compile, {actors_label(n)} (ms)", values))
    for n, times in results.first_s.items():
        values = {e: median_ms(t) for e, t in times.items()}
        rows.append(_ratio_row(f"cold compile + first execution, {actors_label(n)} (ms)", values))
    idle = {e: round(pct, 3) for e, pct in results.idle_pct.items()}
    rows.append(_row("idle graph, CPU per actor (% of a core)", idle, "-"))
    return _util.format_table(["Measurement", *ENGINES, "raycg / Ray CG"], rows)


def targets(results: Results) -> list[_util.Target]:
    found: list[_util.Target] = []
    for case in LATENCY_CASES:
        samples = results.latency[case.label]
        ratio = p50_us(samples[RAYCG]) / p50_us(samples[RAY_CG])
        found.append(_util.Target(f"{case.label} p50: raycg / Ray CG", ratio, case.limit, "x"))
    tp = results.throughput
    multiple = executions_per_s(tp[RAYCG]) / executions_per_s(tp[RAY_CG])
    found.append(AtLeast("throughput, chain of 2: raycg / Ray CG at least", multiple, THROUGHPUT_LIMIT, "x"))
    atp = results.async_throughput
    multiple = executions_per_s(atp[RAYCG]) / executions_per_s(atp[RAY_CG])
    found.append(AtLeast("asyncio throughput: raycg / Ray CG at least", multiple, THROUGHPUT_LIMIT, "x"))
    for n, times in results.compile_s.items():
        ratio = median_ms(times[RAYCG]) / median_ms(times[RAY_CG])
        goal = f"cold compile, {actors_label(n)}: raycg / Ray CG"
        found.append(_util.Target(goal, ratio, COMPILE_LIMIT, "x"))
    found.append(
        _util.Target("idle graph: raycg CPU per actor", results.idle_pct[RAYCG], IDLE_LIMIT_PCT, "%")
    )
    return found


def raycg_revision() -> str:
    """The commit of the code measured, marked when the engine's sources differ from it."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    changed = git("status", "--porcelain", "--", "src", "packages", "proto")
    return commit + (" with local changes" if changed else "")


def entry(plan: Plan, quick: bool, loads: tuple[float, float], results: Results) -> str:
    run_line = (
        f"latency: {plan.small.total:,} small / {plan.mib1.total:,} 1 MiB / {plan.mib8.total:,} 8 MiB "
        f"executions per engine and case (batches of {plan.small.batch:,} / {plan.mib1.batch:,} / "
        f"{plan.mib8.batch:,}); throughput: {plan.pipelined.total:,} executions (batches of "
        f"{plan.pipelined.batch:,}); compile: median of {plan.compile_reps}; idle: {plan.idle_s:g} s; "
        f"1-minute load average before and after the run {loads[0]:.2f}, {loads[1]:.2f}"
        + (" — quick run" if quick else "")
    )
    return "\n\n".join(
        [
            f"### {_util.now_utc()}",
            f"Machine: {_util.describe_machine()}, Ray {ray.__version__}, raycg {raycg_revision()}.\n"
            f"Run: {run_line}.",
            table(results),
            _util.format_targets(targets(results)),
        ]
    )


# --- the plot -----------------------------------------------------------------------


Groups = dict[str, dict[str, float]]  # group label -> engine -> value


def _medians_ms(seconds: Seconds, label: Callable[[int], str]) -> Groups:
    return {label(n): {e: median_ms(t) for e, t in times.items()} for n, times in seconds.items()}


def _panels(results: Results) -> list[tuple[str, Groups]]:
    """(title, groups) of each panel of the plot."""
    latency = {c.label: {e: p50_us(s) for e, s in results.latency[c.label].items()} for c in LATENCY_CASES}
    cold = {
        **_medians_ms(results.compile_s, actors_label),
        **_medians_ms(results.first_s, lambda n: f"{actors_label(n)}, + 1st run"),
    }
    throughput = {"throughput": {e: executions_per_s(s) for e, s in results.throughput.items()}}
    return [
        ("latency of one execution, p50 (µs)", latency),
        ("cold compile, and compile + first execution (ms)", cold),
        (f"chain of 2, {IN_FLIGHT} in flight\n(executions/s)", throughput),
        ("idle graph, CPU per actor\n(% of a core)", {"idle": results.idle_pct}),
    ]


def plot(results: Results, title: str, path: Path) -> None:
    """Per case, the three engines side by side, on log scales."""
    import matplotlib  # only for --record: a plain run needs no plotting library

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a smaller, greppable file
    from matplotlib import pyplot as plt

    # Latency across the top; compile, throughput and idle CPU below it.
    fig, axes = plt.subplot_mosaic(
        [["a", "a", "a"], ["b", "c", "d"]], figsize=(12, 8), width_ratios=[4, 1, 1]
    )
    for ax, (panel_title, groups) in zip(axes.values(), _panels(results)):
        _bars(ax, panel_title, groups)
    axes["a"].legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _bars(ax: Any, title: str, groups: Groups) -> None:
    """Grouped bars, one group per case, each bar labelled with its value."""
    width = 0.8 / len(ENGINES)
    floor = 0.01  # a log scale cannot show 0 (an idle raycg may measure 0%)
    for k, engine in enumerate(ENGINES):
        xs = [g + (k - 1) * width for g in range(len(groups))]
        values = [groups[label].get(engine, float("nan")) for label in groups]
        bars = ax.bar(xs, [max(v, floor) for v in values], width, label=engine)
        labels = [_util.format_number(v) for v in values]
        ax.bar_label(bars, labels=labels, fontsize=6, rotation=90, padding=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8, rotation=20)
    ax.set_title(title, fontsize=9)
    ax.margins(y=0.25)


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
