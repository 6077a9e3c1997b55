"""raycg.runtime: sets a Plan up on the actors, drives executions, tears down.

Lazy: an actor imports only the executor side (``_executor``) when it sets a graph up,
not the caller's machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._graph import CompiledGraph, actor_running_graphs, close_all_graphs
    from ._ref import GraphFuture, GraphRef

__all__ = ["CompiledGraph", "GraphFuture", "GraphRef", "actor_running_graphs", "close_all_graphs"]

_WHERE = {
    "CompiledGraph": "_graph",
    "actor_running_graphs": "_graph",
    "close_all_graphs": "_graph",
    "GraphFuture": "_ref",
    "GraphRef": "_ref",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
