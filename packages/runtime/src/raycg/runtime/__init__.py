"""raycg.runtime: sets a Plan up on the actors, drives executions, tears down."""

from ._graph import CompiledGraph, actor_running_graphs, close_all_graphs
from ._ref import GraphRef

__all__ = ["CompiledGraph", "GraphRef", "actor_running_graphs", "close_all_graphs"]
