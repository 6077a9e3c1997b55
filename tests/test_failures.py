"""API.md's Failures table, row by row, on a real local Ray.

No test asserts a duration: "promptly" is shown by waiting with no timeout at all
(get_timeout=-1) under a pytest-timeout far shorter than any Ray default.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import ray
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import (
    ActorDiedError,
    RayCgraphCapacityExceeded,
    RayChannelError,
    RayChannelTimeoutError,
    RayTaskError,
)

import raycg
from raycg.runtime import actor_running_graphs

from .conftest import Worker, wait_process_gone

pytestmark = [pytest.mark.ray, pytest.mark.timeout(60)]


@pytest.fixture
def fresh(ray_local: None) -> Iterator[list]:
    """Three actors of this test's own, killed after it."""
    handles = [Worker.remote() for _ in range(3)]
    ray.get([h.pid.remote() for h in handles])
    yield handles
    for h in handles:
        ray.kill(h)


def chain3(actors: list, method: str = "inc") -> object:
    a, b, c = actors
    with InputNode() as inp:
        return c.inc.bind(getattr(b, method).bind(a.inc.bind(inp)))


KILLS = {
    "ray.kill": lambda actor, pid: ray.kill(actor),
    "sigkill": lambda actor, pid: os.kill(pid, signal.SIGKILL),
}


@pytest.mark.parametrize("kill", list(KILLS))
def test_idle_actor_death_fails_next_execute_then_channel_error(fresh: list, kill: str) -> None:
    g = raycg.compile(chain3(fresh), get_timeout=-1)
    assert ray.get(g.execute(1)) == 4
    pid = ray.get(fresh[1].pid.remote())
    KILLS[kill](fresh[1], pid)
    wait_process_gone(pid)  # ray.kill returns before; a loaded machine takes its time
    time.sleep(0.5)  # idle: nobody is waiting on the graph; the monitor polls meanwhile
    with pytest.raises(ActorDiedError):
        g.execute(1)
    with pytest.raises(RayChannelError) as later:
        g.execute(1)
    assert isinstance(later.value.__cause__, ActorDiedError)
    # The survivors are alive, have no executor left (the monitor's thread tears the
    # graph down right after it reports the death), and take a new graph.
    for survivor in (fresh[0], fresh[2]):
        assert ray.get(survivor.inc.remote(1)) == 2
        deadline = time.monotonic() + 10
        while actor_running_graphs(survivor) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert actor_running_graphs(survivor) == []
    with InputNode() as inp:
        g2 = raycg.compile(fresh[2].inc.bind(fresh[0].inc.bind(inp)))
    assert ray.get(g2.execute(1)) == 3
    g2.teardown()


def test_death_mid_execution_fails_every_pending_get(fresh: list) -> None:
    g = raycg.compile(chain3(fresh, "sleep_then_echo"), get_timeout=-1)
    refs = [g.execute(i) for i in range(3)]
    time.sleep(0.2)  # b is inside sleep_then_echo
    os.kill(ray.get(fresh[1].pid.remote()), signal.SIGKILL)
    for ref in refs:
        with pytest.raises(ActorDiedError):
            ray.get(ref)  # waits forever unless the death is reported


def test_os_exit_inside_a_method(fresh: list, tmp_path: object) -> None:
    a, b, c = fresh
    with InputNode() as inp:
        dag = c.inc.bind(b.exit_if.bind(a.inc.bind(inp)))
    g = raycg.compile(dag, get_timeout=-1)
    assert ray.get(g.execute(1)) == 3
    with pytest.raises(ActorDiedError):
        ray.get(g.execute(-5))  # b gets -4 and calls os._exit
    with pytest.raises(ActorDiedError):
        g.execute(1)  # the next call after the pending ones
    with pytest.raises(RayChannelError):
        g.execute(1)  # and later calls


def test_get_timeout_zero_and_late_result(fresh: list) -> None:
    a = fresh[0]
    with InputNode() as inp:
        g = raycg.compile(a.sleep_then_echo.bind(inp, 0.3), get_timeout=0)
    ref = g.execute("late")
    with pytest.raises(RayChannelTimeoutError):
        ray.get(ref)  # the graph's default: 0, do not wait
    assert ray.get(ref, timeout=10) == "late"
    assert ray.get(g.execute("again"), timeout=-1) == "again"
    g.teardown()


def test_timeouts_default_from_the_environment(fresh: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_CGRAPH_get_timeout", "0.05")
    with InputNode() as inp:
        g = raycg.compile(fresh[0].sleep_then_echo.bind(inp, 0.5))
    ref = g.execute(1)
    with pytest.raises(RayChannelTimeoutError):
        ray.get(ref)
    assert ray.get(ref, timeout=10) == 1
    g.teardown()


def test_execute_past_inflight_drains_into_the_buffer(fresh: list) -> None:
    with InputNode() as inp:
        g = raycg.compile(fresh[0].inc.bind(inp), max_inflight_executions=2, max_buffered_results=100)
    refs = [g.execute(i) for i in range(50)]  # Ray's raises after 2: we queue
    assert ray.get(refs) == [i + 1 for i in range(50)]
    g.teardown()


def test_capacity_exceeded_when_the_buffer_is_full_too(fresh: list) -> None:
    with InputNode() as inp:
        g = raycg.compile(fresh[0].inc.bind(inp), max_inflight_executions=2, max_buffered_results=3)
    refs = [g.execute(i) for i in range(5)]  # 2 in flight + 3 buffered
    with pytest.raises(RayCgraphCapacityExceeded):
        g.execute(5)
    assert ray.get(refs[0]) == 1  # the graph keeps running
    refs.append(g.execute(5))
    assert ray.get(refs[1:]) == [2, 3, 4, 5, 6]
    g.teardown()


def test_held_zero_copy_results_fail_execute_at_once_naming_the_value(fresh: list) -> None:
    with InputNode() as inp:
        g = raycg.compile(fresh[0].echo.bind(inp), max_inflight_executions=2, submit_timeout=-1)
    held = ray.get(g.execute(np.ones(1 << 18)))  # 2 MB, zero-copy: pins its slot
    refs = []
    with pytest.raises(RayCgraphCapacityExceeded, match=r"numpy.ndarray\(shape=\(262144,\)") as info:
        for i in range(1, 5):  # waits forever (submit_timeout=-1) unless it raises
            refs.append(g.execute(i))
    assert "execution 0" in str(info.value)
    del held  # dropping the value frees the slot: the graph runs again
    assert ray.get(refs) == list(range(1, len(refs) + 1))
    assert ray.get(g.execute(9)) == 9
    g.teardown()


def test_fetched_siblings_leave_no_zero_copy_value_in_the_buffer(actors: list) -> None:
    # Getting output 0 of each execution reads output 1 too, into the buffer: copied
    # there, not zero-copy, or the buffered values would pin every slot of its ring.
    a, b = actors[:2]
    with InputNode() as inp:
        g = raycg.compile(
            MultiOutputNode([a.echo.bind(inp), b.echo.bind(inp)]), max_inflight_executions=2, get_timeout=-1
        )
    try:
        later = []
        for i in range(6):  # three times the ring's slots
            first, second = g.execute(np.full(1 << 16, i, dtype=np.int64))
            assert int(ray.get(first)[0]) == i  # zero-copy, dropped at once
            later.append(second)  # its value waits in the buffer
        assert [int(ray.get(r)[0]) for r in later] == list(range(6))
    finally:
        g.teardown()


def test_failed_branch_fails_only_its_own_ref(fresh: list) -> None:
    a, b = fresh[:2]
    with InputNode() as inp:
        g = raycg.compile(MultiOutputNode([a.fail.bind(inp), b.inc.bind(inp)]))
    bad, good = g.execute(1)
    assert ray.get(good) == 2
    with pytest.raises(RayTaskError):
        ray.get(bad)
    g.teardown()


@pytest.mark.parametrize("bad", [None, (1, 2, 3), 7], ids=["none", "three", "int"])
def test_wrong_number_of_returns_fails_that_execution_only(actors: list, bad: object) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        x, y = a.echo.options(num_returns=2).bind(inp)  # echo: as many outputs as it is given
        g = raycg.compile(MultiOutputNode([x, b.echo.bind(y)]))
    try:
        for ref in g.execute(bad):  # read by the driver, and by another actor
            with pytest.raises(RayTaskError, match=r"Expected 2 outputs, but got"):
                ray.get(ref)
        assert ray.get(g.execute((1, 2))) == [1, 2]  # the graph keeps running
    finally:
        g.teardown()


class FailsToUnpickle:
    """Pickles fine; unpickling it raises ValueError (int("boom"))."""

    def __reduce__(self) -> tuple:
        return (int, ("boom",))


@ray.remote(num_cpus=0)
class Raiser:
    def raise_(self, kind: str) -> object:
        if kind == "unpicklable":
            return FailsToUnpickle()
        if kind == "exit":
            raise SystemExit(3)
        if kind == "interrupt":
            raise KeyboardInterrupt
        return kind


@pytest.fixture(scope="module")
def raiser(ray_local: None) -> Iterator[object]:
    handle = Raiser.remote()
    yield handle
    ray.kill(handle)


def assert_ours_never_leak(e: BaseException) -> None:
    """The exception a caller sees is Ray's or Python's, never raycg's own classes."""
    for cls in type(e).__mro__:
        assert not cls.__module__.startswith("raycg"), f"{type(e).__name__} derives from {cls}"


@pytest.mark.parametrize("kind", ["exit", "interrupt"])
def test_a_method_raising_base_exception_fails_that_execution_only(raiser: object, kind: str) -> None:
    with InputNode() as inp:
        g = raycg.compile(raiser.raise_.bind(inp), get_timeout=-1)
    try:
        with pytest.raises(RayTaskError) as info:
            ray.get(g.execute(kind))
        assert_ours_never_leak(info.value)
        assert isinstance(info.value.cause, (SystemExit, KeyboardInterrupt))
        assert ray.get(g.execute("fine")) == "fine"  # the graph keeps running
    finally:
        g.teardown()


def test_an_input_that_cannot_be_unpickled_fails_that_execution_only(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:  # a reads the input and fails to unpickle it
        g = raycg.compile(MultiOutputNode([b.echo.bind(a.echo.bind(inp)), a.inc.bind(inp)]), get_timeout=-1)
    try:
        for ref in g.execute(FailsToUnpickle()):
            with pytest.raises(RayTaskError, match="boom") as info:
                ray.get(ref)
            assert_ours_never_leak(info.value)
        assert ray.get(g.execute(5)) == [5, 6]  # the graph keeps running, in step
    finally:
        g.teardown()


def test_a_result_that_cannot_be_unpickled_fails_that_execution_only(raiser: object, actors: list) -> None:
    with InputNode() as inp:  # the driver fails to unpickle what raiser returns
        dag = MultiOutputNode([raiser.raise_.bind(inp), actors[0].echo.bind(inp)])
    g = raycg.compile(dag, get_timeout=-1)
    try:
        bad, good = g.execute("unpicklable")
        with pytest.raises(RayTaskError, match="boom") as info:
            ray.get(bad)
        assert_ours_never_leak(info.value)
        assert ray.get(good) == "unpicklable"
        assert ray.get(g.execute("x")) == ["x", "x"]  # the graph keeps running, in step
    finally:
        g.teardown()


def test_an_unserializable_input_is_a_plain_type_error(actors: list) -> None:
    with InputNode() as inp:
        g = raycg.compile(actors[0].echo.bind(inp))
    try:
        with pytest.raises(TypeError) as info:
            g.execute(threading.Lock())  # a lock does not pickle
        assert_ours_never_leak(info.value)
        assert ray.get(g.execute(1)) == 1
    finally:
        g.teardown()


def test_a_failed_executor_says_why_in_the_callers_exception(ray_local: None) -> None:
    # a's 4th write publishes a corrupt slot record (the transports' fault hook, on in a
    # alone): b's executor fails reading it, and the caller must hear why, not only
    # that a channel closed.
    fault = {"op": "write", "channel": "", "after": 3, "kind": "corrupt"}
    a = Worker.options(runtime_env={"env_vars": {"RAYCG_FAULTS": json.dumps([fault])}}).remote()
    b = Worker.remote()
    try:
        with InputNode() as inp:
            g = raycg.compile(b.echo.bind(a.echo.bind(inp)), get_timeout=-1)
        assert [ray.get(g.execute(i)) for i in range(3)] == [0, 1, 2]
        why = r"the executor on \S+ failed in Worker.echo after 3 executions \(channel_broken: ChannelBroken"
        with pytest.raises(RayChannelError, match=why):
            ray.get(g.execute(3))
        with pytest.raises(RayChannelError, match=why):  # and every later call
            g.execute(4)
    finally:
        ray.kill(a)
        ray.kill(b)


def test_compile_refuses_a_dead_actor_and_creates_nothing(fresh: list) -> None:
    a, b = fresh[:2]
    ray.kill(b)
    time.sleep(0.5)
    with InputNode() as inp:
        dag = b.inc.bind(a.inc.bind(inp))
    with pytest.raises(ValueError, match=r"dead|died"):
        raycg.compile(dag)
    assert actor_running_graphs(a) == []
