"""CompiledGraph driven by hand-written Plans: the runtime needs no compiler."""

from __future__ import annotations

import pickle
import uuid

import pytest
import ray
from ray.exceptions import RayChannelError, RayTaskError
from runtime_plans import add_channel

from raycg.proto import ActorSetup, ActorStatus, Options, Plan, Teardown, Transport
from raycg.runtime import CompiledGraph, actor_running_graphs
from raycg.runtime._actor import teardown_actor

pytestmark = pytest.mark.timeout(60)


def _plan() -> Plan:
    return Plan(
        graph_id=uuid.uuid4().hex,
        options=Options(
            submit_timeout_s=10,
            get_timeout_s=10,
            buffer_size_bytes=4096,
            max_inflight_executions=4,
            max_buffered_results=100,
        ),
    )


def _channel(plan: Plan, cid: str, transport: int, writer: str | None, readers: list[str | None]) -> None:
    add_channel(plan, cid, transport, writer, readers, slots=4, slot_bytes=4096)


def chain_plan(a: str, b: str) -> Plan:
    """driver -(x, y=...)-> a.add -> b.add(+10 as a constant kwarg) -> driver; and on
    actor a a second task fed in-process: a.split of a.add's result, output 1."""
    plan = _plan()
    _channel(plan, "in", Transport.SHM, None, [a])
    _channel(plan, "ab", Transport.SHM, a, [b])
    _channel(plan, "aa", Transport.INPROC, a, [a])
    _channel(plan, "b_out", Transport.SHM, b, [None])
    _channel(plan, "split_out", Transport.SHM, a, [None])
    plan.input_channel_id = "in"
    pa = plan.actors.add(actor_id=a, actor_label="Adder(a)")
    t1 = pa.tasks.add(
        task_id=1, method="add", display_name="Adder.add", inputs=["in"], num_returns=1, outputs=["ab", "aa"]
    )
    t1.args.add(input_slot=0).projections.add(index=0)
    kw = t1.kwargs.add(name="y")
    kw.value.input_slot = 0
    kw.value.projections.add(key="y")
    t2 = pa.tasks.add(
        task_id=2,
        method="split",
        display_name="Adder.split",
        inputs=["aa"],
        num_returns=2,
        outputs=["split_out"],
    )
    t2.args.add(input_slot=0)
    pb = plan.actors.add(actor_id=b, actor_label="Adder(b)")
    t3 = pb.tasks.add(
        task_id=3, method="add", display_name="Adder.add", inputs=["ab"], num_returns=1, outputs=["b_out"]
    )
    t3.args.add(input_slot=0)
    plan.outputs.add(channel_id="b_out")
    plan.outputs.add(channel_id="split_out").projections.add(index=1)
    plan.multi_output = True
    return plan


def test_a_hand_written_plan_runs(adders: list) -> None:
    a, b = adders
    ids = [h._actor_id.hex() for h in adders]
    graph = CompiledGraph(chain_plan(*ids), dict(zip(ids, adders)))
    try:
        assert ray.get(graph.execute(1, y=2)) == [3, -3]
        refs = [graph.execute(i, y=0) for i in range(10)]
        assert [ray.get(r) for r in refs[::-1]] == [[i, -i] for i in range(10)][::-1]
    finally:
        graph.teardown()
    assert actor_running_graphs(a) == [] and actor_running_graphs(b) == []


def test_setup_failure_names_the_actor_and_leaves_nothing(adders: list) -> None:
    ids = [h._actor_id.hex() for h in adders]
    plan = chain_plan(*ids)
    plan.actors[1].tasks[0].method = "no_such_method"
    with pytest.raises(RayChannelError, match=r"Adder\(b\).*no_such_method"):
        CompiledGraph(plan, dict(zip(ids, adders)))
    assert actor_running_graphs(adders[0]) == [] and actor_running_graphs(adders[1]) == []


def test_a_graph_cannot_be_pickled(adders: list) -> None:
    ids = [h._actor_id.hex() for h in adders]
    graph = CompiledGraph(chain_plan(*ids), dict(zip(ids, adders)))
    try:
        with pytest.raises(TypeError, match="only the process that compiled it"):
            pickle.dumps(graph)
        assert graph.plan.graph_id == graph.graph_id
    finally:
        graph.teardown()


def test_teardown_is_a_teardown_message_answered_by_an_actor_status(adders: list) -> None:
    # The proto is the contract: the caller sends a Teardown, the actor answers with
    # its ActorStatus (how many executions it ran, and why it failed if it did).
    ids = [h._actor_id.hex() for h in adders]
    graph = CompiledGraph(chain_plan(*ids), dict(zip(ids, adders)))
    try:
        assert [ray.get(graph.execute(i, y=0)) for i in range(5)] == [[i, -i] for i in range(5)]
        msg = Teardown(graph_id=graph.graph_id, reason="a test asks", timeout_s=5.0)
        got = ray.get(adders[1].__ray_call__.remote(teardown_actor, msg.SerializeToString()))
        status = ActorStatus.FromString(got)
        assert (status.state, status.executions_done, status.error.kind) == (ActorStatus.STOPPED, 5, "")
        assert actor_running_graphs(adders[1]) == []
    finally:
        graph.teardown()
    assert "options" not in ActorSetup.DESCRIPTOR.fields_by_name  # nothing unread travels
    assert "driver_pid" not in ActorSetup.DESCRIPTOR.fields_by_name


def test_an_output_the_caller_cannot_project_fails_that_output_only(adders: list) -> None:
    # A plan whose output projection does not fit the value (the executor checks
    # num_returns, so only a plan can say this): that output fails, the buffer goes on.
    ids = [h._actor_id.hex() for h in adders]
    plan = chain_plan(*ids)
    plan.outputs[1].projections[0].index = 5  # Adder.split returns 2 values
    graph = CompiledGraph(plan, dict(zip(ids, adders)))
    try:
        for i in range(3):
            good, bad = graph.execute(i, y=0)
            with pytest.raises(RayTaskError, match="IndexError"):
                ray.get(bad)
            assert ray.get(good) == i
    finally:
        graph.teardown()
