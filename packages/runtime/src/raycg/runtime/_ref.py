"""The refs ``execute`` returns: Ray's ``CompiledDAGRef`` (and, for ``execute_async``,
``CompiledDAGFuture``), so ``ray.get`` and ``await`` work on them."""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, Protocol

from ray import cloudpickle
from ray.experimental.compiled_dag_ref import CompiledDAGFuture, CompiledDAGRef


class ResultSource(Protocol):
    """What a ref asks of its graph (``CompiledGraph``; a protocol, so that refs do not
    import the graph that makes them)."""

    graph_id: str

    def _fetch(self, idx: int, out: int, timeout_s: float | None) -> Any: ...
    def _fetch_async(self, idx: int, out: int) -> Coroutine[Any, Any, Any]: ...
    def _release(self, idx: int, out: int) -> None: ...
    def _unwrap(self, value: Any) -> Any: ...


class _Result:
    """What a ref and a future share: which result they stand for, and that dropping
    them unused releases it. Ray's base classes' ``__init__`` expect Ray's
    CompiledDAG, so ours set their own fields instead."""

    def __init__(self, graph: ResultSource, execution_index: int, output_index: int):
        self._graph = graph
        self._execution_index = execution_index
        self._output_index = output_index
        self._used = False  # fetched (or awaited): nothing left to release

    def __str__(self) -> str:
        return (
            f"{type(self).__name__}(graph={self._graph.graph_id[:8]}, "
            f"execution={self._execution_index}, output={self._output_index})"
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
            raise ValueError(f"{self} was already fetched: ray.get() can be called once on a ref")
        value = self._graph._fetch(self._execution_index, self._output_index, timeout)
        self._used = True
        return self._graph._unwrap(value)


class GraphFuture(_Result, CompiledDAGFuture):
    """What ``execute_async`` returns: ``await fut`` yields the result, once, without
    blocking the event loop (it is read by a worker thread when not buffered yet)."""

    def __await__(self) -> Generator[Any, None, Any]:
        if self._used:
            raise ValueError(f"{self} was already awaited: a future can be awaited once")
        self._used = True
        value = yield from self._graph._fetch_async(self._execution_index, self._output_index).__await__()
        return self._graph._unwrap(value)


def _refuse_serialization(ref: Any) -> Any:
    raise TypeError(
        f"{ref} cannot be passed to a task or to ray.put: get its value with ray.get(ref) "
        "and pass the value instead"
    )


# Ray's serializer looks reducers up by exact type; Ray registers CompiledDAGRef's, and
# this registers ours (the same TypeError).
for _cls in (GraphRef, GraphFuture):
    cloudpickle.CloudPickler.dispatch[_cls] = _refuse_serialization
