"""_setup.refuse_unsupported: what the compiler plans but the runtime cannot run yet is
refused before anything is created, naming it."""

from __future__ import annotations

import importlib.util
import re

import pytest
from runtime_plans import add_channel

from raycg.proto import CollectiveKind, CollectivePlan, Plan, TensorTransport, Transport
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


def test_a_grpc_channel_is_not_refused() -> None:
    _setup.refuse_unsupported(_cross_node_plan())  # set up by _crossnode (tests/test_multinode.py)


def _one_node_plan() -> Plan:
    plan = Plan(graph_id="g" * 32, driver_node_id="node-1", input_channel_id="ch0")
    for a in ("aa", "bb"):
        plan.actors.add(actor_id=a * 16, actor_label=f"Adder({a * 3})", node_id="node-1")
    add_channel(plan, "ch0", Transport.SHM, None, ["aa" * 16, "bb" * 16])
    return plan


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy makes NCCL ids here")
def test_a_collective_over_nccl_is_refused_naming_it_and_its_members() -> None:
    plan = _one_node_plan()
    for rank, actor in enumerate(plan.actors):
        task = actor.tasks.add(display_name="allreduce.SUM(Adder.add)", inputs=["ch0"])
        task.collective.CopyFrom(
            CollectivePlan(
                collective_id="coll0",
                kind=CollectiveKind.ALLREDUCE,
                reduce_op="SUM",
                members=["aa" * 16, "bb" * 16],
                rank=rank,
                transport="nccl",
            )
        )
    with pytest.raises(
        NotImplementedError,
        match=re.escape(
            "coll0 (members Adder(aaaaaa), Adder(bbbbbb)): a NCCL collective needs NCCL ids from the driver"
        ),
    ):
        _setup.create_rings(plan, _setup.Resources())
    for actor in plan.actors:
        actor.tasks[0].collective.transport = "auto"  # no GPUs: the CPU communicator
    _setup.refuse_unsupported(plan)


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy makes NCCL ids here")
def test_tensors_planned_through_nccl_are_refused_without_cupy() -> None:
    plan = _one_node_plan()
    add_channel(plan, "ch1", Transport.SHM, "aa" * 16, ["bb" * 16])
    plan.channels[1].tensor.transport = TensorTransport.TENSOR_ACCELERATOR
    plan.channels[1].tensor.written = "Adder.add: TorchTensorType(transport='accelerator', device='default')"
    with pytest.raises(
        NotImplementedError,
        match=r"^ch1: its tensors are planned to go through NCCL \(Adder\.add: .*needs NCCL ids",
    ):
        _setup.refuse_unsupported(plan)
    plan.channels[1].tensor.transport = TensorTransport.TENSOR_SHM
    _setup.refuse_unsupported(plan)  # through the ring: runs


def test_a_communicator_edge_without_its_instance_is_refused() -> None:
    plan = _one_node_plan()
    add_channel(plan, "ch1", Transport.SHM, "aa" * 16, ["bb" * 16])
    plan.channels[1].tensor.transport = TensorTransport.TENSOR_COMMUNICATOR
    plan.channels[1].tensor.communicator_id = "comm0"
    with pytest.raises(
        NotImplementedError, match=r"^ch1: its tensors are planned through communicator 'comm0'"
    ):
        _setup.refuse_unsupported(plan)
