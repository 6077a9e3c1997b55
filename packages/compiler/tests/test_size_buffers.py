"""size_buffers: max_inflight_executions slots across processes, one slot in-process."""

from __future__ import annotations

from typing import Any

import pytest
from compiler_helpers import OPTIONS, compile_debug
from ray.dag import InputNode, MultiOutputNode

from raycg.proto import Options, Transport


def test_slots_and_slot_size(actors: list[Any]) -> None:
    a, b = actors[:2]
    options = Options()
    options.CopyFrom(OPTIONS)
    options.max_inflight_executions, options.buffer_size_bytes = 3, 4096
    with InputNode() as inp:
        x = a.echo.bind(inp)
        dag = MultiOutputNode([a.echo.bind(x), b.echo.bind(x)])
    graph = compile_debug(dag, options).graph
    x_node = graph.nodes[1]
    assert x_node.meta["slots"] == {Transport.SHM: 3, Transport.INPROC: 1}
    assert x_node.meta["slot_size_bytes"] == 4096
    assert graph.nodes[0].meta["slots"] == {Transport.SHM: 3}
    assert str(x_node).endswith("transport=shm,inproc slots=3,1")


@pytest.mark.parametrize("field", ["max_inflight_executions", "buffer_size_bytes"])
def test_zero_is_refused(actors: list[Any], field: str) -> None:
    options = Options()
    options.CopyFrom(OPTIONS)
    setattr(options, field, 0)
    with InputNode() as inp:
        dag = actors[0].echo.bind(inp)
    with pytest.raises(ValueError, match="must be >= 1"):
        compile_debug(dag, options)
