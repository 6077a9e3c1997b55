"""raycg quickstart: the examples of Ray's Compiled Graph documentation, run on raycg.

Builds graphs with Ray's own DAG API (echo, a chain, a multi-output graph), runs each
on Ray core (plain ``.remote()`` calls), on Ray's Compiled Graph
(``dag.experimental_compile()``) and on raycg (``raycg.compile(dag)``), and prints the
time per execution side by side. Then tears a graph down and compiles a second graph on
the same actors.

    ./dev demo            (or: python examples/quickstart.py [--n 2000])
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import ray
from ray.dag import InputNode, MultiOutputNode

import raycg


@ray.remote(num_cpus=0)
class EchoActor:
    def echo(self, msg: object) -> object:
        return msg

    def upper(self, msg: str) -> str:
        return msg.upper()


def per_call_us(run_once: Callable[[int], object], n: int) -> float:
    """Median time of one call in microseconds, over ``n`` calls after a warm-up."""
    for i in range(min(200, n)):
        run_once(i)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        run_once(i)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def compare(name: str, build: Callable[[], object], core: Callable[[int], object], n: int) -> None:
    """Time Ray core, Ray's Compiled Graph and raycg on the same DAG and actors."""
    core_us = per_call_us(core, n)

    ray_graph = build().experimental_compile()  # type: ignore[attr-defined]
    ray_us = per_call_us(lambda i: ray.get(ray_graph.execute(i)), n)
    ray_graph.teardown()  # Ray's graph busy-polls until torn down

    graph = raycg.compile(build())
    raycg_us = per_call_us(lambda i: ray.get(graph.execute(i)), n)
    graph.teardown()

    print(f"{name:<14} {core_us:>10.1f} {ray_us:>12.1f} {raycg_us:>9.1f} {ray_us / raycg_us:>14.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="executions timed per engine")
    n = parser.parse_args().n

    ray.init(include_dashboard=False, log_to_driver=False)
    a, b = EchoActor.remote(), EchoActor.remote()

    # 1. Echo: the first example of Ray's Compiled Graph docs, on raycg.
    with InputNode() as inp:
        dag = a.echo.bind(inp)
    graph = raycg.compile(dag)
    print("echo:", ray.get(graph.execute("hello")))
    graph.teardown()

    # 2. A chain across two actors, and 3. a multi-output graph.
    with InputNode() as inp:
        dag = b.upper.bind(a.echo.bind(inp))
    graph = raycg.compile(dag)
    print("chain:", ray.get(graph.execute("hello")))
    graph.teardown()

    with InputNode() as inp:
        dag = MultiOutputNode([a.echo.bind(inp), b.upper.bind(inp)])
    graph = raycg.compile(dag)
    print("multi-output:", ray.get(graph.execute("hello")))
    # Teardown frees every channel and thread; the actors serve ordinary calls and a
    # second graph at once.
    graph.teardown()
    print("after teardown, ordinary call:", ray.get(a.echo.remote("still here")))
    with InputNode() as inp:
        dag = a.upper.bind(b.echo.bind(inp))
    second = raycg.compile(dag)
    print("second graph on the same actors:", ray.get(second.execute("again")))
    second.teardown()

    # Time per execution, median of n, on the same actors.
    print(f"\nper execution, median of {n} (microseconds):")
    print(f"{'graph':<14} {'Ray core':>10} {'Ray CG':>12} {'raycg':>9} {'raycg vs Ray CG':>15}")

    def echo_dag() -> object:
        with InputNode() as inp:
            return a.echo.bind(inp)

    def chain_dag() -> object:
        with InputNode() as inp:
            return b.echo.bind(a.echo.bind(inp))

    compare("echo", echo_dag, lambda i: ray.get(a.echo.remote(i)), n)
    compare("chain of 2", chain_dag, lambda i: ray.get(b.echo.remote(a.echo.remote(i))), n)
    ray.shutdown()


if __name__ == "__main__":
    main()
