"""schedule: each actor computes its tasks in bind order; a global order consistent with
it numbers the nodes; a bind order that would deadlock is refused, naming the cycle."""

from __future__ import annotations

from typing import Any

import pytest
import ray
from compiler_helpers import compile_debug
from ray.dag import InputNode, MultiOutputNode

from raycg.compiler.ir import Actor, FirstArg, Graph, Node, Ref
from raycg.compiler.passes import schedule


def _schedule_lines(graph: Graph) -> list[str]:
    return [line for line in str(graph).splitlines() if line.startswith("schedule[")]


def _plan_order(compiled: Any) -> list[list[tuple[str, int]]]:
    """Each actor's tasks in the Plan: (method, microbatch constant)."""
    return [
        [(t.method, ray.cloudpickle.loads(t.args[1].constant)) for t in actor.tasks]
        for actor in compiled.plan.actors
    ]


def test_chain_through_an_actor_twice(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = a.add.bind(b.add.bind(a.add.bind(inp)))
    graph = compile_debug(dag).graph
    assert _schedule_lines(graph) == [
        "schedule[echo0] = %echo0_add, %echo0_add_1",
        "schedule[echo1] = %echo1_add",
    ]
    assert [n.meta["order"] for n in graph.nodes] == list(range(5))


def test_fan_in(actors: list[Any]) -> None:
    a, b, c = actors
    with InputNode() as inp:
        dag = c.add.bind(a.add.bind(inp[0]), b.add.bind(inp[1]), c.add.bind(inp[2]))
    assert _schedule_lines(compile_debug(dag).graph) == [
        "schedule[echo0] = %echo0_add",
        "schedule[echo1] = %echo1_add",
        "schedule[echo2] = %echo2_add, %echo2_add_1",
    ]


def test_a_task_bound_before_its_input_is_ready_keeps_its_place(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        first = a.add.bind(inp, 1)  # a: bound #0, but its input comes from b
        waits = a.add.bind(b.add.bind(first), 2)  # a: #1, waits on b
        ready = a.add.bind(inp, 3)  # a: #2, ready at once: still computed last
        dag = MultiOutputNode([ready, waits])
    graph = compile_debug(dag).graph
    assert _schedule_lines(graph) == [
        "schedule[echo0] = %echo0_add_1, %echo0_add_2, %echo0_add",
        "schedule[echo1] = %echo1_add",
    ]
    assert str(graph).splitlines()[1] == "%echo0_add_1 = call[echo0.add](%inp, 1)  transport=shm slots=10"


def test_an_actor_bound_first_on_a_value_of_a_later_bind(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        x = a.add.bind(inp, 0)  # a #0
        y = a.add.bind(inp, 1)  # a #1
        dag = MultiOutputNode([b.add.bind(y), x])  # graph order would put y's reader first
    graph = compile_debug(dag).graph
    assert _schedule_lines(graph)[0] == "schedule[echo0] = %echo0_add_1, %echo0_add"
    assert [n.name for n in graph.nodes] == ["inp", "echo0_add_1", "echo0_add", "echo1_add", "out"]


def _two_stages(actors: list[Any], order: list[tuple[int, str, int]]) -> Any:
    """Stage s's fwd/bwd of microbatch m, bound in ``order``: (stage, "F"|"B", m)."""
    s0, s1 = actors[:2]
    nodes: dict[tuple[int, str, int], Any] = {}
    with InputNode() as inp:
        for stage, kind, m in order:
            if kind == "F":
                src = inp[m] if stage == 0 else nodes[(0, "F", m)]
                nodes[(stage, kind, m)] = (s0, s1)[stage].fwd.bind(src, m)
            else:
                src = nodes[(1, "F", m)] if stage == 1 else nodes[(1, "B", m)]
                nodes[(stage, kind, m)] = (s0, s1)[stage].bwd.bind(src, m)
        return compile_debug(MultiOutputNode([nodes[(0, "B", m)] for m in range(3)]))


def test_two_stage_all_forwards_then_all_backwards(actors: list[Any]) -> None:
    order = [(0, "F", m) for m in range(3)] + [(1, "F", m) for m in range(3)]
    order += [(1, "B", m) for m in range(3)] + [(0, "B", m) for m in range(3)]
    compiled = _two_stages(actors, order)
    fb = [("fwd", 0), ("fwd", 1), ("fwd", 2), ("bwd", 0), ("bwd", 1), ("bwd", 2)]
    assert _plan_order(compiled) == [fb, fb]
    assert _schedule_lines(compiled.graph) == [
        "schedule[echo0] = %echo0_fwd, %echo0_fwd_1, %echo0_fwd_2, %echo0_bwd, %echo0_bwd_1, %echo0_bwd_2",
        "schedule[echo1] = %echo1_fwd, %echo1_fwd_1, %echo1_fwd_2, %echo1_bwd, %echo1_bwd_1, %echo1_bwd_2",
    ]


def test_two_stage_one_forward_one_backward(actors: list[Any]) -> None:
    # The binding of a 1F1B loop: stage 0 F1 F2 B1 F3 B2 B3, stage 1 F1 B1 F2 B2 F3 B3.
    order = [(0, "F", 0), (0, "F", 1), (1, "F", 0), (1, "B", 0), (0, "B", 0), (0, "F", 2)]
    order += [(1, "F", 1), (1, "B", 1), (0, "B", 1), (1, "F", 2), (1, "B", 2), (0, "B", 2)]
    compiled = _two_stages(actors, order)
    assert _plan_order(compiled) == [
        [("fwd", 0), ("fwd", 1), ("bwd", 0), ("fwd", 2), ("bwd", 1), ("bwd", 2)],
        [("fwd", 0), ("bwd", 0), ("fwd", 1), ("bwd", 1), ("fwd", 2), ("bwd", 2)],
    ]
    assert [t.task_id for t in compiled.plan.actors[0].tasks] == sorted(
        t.task_id for t in compiled.plan.actors[0].tasks
    )  # task ids number a global order consistent with every actor's


def test_two_handles_whose_bind_orders_deadlock_are_refused(actors: list[Any]) -> None:
    a, b = actors[:2]
    a.add.bind(0)  # a's own count is past #0 whatever ran before: a_again's #0 comes first
    a_again = ray.cloudpickle.loads(ray.cloudpickle.dumps(a))  # a second handle: binds from #0
    with InputNode() as inp:
        early = [a.add.bind(inp, i) for i in range(2)]  # a #0, #1
        late = a.add.bind(inp, 2)  # a #2
        reader = a_again.add.bind(b.add.bind(late))  # a #0 again: before `late`, yet reads it
        dag = MultiOutputNode([*early, reader])
    label = f"Echo({a._actor_id.hex()[:6]})"
    with pytest.raises(ValueError, match=r"^This DAG cannot be compiled because it will deadlock") as info:
        compile_debug(dag)
    message = str(info.value)
    assert message.split(": ", 1)[1].startswith(
        f"each actor computes its tasks in bind order, and here that order waits on itself: actor {label} "
        "computes Echo.add (%echo0_add_3), then Echo.add (%echo0_add), then Echo.add (%echo0_add_1), "
        "then Echo.add (%echo0_add_2); Echo.add (%echo1_add) reads Echo.add (%echo0_add_2); "
        "Echo.add (%echo0_add_3) reads Echo.add (%echo1_add); "
    )
    assert f"{label} had tasks bound through more than one ActorHandle object" in message


def test_a_hand_built_cycle_names_its_tasks() -> None:
    graph = Graph()
    a = Actor("aa" * 16, "Stage", "stage0", None)
    b = Actor("bb" * 16, "Stage", "stage1", None)
    inp = graph.add_node(Node("inp", "input", "InputNode"))
    a1 = graph.add_node(Node("a1", "call", "Stage.f", a, "f", args=[Ref(inp, (FirstArg(),))]))
    b1 = graph.add_node(Node("b1", "call", "Stage.g", b, "g", args=[Ref(a1)]))
    a2 = graph.add_node(Node("a2", "call", "Stage.h", a, "h", args=[Ref(b1)]))
    graph.add_node(Node("out", "output", "output", args=[Ref(a2)], meta={"multi_output": False}))
    a1.meta["bind_index"], a2.meta["bind_index"], b1.meta["bind_index"] = 1, 0, 0
    with pytest.raises(ValueError) as info:
        schedule(graph)
    assert str(info.value).endswith(
        "here that order waits on itself: actor Stage(aaaaaa) computes Stage.h (%a2), then Stage.f (%a1); "
        "Stage.g (%b1) reads Stage.f (%a1); Stage.h (%a2) reads Stage.g (%b1); "
        "bind each actor's tasks in an order its inputs allow"
    )


def test_every_node_after_its_inputs_and_actors_in_first_use_order(actors: list[Any]) -> None:
    a, b, c = actors
    with InputNode() as inp:
        x = c.add.bind(inp[0])
        y = a.add.bind(inp[1])
        dag = b.add.bind(a.add.bind(x, y), c.add.bind(y))
    graph = compile_debug(dag).graph
    for node in graph.nodes:
        assert all(src.meta["order"] < node.meta["order"] for src in node.inputs())
    first_use = [c._actor_id.hex(), a._actor_id.hex(), b._actor_id.hex()]
    assert list(graph.meta["schedule"]) == first_use
