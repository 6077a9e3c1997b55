"""The actor side's entry points: what the caller runs on an actor.

The runtime on the caller reaches an actor exactly twice per graph, through Ray's
supported hook for running a function on an actor instance (``actor.__ray_call__``):
:func:`setup_actor` at compile and :func:`teardown_actor` at teardown (plus
:func:`executor_stats` when asked for stats). Everything in between goes through the
channels. This module and ``_executor`` are all an actor imports of the runtime.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from raycg.proto import ActorSetup, ActorStatus
from raycg.transports import process_start_time

from ._executor import Executor

# graph id -> executor, for every graph this actor takes part in.
_EXECUTORS: dict[str, Executor] = {}
_REGISTRY_LOCK = threading.Lock()


def _forget(ex: Executor) -> None:
    """An executor's loop ended (on its own thread): drop it, unless already replaced."""
    with _REGISTRY_LOCK:
        if _EXECUTORS.get(ex.graph_id) is ex:
            del _EXECUTORS[ex.graph_id]  # dropped without a teardown call


def setup_actor(instance: object, setup_bytes: bytes) -> bytes:
    """Runs on the actor (through ``__ray_call__``): open the channels, start the loop."""
    setup = ActorSetup.FromString(setup_bytes)
    status = ActorStatus(graph_id=setup.graph_id, actor_id=setup.actor.actor_id, pid=os.getpid())
    status.pid_start_time = process_start_time(os.getpid()) or 0
    try:
        ex = Executor(setup, instance, _forget)
    except Exception as e:
        status.state = ActorStatus.FAILED
        status.error.kind = "setup_failed"
        status.error.message = f"{type(e).__name__}: {e}"
        return status.SerializeToString()
    with _REGISTRY_LOCK:
        _EXECUTORS[setup.graph_id] = ex
    ex.thread.start()
    status.state = ActorStatus.READY
    return status.SerializeToString()


def teardown_actor(instance: object, graph_id: str, timeout_s: float) -> bytes:
    """Runs on the actor: stop the graph's loop, wait for it, free its channels."""
    with _REGISTRY_LOCK:
        ex = _EXECUTORS.pop(graph_id, None)
    status = ActorStatus(graph_id=graph_id, state=ActorStatus.STOPPED)
    if ex is None:
        return status.SerializeToString()
    ex.close()
    ex.thread.join(timeout_s)
    status.executions_done = ex.executions
    if ex.thread.is_alive():
        status.state = ActorStatus.FAILED
        status.error.kind = "teardown_timeout"
        status.error.message = f"a task of the graph still runs after {timeout_s} s"
    elif ex.error:
        status.error.kind = "executor_error"
        status.error.message = ex.error
    return status.SerializeToString()


def executor_stats(instance: object, graph_id: str) -> dict[str, Any]:
    """Runs on the actor: this graph's recorders, summarized."""
    with _REGISTRY_LOCK:
        ex = _EXECUTORS.get(graph_id)
    if ex is None:
        return {"tasks": {}, "reads": {}}
    tasks = {f"{i}:{t.display}": t.stats.summary() for i, t in enumerate(ex.tasks, 1)}
    return {"tasks": tasks, "reads": {cid: rec.summary() for cid, rec in ex.read_stats.items()}}


def running_graphs(instance: object) -> list[str]:
    """Runs on the actor: the graphs whose executor threads are alive (for tests)."""
    with _REGISTRY_LOCK:
        return [g for g, ex in _EXECUTORS.items() if ex.thread.is_alive()]
