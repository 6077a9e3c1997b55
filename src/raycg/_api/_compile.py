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
        ValueError: the DAG cannot be compiled (the message names the node); nothing
            was created, and the fixed DAG compiles.
    """
    opts = build_options(**options)
    compiled = compile_plan(dag, opts)
    return CompiledGraph(compiled.plan, compiled.actors, compiled.graph)
