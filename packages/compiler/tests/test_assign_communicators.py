"""assign_communicators: the user's Communicator instances numbered, their actors and
ranks checked; ``default_communicator`` takes what would go through NCCL; two edges over
one instance in opposite orders are refused."""

from __future__ import annotations

from typing import Any

import pytest
from compiler_helpers import Comm, compile_debug
from ray.dag import InputNode, MultiOutputNode

import raycg.collective
from raycg.proto import TensorTransport


def test_instances_are_numbered_with_their_members_in_rank_order(actors: list[Any]) -> None:
    a, b, c = actors[:3]
    first, second = Comm([b, a]), Comm([a, b, c])
    with InputNode() as inp:
        x = a.echo.bind(inp).with_tensor_transport(transport=first)
        y = b.echo.bind(x).with_tensor_transport(transport=second)
        dag = c.echo.bind(y)
    plan = compiled = compile_debug(dag).plan
    ids = {ch.label: ch.tensor.communicator_id for ch in plan.channels if ch.tensor.communicator_id}
    assert ids == {"echo0.echo -> echo1.echo": "comm0", "echo1.echo -> echo2.echo": "comm1"}
    members = [list(c.members) for c in compiled.communicators]
    hexes = [h._actor_id.hex() for h in (a, b, c)]
    assert members == [[hexes[1], hexes[0]], hexes]
    assert compiled.communicators[0].written.endswith("Comm (transport of Echo.echo)")


def test_a_collective_over_an_instance_takes_its_ranks(actors: list[Any]) -> None:
    a, b = actors[:2]
    comm = Comm([b, a])  # b is rank 0
    with InputNode() as inp:
        outs = raycg.collective.broadcast.bind(
            [a.echo.bind(inp), b.echo.bind(inp)], src_rank=0, transport=comm
        )
        dag = MultiOutputNode(outs)
    plan = compile_debug(dag).plan
    parts = {ap.actor_id: t.collective for ap in plan.actors for t in ap.tasks if t.HasField("collective")}
    a_hex, b_hex = a._actor_id.hex(), b._actor_id.hex()
    assert list(parts[a_hex].members) == [b_hex, a_hex]
    assert (parts[a_hex].rank, parts[b_hex].rank) == (1, 0)
    assert parts[a_hex].src_rank == 1  # the source is still a's tensor
    assert parts[a_hex].transport == "communicator" and parts[a_hex].communicator_id == "comm0"


def test_default_communicator_takes_nccl_edges_and_collectives_not_cpu_ones(actors: list[Any]) -> None:
    a, b = actors[:2]
    default = Comm([a, b])
    with InputNode() as inp:
        x = a.echo.bind(inp).with_tensor_transport(transport="nccl")  # CPU actors: the instance decides
        auto = raycg.collective.allreduce.bind([a.echo.bind(inp), b.echo.bind(x)])
        cpu = raycg.collective.allreduce.bind(auto, transport="cpu")
        dag = MultiOutputNode(cpu)
    plan = compile_debug(dag, default_communicator=default).plan
    (edge,) = [ch for ch in plan.channels if ch.HasField("tensor")]
    assert (edge.tensor.transport, edge.tensor.communicator_id) == (
        TensorTransport.TENSOR_COMMUNICATOR,
        "comm0",
    )
    transports = [t.collective.transport for t in plan.actors[0].tasks if t.HasField("collective")]
    assert transports == ["communicator", "cpu"]


def test_two_edges_over_one_instance_in_opposite_orders_are_refused(actors: list[Any]) -> None:
    a, b = actors[:2]
    comm = Comm([a, b])
    with InputNode() as inp:
        x = a.echo.bind(inp).with_tensor_transport(transport=comm)
        y = a.add.bind(inp).with_tensor_transport(transport=comm)
        by = b.echo.bind(y)  # b binds its reader of y first
        bx = b.echo.bind(x)
        dag = MultiOutputNode([by, bx])
    with pytest.raises(
        ValueError, match=r"receives Echo\.add then Echo\.echo over it, but .* sends them in the other"
    ):
        compile_debug(dag)


def test_an_object_that_is_not_a_communicator_is_refused(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(transport="nccl"))
    with pytest.raises(ValueError, match=r"builtins\.object \(default_communicator\) is not a Communicator"):
        compile_debug(dag, default_communicator=object())
