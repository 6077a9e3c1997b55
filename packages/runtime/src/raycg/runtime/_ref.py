"""The refs ``execute`` returns: Ray's ``CompiledDAGRef``, so ``ray.get`` works on them."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from ray import cloudpickle
from ray.experimental.compiled_dag_ref import CompiledDAGFuture, CompiledDAGRef

if TYPE_CHECKING:
    from ._graph import CompiledGraph


class GraphRef(CompiledDAGRef):
    """The result of one output of one execution.

    ``ray.get(ref)`` (and ``ref.get(timeout=s)``) returns it once; a get that times out
    does not use the ref up. Dropping the ref without getting it releases the result.
    Copying or pickling raises ``ValueError`` (inherited); passing it to a task or to
    ``ray.put`` raises ``TypeError`` (the reducer registered below).
    """

    # CompiledDAGRef.__init__ expects Ray's CompiledDAG: we set our own fields instead.
    def __init__(self, graph: CompiledGraph, execution_index: int, output_index: int):
        self._graph = graph
        self._execution_index = execution_index
        self._channel_index: int = output_index
        self._ray_get_called = False

    def __str__(self) -> str:
        return (
            f"GraphRef(graph={self._graph.graph_id[:8]}, execution={self._execution_index}, "
            f"output={self._channel_index})"
        )

    __repr__ = __str__

    def get(self, timeout: float | None = None) -> Any:
        """The result, waiting at most ``timeout`` seconds (None: the graph's get_timeout)."""
        if self._ray_get_called:
            raise ValueError(f"{self} was already fetched: ray.get() can be called once on a ref")
        value = self._graph._fetch(self._execution_index, self._channel_index, timeout)
        self._ray_get_called = True
        return self._graph._unwrap(value)

    def __del__(self) -> None:
        if not self._ray_get_called:
            try:
                self._graph._release(self._execution_index, self._channel_index)
            except Exception:
                pass


def _refuse_serialization(ref: Any) -> Any:
    raise TypeError(
        f"{ref} cannot be passed to a task or to ray.put: get its value with ray.get(ref) "
        "and pass the value instead"
    )


# Ray's serializer looks reducers up by exact type; Ray registers CompiledDAGRef's, and
# this registers ours (the same TypeError).
cloudpickle.CloudPickler.dispatch[GraphRef] = _refuse_serialization


class GraphFuture(CompiledDAGFuture):
    """What ``execute_async`` returns: ``await fut`` yields the result, once, without
    blocking the event loop (it is read by a worker thread when not buffered yet)."""

    def __init__(self, graph: CompiledGraph, execution_index: int, output_index: int):
        self._graph = graph
        self._execution_index = execution_index
        self._channel_index: int = output_index
        self._awaited = False

    def __str__(self) -> str:
        return (
            f"GraphFuture(graph={self._graph.graph_id[:8]}, execution={self._execution_index}, "
            f"output={self._channel_index})"
        )

    __repr__ = __str__

    def __await__(self) -> Generator[Any, None, Any]:
        if self._awaited:
            raise ValueError(f"{self} was already awaited: a future can be awaited once")
        self._awaited = True
        value = yield from self._graph._fetch_async(self._execution_index, self._channel_index).__await__()
        return self._graph._unwrap(value)

    def __del__(self) -> None:
        if not self._awaited:
            try:
                self._graph._release(self._execution_index, self._channel_index)
            except Exception:
                pass


cloudpickle.CloudPickler.dispatch[GraphFuture] = _refuse_serialization
