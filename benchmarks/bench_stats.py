"""What ``graph.stats()`` recording costs, which is on by default.

``python -m benchmarks stats [--quick] [--record]``: the same chain of 2 actors, once
on actors that record (the default) and once on actors started with ``RAYCG_STATS=0``,
interleaved in batches in one run; p50 and p90 of one execution, and the difference.
Also the in-process cost of one recorded event (two clock reads and a list store).
"""

from __future__ import annotations

import timeit

import ray
from ray.dag import InputNode

import raycg

from . import _util


@ray.remote(num_cpus=0)
class Stage:
    def echo(self, x: object) -> object:
        return x


def _graph(stats_on: bool) -> tuple[object, list]:
    env = {"env_vars": {"RAYCG_STATS": "1" if stats_on else "0"}}
    a, b = Stage.options(runtime_env=env).remote(), Stage.options(runtime_env=env).remote()
    with InputNode() as inp:
        graph = raycg.compile(b.echo.bind(a.echo.bind(inp)))
    return graph, [a, b]


def _event_cost_ns() -> float:
    from raycg.runtime._stats import Recorder, now_ns

    rec = Recorder()

    def record() -> None:
        t0 = now_ns()
        rec.add(now_ns() - t0)

    n = 200_000
    return (timeit.timeit(record, number=n) - timeit.timeit(lambda: None, number=n)) / n * 1e9


def main(argv: list[str]) -> int:
    args = _util.make_parser("stats", __doc__.splitlines()[0]).parse_args(argv)
    load = _util.warn_if_busy()
    ray.init(include_dashboard=False, log_to_driver=False)
    graphs = {"stats on (default)": _graph(True), "RAYCG_STATS=0": _graph(False)}
    try:
        for graph, _ in graphs.values():
            for i in range(300):
                ray.get(graph.execute(i))  # type: ignore[attr-defined]

        def runner(graph: object) -> object:
            return lambda n: _util.time_calls(lambda x: ray.get(graph.execute(x)), 1, n)  # type: ignore[attr-defined]

        total, batch = (2000, 200) if args.quick else (20000, 1000)
        with _util.gc_disabled():
            samples = _util.interleave({k: runner(g) for k, (g, _) in graphs.items()}, total, batch)
    finally:
        for graph, actors in graphs.values():
            graph.teardown()  # type: ignore[attr-defined]
            for a in actors:
                ray.kill(a)
        ray.shutdown()
    rows = [[k, *(f"{_util.percentile_us(s, q):.1f}" for q in (50, 90))] for k, s in samples.items()]
    on, off = (_util.percentile_us(s, 50) for s in samples.values())
    event = _event_cost_ns()
    table = _util.format_table(["chain of 2, one execution", "p50 µs", "p90 µs"], rows)
    text = (
        f"{table}\n\nStats cost, p50: {on - off:+.2f} µs per execution ({(on - off) / off:+.1%}); "
        f"one recorded event in-process: {event:.0f} ns (a chain of 2 records 2 per actor)."
    )
    print(text)
    if args.record:
        entry = (
            f"### {_util.now_utc()}\n\n{_util.describe_machine()}; Ray {ray.__version__}; "
            f"load average {load:.2f}.\n\n{text}\n"
        )
        _util.record_run("Stats", entry)
    return 0
