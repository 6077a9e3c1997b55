"""raycg.runtime: sets a Plan up on the actors, drives executions, tears down.

Split by who runs the code, and imports run one way (pyproject.toml's import-linter
contracts keep it so):

- the caller (driver) side: ``_graph`` (CompiledGraph) above ``_results``, ``_ref``,
  ``_setup``, ``_monitor``, ``_stats_report`` and ``_visualize``;
- the actor side: ``_actor`` (the entry points the caller runs through
  ``__ray_call__``) above ``_executor`` (the loop);
- shared by both: ``_projection``, ``_errors``, ``_stats`` (the recorders), ``_describe``
  (a Plan's parts in words, for ``_visualize`` and ``_stats_report``).

The caller side imports the actor side's entry points (to name them in ``__ray_call__``),
never the reverse. Lazy: an actor imports only the actor side and the shared modules
when it sets a graph up, not the caller's machinery.
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
