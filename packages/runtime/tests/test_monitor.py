"""runtime._monitor: which actor process is gone, without Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from raycg.runtime import _monitor
from raycg.transports import process_start_time


def test_first_dead_finds_the_exited_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    me = (os.getpid(), process_start_time(os.getpid()) or 0)
    assert _monitor.first_dead({"me": me}) is None
    assert _monitor.first_dead({"me": me, "child": (child.pid, 1)}) == "child"


def test_a_reused_pid_counts_as_dead() -> None:
    me = os.getpid()
    assert _monitor.first_dead({"me": (me, (process_start_time(me) or 0) + 1)}) == "me"


class _FakeGraph:
    """What the monitor watches: actor processes, and a callback for a death."""

    def __init__(self, processes: dict[str, tuple[int, int]]):
        self._processes = processes
        self.died: list[str] = []

    def _dead_actor(self) -> str | None:
        return _monitor.first_dead(self._processes)

    def _on_actor_died(self, actor_id: str) -> None:
        self.died.append(actor_id)


def _monitor_switches() -> int:
    thread = next(t for t in threading.enumerate() if t.name == "raycg-monitor")
    with open(f"/proc/self/task/{thread.native_id}/status") as f:
        return int(next(line for line in f if line.startswith("voluntary_ctxt_switches")).split()[1])


def test_the_monitor_sleeps_until_an_actor_process_exits() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        graph = _FakeGraph({"child": (child.pid, process_start_time(child.pid) or 0)})
        _monitor.watch(graph)
        time.sleep(0.3)  # past its first look at the graph
        before = _monitor_switches()
        time.sleep(1)
        # It slept in poll(2) on the child's pidfd: polling /proc every 100 ms woke it 10 times.
        assert _monitor_switches() - before < 3
        child.kill()  # not reaped yet: a zombie, and its pidfd fires all the same
        deadline = time.monotonic() + 10
        while not graph.died and time.monotonic() < deadline:
            time.sleep(0.01)
        assert graph.died == ["child"]
    finally:
        child.kill()
        child.wait()
    _monitor.unwatch(graph)
    deadline = time.monotonic() + 10  # with nothing to watch, the thread ends
    while any(t.name == "raycg-monitor" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "raycg-monitor" for t in threading.enumerate())
