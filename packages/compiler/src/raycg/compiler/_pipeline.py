"""The passes, in order, and the loop that runs them (after torch.fx's PassManager)."""

from __future__ import annotations

from collections.abc import Callable

from .ir import Graph
from .passes import (
    assign_communicators,
    assign_tensor_transports,
    assign_transports,
    overlap,
    schedule,
    size_buffers,
    validate,
)

Pass = Callable[[Graph], None]

# validate first: later passes may assume a well-formed graph of live actor calls.
PASSES: tuple[Pass, ...] = (
    validate,
    assign_transports,
    assign_tensor_transports,
    schedule,
    assign_communicators,  # after schedule: it checks the order of edges sharing an instance
    overlap,  # after both: it moves receives only where neither order changes
    size_buffers,
)


class PassFailed(RuntimeError):
    """A pass broke, or left the IR broken: a compiler bug, named by the pass."""


def run_passes(graph: Graph, debug: bool = False, passes: tuple[Pass, ...] = PASSES) -> None:
    """Run ``passes`` on ``graph`` in order; with ``debug``, lint the graph after each.

    Raises:
        ValueError, NotImplementedError: a pass refused the graph (the user's to fix),
            unchanged so that the message names the user's node.
        PassFailed: anything else, naming the pass it came from.
    """
    for fn in passes:
        name = fn.__name__
        try:
            fn(graph)
        except (ValueError, NotImplementedError):
            raise
        except Exception as e:
            raise PassFailed(f"compiler pass {name!r} failed: {e!r}") from e
        if debug:
            try:
                graph.lint()
            except AssertionError as e:
                raise PassFailed(f"the graph is invalid after compiler pass {name!r}: {e}\n{graph}") from e
