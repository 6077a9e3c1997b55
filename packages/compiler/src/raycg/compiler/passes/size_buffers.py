"""size_buffers: how many values each channel holds in flight, and how big a slot is.

A channel that crosses processes (actor to actor, driver to actor, actor to driver)
gets ``max_inflight_executions`` slots, so that that many executions pipeline through
it. An INPROC channel needs one: its writer and reader are tasks of one actor, which
runs an execution's tasks in order before starting the next, so a value is read before
the next one is written. Slots start at ``buffer_size_bytes`` and grow for larger values.
"""

from __future__ import annotations

from raycg.proto import Transport

from ..ir import Graph


def size_buffers(graph: Graph) -> None:
    """Set ``meta["slots"]`` (transport -> slots) and ``meta["slot_size_bytes"]`` per node.

    Raises:
        ValueError: max_inflight_executions or buffer_size_bytes is below 1.
    """
    options = graph.options
    if options.max_inflight_executions < 1 or options.buffer_size_bytes < 1:
        raise ValueError(
            "max_inflight_executions and buffer_size_bytes must be >= 1, got "
            f"{options.max_inflight_executions} and {options.buffer_size_bytes}"
        )
    for node in graph.nodes:
        transports = set(node.meta.get("transport_to", {}).values())
        node.meta["slots"] = {
            t: 1 if t == Transport.INPROC else options.max_inflight_executions for t in transports
        }
        node.meta["slot_size_bytes"] = options.buffer_size_bytes
