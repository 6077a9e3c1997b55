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
    """Counts how often the loop let it run."""

    def __init__(self) -> None:
        self.ticks, self._stop = 0, False

    async def run(self) -> None:
        while not self._stop:
            await asyncio.sleep(0.005)
            self.ticks += 1

    def stop(self) -> None:
        self._stop = True


class Gate:
    """A file that the caller's loop creates once ``when()`` holds, and that the actors'
    ``Worker.wait_for`` waits for. The tests make an execution wait at the gate while
    the caller is in the call under test: if that call blocked the loop, the gate would
    never open and the execution would fail (at the method's or the get's bound), so
    the test shows the loop stayed free without measuring time."""

    def __init__(self, path: Any) -> None:
        self.path = str(path)

    async def open_when(self, when: Callable[[], bool], bound_s: float = 30.0) -> None:
        deadline = time.monotonic() + bound_s  # a bound, not a measure
        while not when():
            assert time.monotonic() < deadline, "the gate's condition never held"
            await asyncio.sleep(0.001)
        open(self.path, "w").close()


LOOPS = ["asyncio", "uvloop"]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_slow_execution_does_not_block_the_loop(actors: list, loop_kind: str, tmp_path: Any) -> None:
    gate = Gate(tmp_path / "gate")
    with InputNode() as inp:
        dag = actors[0].wait_for.bind(inp, gate.path)

    async def main() -> object:
        graph = raycg.compile(dag, enable_asyncio=True)  # compiled inside the running loop
        try:
            fut = await graph.execute_async("slow")
            awaiting = False
            opener = asyncio.create_task(gate.open_when(lambda: awaiting))
            awaiting = True
            value = await fut  # the execution waits for the gate, which only a free loop opens
            await opener
            return value
        finally:
            graph.teardown()

    assert run_in(loop_kind, main) == "slow"


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_full_pipeline_does_not_block_the_loop(actors: list, loop_kind: str, tmp_path: Any) -> None:
    gate = Gate(tmp_path / "gate")
    graph = None
    futs: list = []
    pending_at_open: list[int] = []

    def a_call_waits() -> bool:
        # The same call still under way after 20 turns of the loop: it waits for room
        # (the gate holds the first execution), and the loop runs meanwhile.
        if seen[0] != len(futs):
            seen[:] = [len(futs), 0]
        seen[1] += 1
        if seen[1] >= 20:
            pending_at_open.append(len(futs))
            return True
        return False

    seen = [-1, 0]

    async def main() -> list:
        nonlocal graph
        with InputNode() as inp:
            graph = raycg.compile(
                actors[0].wait_for.bind(inp, gate.path),
                enable_asyncio=True,
                max_inflight_executions=2,
                submit_timeout=60,  # past wait_for's bound: a loop blocked in a call fails the test
            )
        opener = asyncio.create_task(gate.open_when(a_call_waits))
        for i in range(8):
            futs.append(await graph.execute_async(i))
        values = [await f for f in futs]
        await opener
        return values

    try:
        assert run_in(loop_kind, main) == list(range(8))
    finally:
        if graph is not None:
            graph.teardown()
    assert pending_at_open and pending_at_open[0] < 8, "no call ever waited for room"


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
def test_more_coroutines_than_in_flight_never_stall_the_loop(
    actors: list, loop_kind: str, tmp_path: Any
) -> None:
    # docs/asyncio.md's gather: more coroutines than max_inflight_executions. Those past
    # the limit wait for room on worker threads, one of which holds the submit lock
    # while it waits for the oldest execution; the loop must never wait on that lock.
    # The oldest execution waits at the gate, which opens once all 8 coroutines have
    # started: a loop stuck in the third one's call would never get there.
    gate = Gate(tmp_path / "gate")
    started = 0
    with InputNode() as inp:
        graph = raycg.compile(
            actors[0].wait_for.bind(inp, gate.path),
            enable_asyncio=True,
            max_inflight_executions=2,
            submit_timeout=60,  # past wait_for's bound: a loop blocked in a call fails the test
        )

    async def one(i: int) -> object:
        nonlocal started
        started += 1
        return await (await graph.execute_async(i))

    async def main() -> list:
        opener = asyncio.create_task(gate.open_when(lambda: started == 8))
        values = await asyncio.gather(*(one(i) for i in range(8)))
        await opener
        return values

    try:
        assert run_in(loop_kind, main) == list(range(8))
    finally:
        graph.teardown()


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
