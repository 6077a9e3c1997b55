"""``raycg.compile``: the compiler's plan, set up by the runtime."""

from __future__ import annotations

import atexit
from typing import Any

from raycg.compiler import compile_plan
from raycg.runtime import CompiledGraph, close_all_graphs

from ._options import build_options

atexit.register(close_all_graphs)


def compile(dag: Any, **options: Any) -> CompiledGraph:
    """Compile a DAG built with Ray's DAG API into a graph that runs many times.

    Args:
        dag: the leaf node (or ``MultiOutputNode``) of a DAG of actor method calls.
        **options: see docs/api.md (``submit_timeout``, ``get_timeout``, ``buffer_size_bytes``,
            ``max_inflight_executions``, ``max_buffered_results``, ``enable_asyncio``,
            ``overlap_gpu_communication``, ``default_communicator``).

    Raises:
        NotImplementedError: the DAG holds a function task (named).
        ValueError: the DAG cannot be compiled (the message names the node), or
            ``default_communicator`` is not "create", None or a Communicator; nothing
            was created, and the fixed DAG compiles.
    """
    default = _default_communicator(options.pop("default_communicator", "create"))
    opts = build_options(**options)
    compiled = compile_plan(dag, opts, default_communicator=default)
    return CompiledGraph(compiled.plan, compiled.actors, compiled.graph)


def _default_communicator(value: Any) -> Any:
    """``default_communicator`` as the compiler takes it: a Communicator instance, or
    None for raycg's own ("create", Ray's default; None, which Ray reads as "no default",
    means the same here, as raycg can always make one).

    Raises:
        ValueError: anything else, naming it.
    """
    if value is None or (isinstance(value, str) and value == "create"):
        return None
    from ray.experimental.channel.communicator import Communicator

    if not isinstance(value, Communicator):
        raise ValueError(
            f"default_communicator={value!r} is not 'create' or a Communicator instance (a subclass of "
            "ray.experimental.channel.communicator.Communicator)"
        )
    return value
