"""How a compiled graph meets its faults (docs/api.md, Failures): which exception a
channel error becomes, an actor's death recorded once and raised to every pending and
next call, the teardown a fault starts. ``CompiledGraph`` (``_graph.py``) inherits
:class:`Failures`; the state it reads is the graph's own, set up there.
"""

from __future__ import annotations

import math
import os
import threading
from typing import TYPE_CHECKING, Any

from ray.core.generated.common_pb2 import ActorDiedErrorContext  # type: ignore[attr-defined]
from ray.exceptions import ActorDiedError, RayChannelError

from raycg.proto import ActorStatus, Plan
from raycg.transports import ChannelError, ChannelTimeout, SlotPinned

from . import _aio, _errors, _monitor
from ._remote_death import RemoteDeath

# This process's pid, kept current across fork() without a syscall on every call.
_this_pid = os.getpid()


def _after_fork() -> None:
    global _this_pid
    _this_pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def describe_failure(label: str, status: ActorStatus) -> str:
    err = status.error
    where = f" in {err.task_display_name}" if err.task_display_name else ""
    return (
        f"the executor on {label} failed{where} after {status.executions_done} executions "
        f"({err.kind}: {err.message})"
    )


class CauseUnknown(RayChannelError):
    """A fault of a graph with actors on other nodes, before its cause is known: raised
    out of every lock and token (the submit lock, the results' reader turn), where
    ``CompiledGraph._resolved`` asks Ray, so that nobody waits on them meanwhile."""

    def __init__(self, error: ChannelError, what: str):
        super().__init__(f"{what}: {error}")
        self.error, self.what = error, what


def ray_timeout(seconds: float) -> float | None:
    """Ray's spelling (-1 forever, 0 immediate, else seconds) to the transports' one."""
    return None if seconds < 0 else seconds


class Failures:
    """The fault handling of ``CompiledGraph``, which sets every field below."""

    graph_id: str
    _name: str
    _plan: Plan
    _pid: int
    _next_exec: int
    _processes: dict[str, tuple[int, int]]  # actor id -> (pid, start time)
    _remote_death: RemoteDeath | None
    _closing: bool
    _torn_down: bool
    _teardown_reason: str | None
    _executor_failures: list[str]
    _died: ActorDiedError | None
    _died_context: Any
    _died_at_exec: int
    _died_reported: bool
    _death_lock: threading.Lock

    if TYPE_CHECKING:

        def teardown(self, kill_actors: bool = False, *, reason: str | None = None) -> None: ...

    def _fault(self, e: ChannelError, what: str, asked: bool = False) -> Exception:
        """The exception for a channel error met while doing ``what``.

        A timeout leaves the graph running. Anything else is a fault: if an actor's
        process is gone (the monitor may not have polled yet) it is that actor's death;
        otherwise a broken channel. Either way the graph is torn down. With actors on
        other nodes, and unless ``asked`` already, it is first a ``CauseUnknown``. On a
        coroutine's fast path, where nothing may block, a fault is an ``_aio.Deferred``.
        """
        # ``e`` becomes the cause of what the caller sees; its frames (the transports'
        # waits) hold views of the ring's mappings, which must not outlive teardown.
        _errors.drop_tracebacks(e)
        if isinstance(e, ChannelTimeout) and not isinstance(e, SlotPinned):
            opts = self._plan.options
            configured = opts.get_timeout_s if what == "get" else opts.submit_timeout_s
            return _errors.timeout_error(e, what, self._name, configured)
        if self._closing and self._died is None:  # teardown (another thread) woke us
            return _errors.torn_down_error(self.graph_id, self._teardown_reason)
        if self._died is None and _aio.on_fast_path():
            return _aio.Deferred(e, what)  # what follows may block: not on the event loop
        if self._died is None and not self._torn_down:
            dead = _monitor.first_dead(self._processes)
            if dead is not None:
                self._on_actor_died(dead)
            elif self._remote_death is not None and not asked and not isinstance(e, SlotPinned):
                return CauseUnknown(e, what)  # a stream from another node may have broken
        if self._died is not None:
            return self._death_error()
        if isinstance(e, SlotPinned):
            return _errors.to_ray_error(e, f"{what} on {self._name}")
        # Tear down first: the actors' answers say why their executors failed, if any
        # did (a closed ring alone does not say), and the caller's exception says it.
        self.teardown(reason=f"{type(e).__name__}: {e}")
        return RayChannelError(self._failures_said(f"{what} on {self._name}: {e}"))

    def _resolved(self, exc: RayChannelError) -> Exception:
        """``exc``, or for a ``CauseUnknown`` what it is: the death of the first remote
        actor Ray (or its raylet's silence) says is dead, else a broken channel. Called
        holding no lock; the lookup is bounded by the caller's configured timeout."""
        if not isinstance(exc, CauseUnknown):
            return exc
        assert self._remote_death is not None
        opts = self._plan.options
        configured = ray_timeout(opts.get_timeout_s if exc.what == "get" else opts.submit_timeout_s)
        found = self._remote_death.first_dead(math.inf if configured is None else configured)
        if found is not None:
            self._on_actor_died(found[0], found[1])
        return self._fault(exc.error, exc.what, asked=True)

    def _death_error(self) -> ActorDiedError:
        return ActorDiedError(self._died_context)  # a fresh instance: a clean traceback

    def _check_usable(self, pending: int | None = None) -> None:
        if self._died is not None:
            # Pending executions and the first call after the death: ActorDiedError;
            # later calls: RayChannelError caused by it (docs/api.md, Failures).
            if pending is not None and pending < self._died_at_exec:
                raise self._death_error()
            if not self._died_reported:
                self._died_reported = True
                raise self._death_error()
            raise RayChannelError(
                f"{self._name} was torn down because an actor died"
            ) from self._death_error()
        if self._torn_down or self._closing:
            raise _errors.torn_down_error(self.graph_id, self._teardown_reason)
        if _this_pid != self._pid:
            raise RayChannelError(
                f"{self._name} was compiled by process {self._pid}; only that process may "
                f"execute it (this is {_this_pid})"
            )

    def _dead_actor(self) -> str | None:
        """For the monitor thread."""
        return None if self._closing else _monitor.first_dead(self._processes)

    def _on_actor_died(self, actor_id: str, why: str | None = None) -> None:
        """An actor's process is gone: fail pending and next calls with ActorDiedError,
        wake every waiter, and tear the graph down (the other actors stay alive)."""
        with self._death_lock:
            if self._died is not None:
                return
            label = next((a.actor_label for a in self._plan.actors if a.actor_id == actor_id), actor_id)
            pid = self._processes.get(actor_id, (0, 0))[0]
            why = why or f"its process {pid} exited"
            self._died_context = ActorDiedErrorContext(
                actor_id=bytes.fromhex(actor_id),
                class_name=label.split("(", 1)[0],
                pid=pid,
                error_message=(
                    f"The actor {label} of {self._name} died ({why}); "
                    "the graph was torn down. Its other actors are alive."
                ),
            )
            self._died_at_exec = self._next_exec
            self._died = ActorDiedError(self._died_context)
        self.teardown(reason=f"actor {label} died")

    def _failures_said(self, message: str) -> str:
        """``message``, with why the executors failed, if any did."""
        if not self._executor_failures:
            return message
        return f"{message}; " + "; ".join(self._executor_failures)
