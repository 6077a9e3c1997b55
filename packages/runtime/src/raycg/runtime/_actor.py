"""The actor side's entry points: what the caller runs on an actor.

The runtime on the caller reaches an actor exactly twice per graph, through Ray's
supported hook for running a function on an actor instance (``actor.__ray_call__``):
:func:`setup_actor` at compile and :func:`teardown_actor` at teardown (plus
:func:`executor_stats` when asked for stats). Everything in between goes through the
channels. This module and ``_executor`` are all an actor imports of the runtime.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import threading
from typing import Any

from raycg.proto import ActorSetup, ActorStatus, ErrorReport, Teardown
from raycg.transports import process_start_time

from . import _hosting
from ._executor import Executor

# graph id -> executor, for every graph this actor takes part in.
_EXECUTORS: dict[str, Executor] = {}
# graph id -> the status of an executor whose loop ended on its own (its rings closed by
# the caller, or a failure), kept for the caller's teardown call to report. Bounded: a
# graph dropped by a caller that died never asks for it.
_ENDED: collections.OrderedDict[str, ActorStatus] = collections.OrderedDict()
_MAX_ENDED = 64
_REGISTRY_LOCK = threading.Lock()

_log = logging.getLogger(__name__)


def _forget(ex: Executor) -> None:
    """An executor's loop ended (on its own thread): drop it, unless already replaced,
    keep its status for the teardown call, and free the rings this actor hosts for the
    graph (a loop ends only when its graph does: teardown, or a fault such as a killed
    caller, whose teardown call never comes; the node's other readers of those rings
    end with them, and the gRPC server goes with the last graph)."""
    with _REGISTRY_LOCK:
        if _EXECUTORS.get(ex.graph_id) is not ex:
            return  # a teardown call took it, and reports it itself
        del _EXECUTORS[ex.graph_id]
        _ENDED[ex.graph_id] = _status(ex)
        while len(_ENDED) > _MAX_ENDED:
            _ENDED.popitem(last=False)
    _hosting.release(ex.graph_id)  # idempotent: a later teardown call finds nothing
    if ex.error is not None:
        _log.warning(
            "raycg: the executor of graph %s on %s failed: %s", ex.graph_id[:8], ex.actor_repr, ex.error
        )


def _status(ex: Executor) -> ActorStatus:
    """The status of an executor whose loop has ended (or was asked to end)."""
    status = ActorStatus(graph_id=ex.graph_id, actor_id=ex.actor_id, state=ActorStatus.STOPPED)
    status.executions_done = ex.executions
    status.pid = os.getpid()
    if ex.error is not None:
        kind, message, task = ex.error
        status.state = ActorStatus.FAILED
        status.error.CopyFrom(
            ErrorReport(
                graph_id=ex.graph_id, actor_id=ex.actor_id, task_display_name=task, kind=kind, message=message
            )
        )
    return status


def setup_actor(instance: object, setup_bytes: bytes, extras: bytes = b"") -> bytes:
    """Runs on the actor (through ``__ray_call__``): open the channels, join the
    communicators (``extras``: pickled, from ``_setup.setup_actors``), start the loop."""
    setup = ActorSetup.FromString(setup_bytes)
    status = ActorStatus(graph_id=setup.graph_id, actor_id=setup.actor.actor_id, pid=os.getpid())
    status.pid_start_time = process_start_time(os.getpid()) or 0
    try:
        ex = Executor(setup, instance, _forget, pickle.loads(extras) if extras else None)
    except Exception as e:
        status.state = ActorStatus.FAILED
        status.error.CopyFrom(
            ErrorReport(
                graph_id=setup.graph_id,
                actor_id=setup.actor.actor_id,
                kind="setup_failed",
                message=f"{type(e).__name__}: {e}",
            )
        )
        return status.SerializeToString()
    with _REGISTRY_LOCK:
        _EXECUTORS[setup.graph_id] = ex
    ex.thread.start()
    status.state = ActorStatus.READY
    return status.SerializeToString()


def teardown_actor(instance: object, teardown_bytes: bytes) -> bytes:
    """Runs on the actor (a serialized ``Teardown``): stop the graph's loop, wait for
    it, free its channels; return its ``ActorStatus`` (why it failed, if it did)."""
    teardown = Teardown.FromString(teardown_bytes)
    graph_id = teardown.graph_id
    with _REGISTRY_LOCK:
        ex = _EXECUTORS.pop(graph_id, None)
        ended = _ENDED.pop(graph_id, None)
    _log.debug("raycg: graph %s torn down (%s)", graph_id[:8], teardown.reason or "no reason given")
    _hosting.release(graph_id)  # the rings this actor hosts for other nodes' writers
    if ex is None:
        return (ended or ActorStatus(graph_id=graph_id, state=ActorStatus.STOPPED)).SerializeToString()
    ex.close()
    ex.thread.join(teardown.timeout_s)
    status = _status(ex)
    if ex.thread.is_alive():
        status.state = ActorStatus.FAILED
        task = ex.running.display if ex.running is not None else ""
        status.error.CopyFrom(
            ErrorReport(
                graph_id=graph_id,
                actor_id=ex.actor_id,
                task_display_name=task,
                kind="teardown_timeout",
                message=f"a task of the graph still runs after {teardown.timeout_s} s",
            )
        )
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
