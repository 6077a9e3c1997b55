"""Peer liveness from /proc: alive, dead, a zombie, a reused pid."""

from __future__ import annotations

import os
import signal

import pytest
from transports_testing import SPAWN, process_state, wait_until

from raycg.transports._liveness import is_alive, process_start_time

pytestmark = pytest.mark.timeout(30)


def _sleep_forever() -> None:
    signal.pause()


ODD_NAME = "x) Z 1 (y"


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _sleep_forever_oddly_named() -> None:
    with open("/proc/self/comm", "w") as f:  # only a process may rename itself
        f.write(ODD_NAME)
    signal.pause()


def test_a_live_process() -> None:
    start = process_start_time(os.getpid())
    assert start is not None and start > 0
    assert is_alive(os.getpid(), start)
    assert is_alive(os.getpid(), 0)  # start time unknown: the pid alone decides


def test_a_reused_pid_is_not_the_process_we_knew() -> None:
    start = process_start_time(os.getpid())
    assert start is not None
    assert not is_alive(os.getpid(), start + 1)


def test_an_endpoint_not_attached_yet_counts_as_alive() -> None:
    assert is_alive(0, 0)


def test_a_killed_process_is_dead_as_a_zombie_and_once_reaped() -> None:
    proc = SPAWN.Process(target=_sleep_forever, daemon=True)
    proc.start()
    pid = proc.pid
    assert pid is not None
    start = process_start_time(pid)
    assert start is not None and is_alive(pid, start)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: process_state(pid) == "Z")  # dead, not yet reaped by us
    assert process_start_time(pid) is None
    assert not is_alive(pid, start)
    proc.join()
    proc.close()
    assert process_start_time(pid) is None  # reaped: gone from /proc
    assert not is_alive(pid, start)


def test_a_command_name_with_spaces_and_parentheses() -> None:
    # /proc/<pid>/stat puts the command name in parentheses; it may hold both, and
    # even look like the fields that follow it.
    proc = SPAWN.Process(target=_sleep_forever_oddly_named, daemon=True)
    proc.start()
    pid = proc.pid
    assert pid is not None
    try:
        wait_until(lambda: _comm(pid) == ODD_NAME)
        start = process_start_time(pid)
        assert start is not None and is_alive(pid, start)
    finally:
        proc.kill()
        proc.join()
        proc.close()


def test_watch_wakes_its_watchers_when_the_process_exits() -> None:
    from raycg.transports import _liveness

    child = SPAWN.Process(target=_sleep_forever, daemon=True)
    child.start()
    pid = child.pid
    assert pid is not None
    start = process_start_time(pid) or 0
    woken: list[str] = []
    first = _liveness.watch(pid, start, lambda: woken.append("first"))
    second = _liveness.watch(pid, start, lambda: woken.append("second"))
    assert first is not None and second is not None and not first.dead
    os.kill(pid, signal.SIGKILL)  # a zombie until joined: its pidfd fires all the same
    wait_until(lambda: len(woken) == 2)
    assert sorted(woken) == ["first", "second"] and first.dead and second.dead
    first.close()
    second.close()  # the last watcher: the pidfd is closed and the thread ends
    child.join()
    child.close()


def test_watch_of_a_gone_or_reused_pid_is_dead_at_once() -> None:
    from raycg.transports import _liveness

    me = os.getpid()
    reused = _liveness.watch(me, (process_start_time(me) or 0) + 1, lambda: None)
    assert reused is not None and reused.dead
    reused.close()
