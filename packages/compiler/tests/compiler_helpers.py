"""What the compiler's tests share: an actor class, a function task, options, and
compile_plan with linting on. Imported by the tests (conftest.py holds the fixtures)."""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.experimental.channel.communicator import Communicator

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


def kill_and_wait(actor: Any, timeout_s: float = 30.0) -> None:
    """``ray.kill(actor)``, then wait until a call to it fails as dead. The kill is
    asynchronous: a call made just after it may still be served (it reached the actor
    before the kill did), so one failing call is waited for, not assumed."""
    ray.kill(actor)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.echo.remote(None), timeout=max(0.1, deadline - time.monotonic()))
        except ray.exceptions.RayActorError:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{actor} still answers {timeout_s} s after ray.kill")
        time.sleep(0.05)


def compile_debug(dag: object, options: Options = OPTIONS, **kwargs: Any) -> CompiledPlan:
    """compile_plan with the IR linted after every pass."""
    return compile_plan(dag, options, debug=True, **kwargs)


class Comm(Communicator):
    """What the compiler asks of an instance: its actors, their ranks, its size."""

    def __init__(self, actors: list[Any]):
        self.actors = list(actors)

    def initialize(self, rank: int) -> None:
        pass

    def get_actor_handles(self) -> list[Any]:
        return self.actors

    def get_rank(self, actor: Any) -> int:
        return [a._actor_id for a in self.actors].index(actor._actor_id)

    def get_self_rank(self) -> int | None:
        return None

    def get_world_size(self) -> int:
        return len(self.actors)

    def send(self, value: Any, peer_rank: int) -> None: ...
    def recv(self, shape: Any, dtype: Any, peer_rank: int, allocator: Any = None) -> Any: ...
    @property
    def recv_stream(self) -> Any: ...
    @property
    def send_stream(self) -> Any: ...
    def allgather(self, send_buf: Any, recv_buf: Any) -> None: ...
    def allreduce(self, send_buf: Any, recv_buf: Any, op: Any = None) -> None: ...
    def reducescatter(self, send_buf: Any, recv_buf: Any, op: Any = None) -> None: ...
    def destroy(self) -> None: ...
    def get_transport_name(self) -> str:
        return "cpu"

    @classmethod
    def generate_communicator_id(cls) -> str:
        return "comm"
