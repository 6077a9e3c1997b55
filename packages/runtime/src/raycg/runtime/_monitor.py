"""Notices, without any Ray call, that an actor of a live graph died.

One daemon thread per caller process, alive only while some graph is. It holds a pidfd
(pidfd_open(2), Linux >= 5.3) for every process of every watched graph's actors (their
pids and start times came back from setup) and sleeps in poll(2) until one of them
exits, or until watch/unwatch changes the set (an eventfd wakes it). So an idle graph
costs the caller no CPU at all, and a death is seen as soon as the kernel reaps the
process into a zombie: the thread then calls ``graph._on_actor_died(actor_id)``, which
closes the graph's rings so that every blocked ``get``/``execute`` wakes at once, and
tears the graph down, idle or mid-execution, whatever the get timeout.

Where pidfds are not available (an older kernel, a sandbox refusing the syscall) it
falls back to checking /proc every ``INTERVAL_S``, as it did before: a death is then
seen within about one interval, at about 0.2% of a core.

Why a thread of its own: the executors' own channel waits also notice dead peers (see
the transports' liveness checks), but an idle graph has nobody waiting, and the caller
must learn which actor died to raise ``ActorDiedError`` for it.
"""

from __future__ import annotations

import os
import select
import threading
import weakref
from typing import Protocol

from raycg.transports import is_process_alive

INTERVAL_S = 0.1  # the fallback's polling interval (no pidfds)


class Watched(Protocol):
    _processes: dict[str, tuple[int, int]]  # actor id -> (pid, start time)

    def _dead_actor(self) -> str | None: ...
    def _on_actor_died(self, actor_id: str) -> None: ...


_lock = threading.Lock()
_graphs: dict[int, weakref.ref[Watched]] = {}  # id -> graph, dropped when it is collected
_thread: threading.Thread | None = None
# Wakes the thread to look at the watched set again. One per process, for its life, so
# that anyone may write it at any time without a lock: a weakref callback of a graph
# collected while this thread sleeps, say (the thread must then let go of its pidfds).
_WAKE_FD = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


def watch(graph: Watched) -> None:
    """Watch ``graph`` until it is torn down or garbage-collected."""
    global _thread
    with _lock:
        _graphs[id(graph)] = weakref.ref(graph, _wake)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="raycg-monitor", daemon=True)
            _thread.start()
    _wake()


def unwatch(graph: Watched) -> None:
    with _lock:
        ref = _graphs.get(id(graph))
        if ref is not None and ref() is graph:
            del _graphs[id(graph)]
    _wake()  # the thread drops the graph's pidfds (and ends if it was the last)


def _wake(_: object = None) -> None:
    """Make the thread look at the watched set again (also a weakref callback)."""
    os.eventfd_write(_WAKE_FD, 1)


def dead_actors(processes: dict[str, tuple[int, int]]) -> list[str]:
    """The actors (of actor id -> (pid, start time)) whose processes are gone."""
    return [actor_id for actor_id, (pid, start) in processes.items() if not is_process_alive(pid, start)]


def first_dead(processes: dict[str, tuple[int, int]]) -> str | None:
    """The first actor whose process is gone, or None."""
    dead = dead_actors(processes)
    return dead[0] if dead else None


class _Pidfds:
    """A pidfd per watched process, registered with one poll object."""

    def __init__(self) -> None:
        self.poll = select.poll()
        self.poll.register(_WAKE_FD, select.POLLIN)
        self.fds: dict[int, int] = {}  # pid -> pidfd
        self.exited: set[int] = set()  # pids whose pidfd fired: never opened again
        self.complete = hasattr(os, "pidfd_open")  # every watched pid has a pidfd

    def sync(self, wanted: dict[int, int]) -> None:
        """Hold a pidfd for every pid of ``wanted`` (pid -> start time), none other."""
        for pid in [p for p in self.fds if p not in wanted]:
            self.poll.unregister(self.fds[pid])
            os.close(self.fds.pop(pid))
        self.exited &= wanted.keys()
        for pid, start in wanted.items():
            if pid in self.fds or pid in self.exited or not self.complete:
                continue
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self.exited.add(pid)  # gone already: the check that follows sees it
                continue
            except OSError:
                self.complete = False  # no pidfds here: poll /proc instead
                continue
            if not is_process_alive(pid, start):  # the pid was reused before we opened it
                os.close(fd)
                self.exited.add(pid)
                continue
            self.fds[pid] = fd
            self.poll.register(fd, select.POLLIN)

    def wait(self) -> None:
        """Sleep until a watched process exits or the eventfd is written (or for
        INTERVAL_S without pidfds)."""
        events = self.poll.poll(None if self.complete else INTERVAL_S * 1000)
        by_fd = {fd: pid for pid, fd in self.fds.items()}
        for fd, _ in events:
            if fd == _WAKE_FD:
                try:
                    os.eventfd_read(_WAKE_FD)
                except BlockingIOError:
                    pass
            elif fd in by_fd:  # that process exited: stop polling it (it stays readable)
                pid = by_fd[fd]
                self.poll.unregister(fd)
                os.close(self.fds.pop(pid))
                self.exited.add(pid)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _run() -> None:
    global _thread
    pidfds = _Pidfds()
    try:
        while True:
            with _lock:
                for key in [k for k, ref in _graphs.items() if ref() is None]:
                    del _graphs[key]
                graphs = [g for g in (ref() for ref in _graphs.values()) if g is not None]
                if not graphs:
                    _thread = None  # started again by the next watch()
                    return
            pidfds.sync({pid: start for g in graphs for pid, start in g._processes.values() if pid > 0})
            _check(graphs)
            del graphs  # while we sleep, nothing of ours keeps a dropped graph alive
            pidfds.wait()
    finally:
        pidfds.close()


def _check(graphs: list[Watched]) -> None:
    for g in graphs:
        dead = g._dead_actor()
        if dead is not None:
            unwatch(g)
            g._on_actor_died(dead)
