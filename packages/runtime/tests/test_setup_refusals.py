"""_setup.refuse_unsupported: what the compiler plans but the runtime cannot run yet is
refused before anything is created, naming it."""

from __future__ import annotations

import pytest
from runtime_plans import add_channel

from raycg.proto import Plan, Transport
from raycg.runtime import _setup


def _cross_node_plan() -> Plan:
    plan = Plan(graph_id="g" * 32, driver_node_id="node-1", input_channel_id="ch0")
    plan.actors.add(actor_id="aa" * 16, actor_label="Adder(aaaaaa)", node_id="node-1")
    plan.actors.add(actor_id="bb" * 16, actor_label="Adder(bbbbbb)", node_id="node-2")
    add_channel(plan, "ch0", Transport.SHM, None, ["aa" * 16])
    add_channel(plan, "ch1", Transport.GRPC, "aa" * 16, ["bb" * 16])
    plan.channels[1].label = "adder0.add -> adder1.add"
    add_channel(plan, "ch2", Transport.GRPC, "bb" * 16, [None])
    return plan


def test_a_grpc_channel_is_refused_naming_the_edge_and_both_nodes() -> None:
    res = _setup.Resources()
    with pytest.raises(NotImplementedError) as info:
        _setup.create_rings(_cross_node_plan(), res)
    assert str(info.value).startswith(
        "adder0.add -> adder1.add: this edge crosses Ray nodes, from actor Adder(aaaaaa) (node node-1) "
        "to actor Adder(bbbbbb) (node node-2), and raycg.runtime has no cross-node (gRPC) channel yet"
    )
    assert res.rings == {}  # refused before the first ring was made


def test_the_driver_end_is_named_with_its_node() -> None:
    plan = _cross_node_plan()
    del plan.channels[1]
    with pytest.raises(
        NotImplementedError, match=r"from actor Adder\(bbbbbb\) \(node node-2\) to the driver \(node node-1\)"
    ):
        _setup.refuse_unsupported(plan)
