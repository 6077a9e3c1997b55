"""Notices, without any Ray call, that an actor of a live graph died.

One daemon thread per caller process, alive only while some graph is: every
``INTERVAL_S`` it checks the processes of every watched graph's actors (their pids and
start times came back from setup) by reading /proc, which costs microseconds and no
Ray RPC. On a death it calls ``graph._on_actor_died(actor_id)``, which closes the
graph's rings so that every blocked ``get``/``execute`` wakes at once, and tears the
graph down. So a death is reported within about one interval, idle or mid-execution,
whatever the get timeout.

Why poll: the executors' own channel waits also notice dead peers (see the transports'
liveness checks), but an idle graph has nobody waiting, and the caller must learn which
actor died to raise ``ActorDiedError`` for it.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

from raycg.transports import is_process_alive

INTERVAL_S = 0.1


class Watched(Protocol):
    def _dead_actor(self) -> str | None: ...
    def _on_actor_died(self, actor_id: str) -> None: ...


_lock = threading.Lock()
_graphs: weakref.WeakSet[Watched] = weakref.WeakSet()
_thread: threading.Thread | None = None
_wake = threading.Event()


def watch(graph: Watched) -> None:
    """Watch ``graph`` until it is torn down or garbage-collected."""
    global _thread
    with _lock:
        _graphs.add(graph)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="raycg-monitor", daemon=True)
            _thread.start()


def unwatch(graph: Watched) -> None:
    with _lock:
        _graphs.discard(graph)


def dead_actors(processes: dict[str, tuple[int, int]]) -> list[str]:
    """The actors (of actor id -> (pid, start time)) whose processes are gone."""
    return [actor_id for actor_id, (pid, start) in processes.items() if not is_process_alive(pid, start)]


def first_dead(processes: dict[str, tuple[int, int]]) -> str | None:
    """The first actor whose process is gone, or None."""
    dead = dead_actors(processes)
    return dead[0] if dead else None


def _run() -> None:
    global _thread
    while True:
        _wake.wait(INTERVAL_S)
        with _lock:
            graphs = list(_graphs)
            if not graphs:
                _thread = None  # started again by the next watch()
                return
        for g in graphs:
            dead = g._dead_actor()
            if dead is not None:
                unwatch(g)
                g._on_actor_died(dead)
        # Hold no graph while waiting: the loop variable would keep the last one alive,
        # and a graph its caller dropped must be torn down at once, not never.
        del graphs, g
