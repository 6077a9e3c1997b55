"""What the compiler's tests share: an actor class, a function task, options, and
compile_plan with linting on. Imported by the tests (conftest.py holds the fixtures)."""

from __future__ import annotations

import time
from typing import Any

import ray

from raycg.compiler import CompiledPlan, compile_plan
from raycg.proto import Options

OPTIONS = Options(
    submit_timeout_s=10,
    get_timeout_s=10,
    buffer_size_bytes=1 << 20,
    max_inflight_executions=10,
    max_buffered_results=1000,
)


@ray.remote(num_cpus=0)
class Echo:
    def echo(self, x: object, y: object = None) -> object:
        return x

    def add(self, *xs: int, **kws: int) -> int:
        return sum(xs) + sum(kws.values())

    def split(self, x: object) -> tuple[object, object]:
        return x, x

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def fwd(self, x: object, microbatch: int = 0) -> object:
        return x

    def bwd(self, x: object, microbatch: int = 0) -> object:
        return x


@ray.remote
def plain_function(x: object) -> object:
    return x


def compile_debug(dag: object, options: Options = OPTIONS, **kwargs: Any) -> CompiledPlan:
    """compile_plan with the IR linted after every pass."""
    return compile_plan(dag, options, debug=True, **kwargs)
