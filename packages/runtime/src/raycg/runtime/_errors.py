"""The one place that builds Ray's exception classes (../shared/STYLE.md).

- :func:`wrap_task_error` runs on the actor when a user's method raises: the result of
  that task becomes a ``RayTaskError`` value that flows downstream like any value.
- :func:`to_ray_error` runs on the caller: a transport error becomes what docs/api.md's
  Failures table promises.
"""

from __future__ import annotations

import traceback

import ray
from ray.exceptions import (
    ActorDiedError,
    RayCgraphCapacityExceeded,
    RayChannelError,
    RayChannelTimeoutError,
    RayTaskError,
)

from raycg.transports import ChannelClosed, ChannelError, ChannelTimeout, SlotPinned


def wrap_task_error(
    exc: BaseException, display_name: str, actor_repr: str, actor_id: str | None = None
) -> RayTaskError:
    """The value a failed task passes downstream (and the caller's get raises). Its
    message starts with ``ray::Class.method()``, as Ray's own task errors do."""
    backtrace = ray._private.utils.format_error_message(
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        task_exception=True,
    )
    drop_tracebacks(exc)
    return RayTaskError(
        function_name=display_name,
        traceback_str=backtrace,
        cause=exc,
        proctitle=f"ray::{display_name}",
        actor_repr=actor_repr,
        actor_id=actor_id,
    )


def drop_tracebacks(exc: BaseException | None) -> None:
    """Drop the traceback objects of ``exc`` and of the exceptions chained to it.

    Their frames reference the executor (``self``), its channels and their mappings, and
    the frames reference each other: a failure kept as a value (a task's result) would
    keep the graph's shared memory mapped, after teardown, until a collection. The text
    of the traceback is kept (``wrap_task_error`` formats it first)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        if exc.__cause__ is not None:
            drop_tracebacks(exc.__cause__)
        exc = exc.__context__


def unserializable_result_error(exc: ChannelError, display_name: str, actor_repr: str) -> RayTaskError:
    """A task returned a value that cannot cross the channel: report it as the task's
    failure (the graph keeps running)."""
    err = TypeError(f"{display_name} returned a value that cannot be sent to its readers: {exc}")
    return wrap_task_error(err, display_name, actor_repr)


def raise_if_task_error(value: object) -> object:
    """Raise a task's failure as an instance of both RayTaskError and its cause."""
    if isinstance(value, RayTaskError):
        raise value.as_instanceof_cause()
    return value


# Ray's wording (CompiledDAG.execute and _execute_until; its channels' "Channel closed."),
# which code and tests written for Ray's Compiled Graph match. Ours follows it.
_RAY_TIMEOUT = {
    "get": "If the execution is expected to take a long time, increase RAY_CGRAPH_get_timeout which "
    "is currently {s} seconds. Otherwise, this may indicate that the execution is hanging.",
    "execute": "If the execution is expected to take a long time, increase RAY_CGRAPH_submit_timeout "
    "which is currently {s} seconds. Otherwise, this may indicate that execution is hanging.",
}
_RAY_CLOSED = "Channel closed."


def to_ray_error(exc: ChannelError, what: str, died: ActorDiedError | None = None) -> Exception:
    """Map a transport error met while doing ``what`` to Ray's class for it."""
    if died is not None:
        return died
    if isinstance(exc, SlotPinned):
        return RayCgraphCapacityExceeded(f"{what}: {exc}")
    if isinstance(exc, ChannelTimeout):
        return RayChannelTimeoutError(f"{what}: {exc}")
    if isinstance(exc, ChannelClosed):
        return RayChannelError(f"{_RAY_CLOSED} {what}: {exc}")
    return RayChannelError(f"{what}: {exc}")  # broken, or anything else


def timeout_error(
    exc: ChannelTimeout, action: str, where: str, configured_s: float
) -> RayChannelTimeoutError:
    """A get (``action="get"``) or an execute that timed out: Ray's message, naming the
    graph's configured timeout (Ray's spelling: -1 is forever), then what waited where."""
    ray_words = _RAY_TIMEOUT.get(action, "").format(s=configured_s)
    return RayChannelTimeoutError(f"{ray_words} {action} on {where}: {exc}".lstrip())


def torn_down_error(graph_id: str, reason: str | None) -> RayChannelError:
    why = f" ({reason})" if reason else ""
    return RayChannelError(
        f"{_RAY_CLOSED} compiled graph {graph_id[:8]} has been torn down{why}; "
        "compile the DAG again to run it"
    )
