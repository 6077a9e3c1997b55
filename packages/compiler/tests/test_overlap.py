"""overlap: with ``overlap_gpu_communication``, a task's communicator receive moves to
the start of the task before it on the same actor, unless that task is a communicator
operation itself or the receive's writer can only run after it (a deadlock)."""

from __future__ import annotations

from typing import Any

from compiler_helpers import OPTIONS, Comm, compile_debug
from ray.dag import InputNode, MultiOutputNode

import raycg.collective
from raycg.compiler import CompiledPlan
from raycg.proto import Options

OVERLAP = Options()
OVERLAP.CopyFrom(OPTIONS)
OVERLAP.overlap_gpu_communication = True


def _prefetches(compiled: CompiledPlan) -> dict[tuple[str, int], list[str]]:
    """(actor id, its task's position) -> the writers (actor ids) of what it prefetches."""
    writer = {ch.channel_id: ch.writer.actor_id for ch in compiled.plan.channels}
    out = {}
    for actor in compiled.plan.actors:
        for i, task in enumerate(actor.tasks):
            if task.prefetch:
                out[(actor.actor_id, i)] = [writer[c] for c in task.prefetch]
    return out


def _id(actor: Any) -> str:
    return actor._actor_id.hex()


def test_a_receive_moves_to_the_task_before_it(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        x = a.echo.bind(inp).with_tensor_transport(transport=Comm([a, b]))
        first = b.echo.bind(inp)  # b computes this while x comes
        dag = MultiOutputNode([first, b.echo.bind(x)])
    assert _prefetches(compile_debug(dag, OVERLAP)) == {(_id(b), 0): [_id(a)]}
    assert _prefetches(compile_debug(dag)) == {}  # off by default, as in Ray


def test_the_graph_printout_shows_the_move(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        x = a.echo.bind(inp).with_tensor_transport(transport=Comm([a, b]))
        first = b.echo.bind(inp)
        dag = MultiOutputNode([first, b.echo.bind(x)])
    compiled = compile_debug(dag, OVERLAP)
    (line,) = [row for row in str(compiled.graph).splitlines() if "prefetch=" in row]
    first = compiled.graph.meta["schedule"][_id(b)][0]
    assert line.lstrip().startswith(f"%{first.name}")


def test_no_move_past_a_task_whose_output_the_writer_reads(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        p = b.echo.bind(inp)
        w = a.echo.bind(p).with_tensor_transport(transport=Comm([a, b]))  # w needs p
        dag = b.echo.bind(w)
    assert _prefetches(compile_debug(dag, OVERLAP)) == {}


def test_no_move_when_the_writer_waits_on_it_through_its_actors_order(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        p = b.echo.bind(inp)
        after_p = a.echo.bind(p)  # a computes this first: it reads p...
        w = a.echo.bind(inp).with_tensor_transport(transport=Comm([a, b]))  # ...then w
        dag = MultiOutputNode([after_p, b.echo.bind(w)])
    assert _prefetches(compile_debug(dag, OVERLAP)) == {}


def test_no_move_past_a_communicator_operation(actors: list[Any]) -> None:
    a, b = actors[:2]
    comm = Comm([a, b])
    with InputNode() as inp:
        y = a.echo.bind(inp).with_tensor_transport(transport=comm)
        x = a.echo.bind(inp).with_tensor_transport(transport=comm)
        first = b.echo.bind(y)  # itself a receive over the communicator
        dag = MultiOutputNode([first, b.echo.bind(x)])
    assert _prefetches(compile_debug(dag, OVERLAP)) == {}


def test_no_move_past_a_collective(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        x = a.echo.bind(inp).with_tensor_transport(transport=Comm([a, b]))
        reduced = raycg.collective.allreduce.bind([a.echo.bind(inp), b.echo.bind(inp)], transport="cpu")
        dag = MultiOutputNode([*reduced, b.echo.bind(x)])
    assert (_id(b), 1) not in _prefetches(compile_debug(dag, OVERLAP))  # b's allreduce is its task 1


def test_a_value_read_before_is_not_received_again(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        x = a.echo.bind(inp).with_tensor_transport(transport=Comm([a, b]))
        uses = [b.echo.bind(x), b.echo.bind(inp), b.echo.bind(x)]  # the first reads x
        dag = MultiOutputNode(uses)
    assert _prefetches(compile_debug(dag, OVERLAP)) == {}


def test_each_later_receive_moves_one_task_back(actors: list[Any]) -> None:
    a, b, c = actors[:3]
    with InputNode() as inp:
        x = a.echo.bind(inp).with_tensor_transport(transport=Comm([a, c]))
        y = b.echo.bind(inp).with_tensor_transport(transport=Comm([b, c]))
        steps = [c.echo.bind(inp), c.echo.bind(x), c.echo.bind(inp), c.echo.bind(y)]
        dag = MultiOutputNode(steps)
    moved = _prefetches(compile_debug(dag, OVERLAP))
    assert moved == {(_id(c), 0): [_id(a)], (_id(c), 2): [_id(b)]}
