"""enable_asyncio=True: execute_async and await, without ever blocking the loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import ray
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import ActorDiedError, RayChannelError, RayTaskError

import raycg

from .conftest import Worker, wait_process_gone

pytestmark = [pytest.mark.ray, pytest.mark.timeout(90)]


def run_in(loop_kind: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(main())
    return asyncio.run(main())


class Ticker:
    """Counts how often the loop let it run, and the longest gap between two ticks."""

    def __init__(self) -> None:
        self.ticks, self.longest_gap_s, self._stop = 0, 0.0, False

    async def run(self) -> None:
        last = time.monotonic()
        while not self._stop:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.ticks, self.longest_gap_s = self.ticks + 1, max(self.longest_gap_s, now - last)
            last = now

    def stop(self) -> None:
        self._stop = True


LOOPS = ["asyncio", "uvloop"]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_slow_execution_does_not_block_the_loop(actors: list, loop_kind: str) -> None:
    with InputNode() as inp:
        dag = actors[0].sleep_then_echo.bind(inp, 0.5)

    async def main() -> tuple[object, Ticker]:
        graph = raycg.compile(dag, enable_asyncio=True)  # compiled inside the running loop
        ticker = Ticker()
        task = asyncio.create_task(ticker.run())
        fut = await graph.execute_async("slow")
        value = await fut
        ticker.stop()
        await task
        graph.teardown()
        return value, ticker

    value, ticker = run_in(loop_kind, main)
    assert value == "slow"
    # 0.5 s of waiting at 5 ms a tick: a blocked loop would tick a handful of times.
    assert ticker.ticks > 30, ticker.ticks


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_full_pipeline_does_not_block_the_loop(actors: list, loop_kind: str) -> None:
    graph = None

    async def main() -> tuple[list, Ticker]:
        nonlocal graph
        with InputNode() as inp:
            graph = raycg.compile(
                actors[0].sleep_then_echo.bind(inp, 0.05), enable_asyncio=True, max_inflight_executions=2
            )
        ticker = Ticker()
        task = asyncio.create_task(ticker.run())
        futs = [await graph.execute_async(i) for i in range(8)]  # waits for room 6 times
        values = [await f for f in futs]
        ticker.stop()
        await task
        return values, ticker

    try:
        values, ticker = run_in(loop_kind, main)
    finally:
        graph.teardown()
    assert values == list(range(8))
    assert ticker.ticks > 20, ticker.ticks


def test_many_coroutines_get_their_own_results(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        graph = raycg.compile(MultiOutputNode([a.inc.bind(inp), b.echo.bind(inp)]), enable_asyncio=True)

    async def one(i: int) -> list:
        futs = await graph.execute_async(i)
        await asyncio.sleep(0.001 * (i % 3))
        return [await f for f in reversed(futs)]

    async def main() -> list:
        return await asyncio.gather(*(one(i) for i in range(40)))

    try:
        assert asyncio.run(main()) == [[i, i + 1] for i in range(40)]
    finally:
        graph.teardown()


def test_failures_surface_at_the_await(ray_local: None) -> None:
    a, b = Worker.remote(), Worker.remote()
    with InputNode() as inp:
        graph = raycg.compile(b.inc.bind(a.fail.bind(inp)), enable_asyncio=True)
    with InputNode() as inp:
        dying = raycg.compile(
            b.sleep_then_echo.bind(a.inc.bind(inp), 0.3), enable_asyncio=True, get_timeout=-1
        )

    async def main() -> None:
        with pytest.raises(RayTaskError) as info:
            await (await graph.execute_async(1))
        assert isinstance(info.value, KeyError)
        graph.teardown()
        with pytest.raises(RayChannelError):
            await graph.execute_async(1)
        fut = await dying.execute_async(1)
        ray.kill(b)
        with pytest.raises(ActorDiedError):
            await fut

    try:
        asyncio.run(main())
    finally:
        ray.kill(a)


def test_execute_async_needs_enable_asyncio(actors: list) -> None:
    with InputNode() as inp:
        graph = raycg.compile(actors[0].echo.bind(inp))
    try:
        with pytest.raises(ValueError, match="enable_asyncio"):
            asyncio.run(graph.execute_async(1))
    finally:
        graph.teardown()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_more_coroutines_than_in_flight_never_stall_the_loop(actors: list, loop_kind: str) -> None:
    # docs/asyncio.md's gather: more coroutines than max_inflight_executions. Those past
    # the limit wait for room on worker threads, one of which holds the submit lock
    # while it waits for the oldest execution; the loop must never wait on that lock.
    method_s = 0.4
    with InputNode() as inp:
        graph = raycg.compile(
            actors[0].sleep_then_echo.bind(inp, method_s), enable_asyncio=True, max_inflight_executions=2
        )

    async def one(i: int) -> object:
        return await (await graph.execute_async(i))

    async def main() -> tuple[list, Ticker]:
        ticker = Ticker()
        task = asyncio.create_task(ticker.run())
        values = await asyncio.gather(*(one(i) for i in range(8)))
        ticker.stop()
        await task
        return values, ticker

    try:
        values, ticker = run_in(loop_kind, main)
    finally:
        graph.teardown()
    assert values == list(range(8))
    # A loop blocked on the lock misses ticks for most of an execution.
    assert ticker.longest_gap_s < method_s / 2, (ticker.longest_gap_s, ticker.ticks)


def observe_teardown(monkeypatch: pytest.MonkeyPatch, ticker: Ticker) -> dict[str, Any]:
    """Make every graph's teardown, when it stops the executors (the blocking Ray
    calls), note its thread ("thread") and whether ``ticker`` ticked meanwhile
    ("ticked"): it waits for a tick first, which a blocked loop never gives."""
    from raycg.runtime import _graph

    seen: dict[str, Any] = {}
    stop_executors = _graph.CompiledGraph._stop_executors

    def observed_stop(graph: _graph.CompiledGraph) -> None:
        seen["thread"] = threading.get_ident()
        ticks = ticker.ticks
        deadline = time.monotonic() + 10  # a bound, not a measure: the loop ticks or not
        while ticker.ticks == ticks and time.monotonic() < deadline:
            time.sleep(0.001)
        seen["ticked"] = ticker.ticks > ticks
        stop_executors(graph)

    monkeypatch.setattr(_graph.CompiledGraph, "_stop_executors", observed_stop)
    return seen


def test_a_fault_met_on_the_loop_is_handled_off_it(ray_local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # The caller's monitor, which would see the death first (on its own thread), is off:
    # the first to meet it is an ``await fut`` on the loop, whose zero-timeout read sees
    # the dead writer. The teardown that follows asks the surviving actor to stop its
    # executor (a blocking Ray call): it must run off the loop, which keeps ticking.
    from raycg.runtime import _monitor

    monkeypatch.setattr(_monitor, "watch", lambda graph: None)
    ticker = Ticker()
    seen = observe_teardown(monkeypatch, ticker)
    a, b = Worker.remote(), Worker.remote()
    b_pid = ray.get(b.pid.remote())
    with InputNode() as inp:
        graph = raycg.compile(
            b.sleep_then_echo.bind(a.inc.bind(inp), 30), enable_asyncio=True, get_timeout=-1
        )

    async def one(fut: Any) -> str:
        try:
            await fut
        except Exception as e:
            return type(e).__name__
        return "a value"

    async def main() -> tuple[list[str], int]:
        task = asyncio.create_task(ticker.run())
        futs = [await graph.execute_async(i) for i in range(8)]
        ray.kill(b)
        wait_process_gone(b_pid)
        outcomes = await asyncio.gather(*(one(f) for f in futs))
        ticker.stop()
        await task
        return outcomes, threading.get_ident()

    try:
        outcomes, loop_thread = asyncio.run(main())
        assert outcomes == ["ActorDiedError"] * 8
        assert seen["thread"] != loop_thread, "the teardown ran on the event loop's thread"
        assert seen["ticked"], "the loop did not tick while the teardown ran"
        assert graph.is_teardown
        assert ray.get(a.inc.remote(1)) == 2  # the survivor serves ordinary calls
    finally:
        graph.teardown()
        ray.kill(a)


def test_a_broken_promise_tears_down_off_the_loop(actors: list, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    ticker = Ticker()
    seen = observe_teardown(monkeypatch, ticker)
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(_direct_return=True))
    graph = raycg.compile(dag, enable_asyncio=True, get_timeout=60)

    async def main() -> int:
        task = asyncio.create_task(ticker.run())
        try:
            with pytest.raises(RayTaskError, match="broke its _direct_return promise"):
                await (await graph.execute_async((torch.ones(3), 1)))
        finally:
            ticker.stop()
            await task
        return threading.get_ident()

    try:
        loop_thread = asyncio.run(main())
        assert graph.is_teardown
        assert seen["thread"] != loop_thread, "the teardown ran on the event loop's thread"
        assert seen["ticked"], "the loop did not tick while the teardown ran"
    finally:
        graph.teardown()
