"""The refs ``execute`` returns: Ray's ``CompiledDAGRef`` (and, for ``execute_async``,
``CompiledDAGFuture``), so ``ray.get`` and ``await`` work on them."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol

import ray
from ray import cloudpickle
from ray.experimental.compiled_dag_ref import CompiledDAGFuture, CompiledDAGRef


class ResultSource(Protocol):
    """What a ref asks of its graph (``CompiledGraph``; a protocol, so that refs do not
    import the graph that makes them)."""

    graph_id: str

    def _fetch(self, idx: int, out: int, timeout_s: float | None) -> Any: ...
    def _fetch_many(self, wanted: list[tuple[int, int]], timeout_s: float | None) -> dict[int, Any]: ...
    def _fetch_async(self, idx: int, out: int) -> Coroutine[Any, Any, Any]: ...  # unwrapped
    def _release(self, idx: int, out: int) -> None: ...
    def _unwrap(self, value: Any) -> Any: ...


class _Result:
    """What a ref and a future share: which result they stand for, and that dropping
    them unused releases it. Ray's base classes' ``__init__`` expect Ray's
    CompiledDAG, so ours set their own fields instead."""

    _ray_name = "CompiledDAGRef"

    def __init__(
        self, graph: ResultSource, execution_index: int, output_index: int, multi_output: bool = True
    ):
        self._graph = graph
        self._execution_index = execution_index
        self._output_index = output_index
        # Ray's field: the output's index in a multi-output graph, else None.
        self._channel_index = output_index if multi_output else None
        self._used = False  # fetched (or awaited): nothing left to release

    def __str__(self) -> str:
        # Ray's own spelling (its tests compare it): CompiledDAGRef(<id>, execution_index=0, ...)
        return (
            f"{self._ray_name}({self._graph.graph_id}, execution_index={self._execution_index}, "
            f"channel_index={self._channel_index})"
        )

    __repr__ = __str__

    def __del__(self) -> None:
        if not self._used:
            try:
                self._graph._release(self._execution_index, self._output_index)
            except Exception:
                pass


class GraphRef(_Result, CompiledDAGRef):
    """The result of one output of one execution.

    ``ray.get(ref)`` (and ``ref.get(timeout=s)``) returns it once; a get that times out
    does not use the ref up. Dropping the ref without getting it releases the result.
    Copying or pickling raises ``ValueError`` (inherited); passing it to a task or to
    ``ray.put`` raises ``TypeError`` (the reducer registered below).
    """

    def get(self, timeout: float | None = None) -> Any:
        """The result, waiting at most ``timeout`` seconds (None: the graph's get_timeout)."""
        if self._used:
            raise ValueError(
                "ray.get() can only be called once on a CompiledDAGRef, and it was already called. "
                f"{self} was fetched already: keep the value the first get returned"
            )
        value = self._graph._fetch(self._execution_index, self._output_index, timeout)
        self._used = True
        return self._graph._unwrap(value)


class GraphFuture(_Result, CompiledDAGFuture):
    """What ``execute_async`` returns: ``await fut`` yields the result, once, without
    blocking the event loop (it is read by a worker thread when not buffered yet)."""

    _ray_name = "CompiledDAGFuture"

    def __await__(self) -> Generator[Any, None, Any]:
        if self._used:
            raise ValueError(
                "CompiledDAGFuture can only be awaited upon once, and it has already been awaited "
                f"upon. {self} was awaited already: keep the value the first await returned"
            )
        self._used = True
        # _fetch_async unwraps the value itself: a broken promise's teardown must not
        # run on the loop's thread, as _unwrap would run it.
        return (yield from self._graph._fetch_async(self._execution_index, self._output_index).__await__())


def _refuse_serialization(ref: Any) -> Any:
    raise TypeError(
        f"Serialization of CompiledDAGRef is not supported. {ref} cannot be passed to a task "
        "or to ray.put: get its value with ray.get(ref) and pass the value instead"
    )


# Ray's serializer looks reducers up by exact type; Ray registers CompiledDAGRef's, and
# this registers ours (the same TypeError).
for _cls in (GraphRef, GraphFuture):
    cloudpickle.CloudPickler.dispatch[_cls] = _refuse_serialization


# -- ray.get of a list ------------------------------------------------------------------
#
# Ray's ray.get (ray/_private/worker.py) fetches a list of CompiledDAGRefs one by one,
# ``[ref.get(timeout=timeout) for ref in refs]``, and leaves it to its DAG's reader to
# fail fast: a failed task fails every ref of its execution. raycg keeps a failure to
# its own ref (docs/api.md), so the list itself must be seen to raise at once for it rather
# than after its slowest sibling, as ray.get does for ObjectRefs. The hook below is
# that list branch for raycg's refs; every other call goes to Ray's ray.get unchanged.

_ray_get: Callable[..., Any] | None = None
_install_lock = threading.Lock()  # graphs compiled on two threads at once wrap it once


def install_get_hook() -> None:
    """Route ``ray.get(list_of_raycg_refs)`` to :func:`get_together`. Idempotent."""
    global _ray_get
    with _install_lock:
        if _ray_get is not None:
            return
        _ray_get = ray_get = ray.get

        @functools.wraps(ray_get)
        def get(object_refs: Any, *, timeout: float | None = None, **kwargs: Any) -> Any:
            if (
                isinstance(object_refs, list)
                and object_refs
                and not kwargs
                and all(type(r) is GraphRef for r in object_refs)
            ):
                return get_together(object_refs, timeout)
            return ray_get(object_refs, timeout=timeout, **kwargs)

        ray.get = get


def get_together(refs: list[GraphRef], timeout: float | None = None) -> list[Any]:
    """The values of ``refs``, in order; raises as soon as one of them is a failure.

    The refs of one graph are fetched together (see ``Results.fetch_many``); the refs
    of several graphs, or a list naming a ref twice, one by one as Ray does.

    Raises:
        ValueError: a ref was fetched already (Ray's message).
        RayTaskError: the first failure met. Only that ref is used up: the others
            (and every ref, after any other exception) can still be fetched.
    """
    graph = refs[0]._graph
    if any(r._graph is not graph for r in refs) or len({id(r) for r in refs}) < len(refs):
        return [r.get(timeout) for r in refs]
    for r in refs:
        if r._used:
            r.get(timeout)  # raises Ray's "can only be called once"
    taken = graph._fetch_many([(r._execution_index, r._output_index) for r in refs], timeout)
    for place in taken:
        refs[place]._used = True
    values = {place: graph._unwrap(value) for place, value in taken.items()}  # a failure raises
    return [values[place] for place in range(len(refs))]
