"""The compiled-graph benchmark's cases: the graphs, the values, how much is sampled,
the targets, and what a run returns (bench_graph.py runs them, _graph_report.py reports)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from ray.dag import MultiOutputNode

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
# What an idle raycg graph may cost, driver and actors together, above the same
# processes under Ray core (its own threads: the core workers' gRPC and event loops).
IDLE_TOTAL_LIMIT_PCT = 0.5


def value_for(size: str) -> Any:
    if size == "small":
        return SMALL_VALUE
    return np.ones((MIB if size == "mib1" else 8 * MIB) // 8)  # float64


Seconds = dict[int, dict[str, list[float]]]  # actors -> engine -> one per repetition


@dataclasses.dataclass
class Results:
    latency: dict[str, dict[str, list[int]]]  # case label -> engine -> ns per execution
    throughput: dict[str, list[int]]  # engine -> ns per execution, one per batch
    async_throughput: dict[str, list[int]]  # the same, with execute_async and await
    compile_s: Seconds
    first_s: Seconds  # compile and first execution
    idle_pct: dict[str, float]  # engine -> % of a core per actor
    idle_total_pct: dict[str, float]  # engine -> % of a core, the driver and the actors together
