"""runtime._stats_report.report: graph.stats()'s dict from hand-written Plans and recorder
summaries (no Ray cluster)."""

from __future__ import annotations

import pytest
from runtime_plans import add_channel, crossnode_plan

from raycg.proto import Plan, TensorHint, TensorTransport, Transport
from raycg.runtime._stats_report import report

pytestmark = pytest.mark.timeout(30)

A, B, C = "a1" * 16, "b2" * 16, "c3" * 16


def _rec(count: int) -> dict[str, float]:
    return {"count": count, "errors": 0, "p50_us": 1.0, "p90_us": 2.0, "p99_us": 3.0}


def _crossnode_stats() -> dict[str, dict]:
    """What each actor of crossnode_plan() records: its tasks and the channels it reads."""
    forward = {"1:Stage.forward": _rec(5), "2:allreduce.SUM(Stage.forward)": _rec(5)}
    return {
        A: {"tasks": {"1:Stage.embed": _rec(5)}, "reads": {"ch0": _rec(5)}},
        B: {"tasks": forward, "reads": {"ch3": _rec(5), "ch1": _rec(5), "ch4": _rec(5)}},
        C: {"tasks": forward, "reads": {"ch2": _rec(5), "ch1": _rec(5), "ch5": _rec(5)}},
    }


def test_channels_are_named_by_their_transport_and_tensors() -> None:
    stats = report(crossnode_plan(), _crossnode_stats(), {"executions_submitted": 5})
    transports = {name: ch["transport"] for name, ch in stats["channels"].items()}
    assert transports == {
        "ch0 (read by Stage(a1a1a1))": "shm",
        "ch3 (read by Stage(b2b2b2))": "grpc, nccl -> cuda",
        "ch1 (read by Stage(b2b2b2))": "grpc",
        "ch4 (read by Stage(b2b2b2))": "inproc",
        "ch2 (read by Stage(c3c3c3))": "grpc, tensors -> cpu",
        "ch1 (read by Stage(c3c3c3))": "grpc",
        "ch5 (read by Stage(c3c3c3))": "inproc",
    }
    assert stats["channels"]["ch0 (read by Stage(a1a1a1))"]["read_wait"] == _rec(5)
    assert stats["caller"] == {"executions_submitted": 5}


def test_default_device_is_the_readers() -> None:
    plan = Plan(graph_id="g")
    plan.actors.add(actor_id="aa", actor_label="A")
    plan.actors.add(actor_id="bb", actor_label="B", gpu_ids=["0"])
    add_channel(plan, "in", Transport.SHM, None, ["aa", "bb"])
    plan.channels[0].tensor.CopyFrom(TensorHint(transport=TensorTransport.TENSOR_SHM, static_shape=True))
    got = {actor: {"tasks": {}, "reads": {"in": _rec(1)}} for actor in ("aa", "bb")}
    channels = report(plan, got, {})["channels"]
    assert channels["in (read by A)"]["transport"] == "shm, tensors -> cpu, static shape"
    assert channels["in (read by B)"]["transport"] == "shm, tensors -> cuda, static shape"


def test_collectives_list_each_members_part_in_rank_order() -> None:
    got = _crossnode_stats()
    got = {C: got[C], A: got[A], B: got[B]}  # answers in any order
    stats = report(crossnode_plan(), got, {})
    assert stats["collectives"] == {
        "coll0": {
            "op": "allreduce SUM",
            "communicator": "cpu communicator",
            "members": {"Stage(b2b2b2)": _rec(5), "Stage(c3c3c3)": _rec(5)},
        }
    }
    assert stats["tasks"]["Stage(b2b2b2).2:allreduce.SUM(Stage.forward)"] == _rec(5)  # also a task


def test_a_dead_actor_is_said_and_the_rest_kept() -> None:
    got: dict = _crossnode_stats()
    got[C] = RuntimeError("actor died")
    stats = report(crossnode_plan(), got, {})
    assert stats["tasks"]["Stage(c3c3c3)"] == {"error": "RuntimeError: actor died"}
    assert stats["tasks"]["Stage(a1a1a1).1:Stage.embed"] == _rec(5)
    assert list(stats["collectives"]["coll0"]["members"]) == ["Stage(b2b2b2)"]  # what was recorded
    assert not any("c3c3c3" in name for name in stats["channels"])


def test_a_plan_without_collectives_has_no_collectives_entry() -> None:
    plan = crossnode_plan()
    for actor in plan.actors:
        for task in actor.tasks:
            task.ClearField("collective")
    assert "collectives" not in report(plan, _crossnode_stats(), {})
