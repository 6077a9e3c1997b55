"""compile_plan: Ray DAG -> IR -> passes -> Plan. Reads actors, creates nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from ray.actor import ActorHandle

from raycg.proto import Options, Plan

from ._emit import emit_plan
from ._frontend import read_dag
from ._pipeline import run_passes
from ._placement import DEFAULT_LOCATE_TIMEOUT_S, locate_actors
from .ir import Graph


@dataclass
class CompiledPlan:
    """What the runtime needs to run a graph, and the IR for people to read."""

    plan: Plan
    graph: Graph  # after the passes: print(compiled.graph)
    actors: dict[str, ActorHandle[Any]]  # actor id hex -> handle: how the runtime reaches them


def compile_plan(
    dag: object,
    options: Options,
    *,
    debug: bool = False,
    locate_timeout_s: float = DEFAULT_LOCATE_TIMEOUT_S,
    default_communicator: object = None,
) -> CompiledPlan:
    """Compile the Ray DAG ending at ``dag`` into a Plan.

    Nothing is created on any actor (each is only asked where it runs), so a refused DAG
    leaves nothing behind and can be fixed and compiled again.

    Args:
        dag: a task's result (``actor.method.bind(...)``) or a ``MultiOutputNode``.
        options: copied into ``Plan.options``; sizes the channels.
        debug: lint the IR after each pass.
        locate_timeout_s: how long to wait, in all, for the actors to say where they run.
        default_communicator: a Communicator instance for what would otherwise go through
            NCCL (``passes.assign_tensor_transports``); None: raycg makes its own.

    Raises:
        NotImplementedError: a function task (or another unsupported node), named.
        ValueError: a DAG that cannot be compiled (see API.md), naming the node; a dead
            actor; a bind order that would deadlock, naming its tasks.
        TypeError: ``dag`` is not a DAG node.
    """
    graph = read_dag(dag)
    graph.options = options
    if default_communicator is not None:
        graph.meta["default_communicator"] = default_communicator
    locate_actors(graph, locate_timeout_s)
    run_passes(graph, debug=debug)
    plan = emit_plan(graph)
    handles = {actor_id: cast("ActorHandle[Any]", a.handle) for actor_id, a in graph.actors.items()}
    return CompiledPlan(plan, graph, handles)
