"""schedule: each actor computes its tasks in bind order; a global order consistent with
it numbers the nodes; a bind order that would deadlock is refused, naming the cycle."""

from __future__ import annotations

from typing import Any

import pytest
import ray
from compiler_helpers import compile_debug
from ray.dag import InputNode, MultiOutputNode
from ray.experimental.collective import allreduce

import raycg.collective as raycg_collective
from raycg.compiler.ir import Actor, Collective, FirstArg, Graph, Node, Ref
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


def test_p2p_and_a_collective_in_opposite_orders_on_two_actors(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        send = a.add.bind(inp, 1)  # a: the transfer to b first, then the collective
        ya, yb = a.add.bind(inp, 2), b.add.bind(inp, 3)
        ca, cb = allreduce.bind([ya, yb])
        recv = b.add.bind(send, cb)  # b: the collective first, then the transfer from a
        dag = MultiOutputNode([a.add.bind(ca), recv])
    compiled = compile_debug(dag)
    # Names follow the frontend's walk from the outputs (send is %echo0_add_2); the order
    # is bind order: send, ya, the allreduce, a's last task.
    assert _schedule_lines(compiled.graph) == [
        "schedule[echo0] = %echo0_add_2, %echo0_add, %echo0_allreduce, %echo0_add_1",
        "schedule[echo1] = %echo1_add, %echo1_allreduce, %echo1_add_1",
    ]
    (stage0, _) = compiled.plan.actors
    assert [ray.cloudpickle.loads(t.args[1].constant) for t in stage0.tasks[:2]] == [1, 2]
    positions = {n.name: n.meta["order"] for n in compiled.graph.nodes}
    assert positions["echo1_allreduce"] == positions["echo0_allreduce"] + 1  # members placed together


def test_collectives_in_bind_order_on_every_member(actors: list[Any]) -> None:
    a, b, c = actors
    with InputNode() as inp:
        first = allreduce.bind([a.add.bind(inp), b.add.bind(inp), c.add.bind(inp)])
        second = raycg_collective.allgather.bind([b.add.bind(first[1]), a.add.bind(first[0])])
        dag = MultiOutputNode([*second, first[2]])
    lines = _schedule_lines(compile_debug(dag).graph)
    assert lines == [
        "schedule[echo0] = %echo0_add, %echo0_allreduce, %echo0_add_1, %echo0_allgather",
        "schedule[echo1] = %echo1_add, %echo1_allreduce, %echo1_add_1, %echo1_allgather",
        "schedule[echo2] = %echo2_add, %echo2_allreduce",
    ]


def _collective_graph(a_order: list[str], b_order: list[str]) -> Graph:
    """Two actors, two allreduces over both (c1 on x, c2 on c1's result) and a transfer
    a.t -> b.u; each actor's bind order as given (names: x, c1, c2, t on a; x, c1, c2, u on b)."""
    graph = Graph()
    a = Actor("aa" * 16, "Stage", "stage0", None)
    b = Actor("bb" * 16, "Stage", "stage1", None)
    inp = graph.add_node(Node("inp", "input", "InputNode"))
    nodes: dict[str, Node] = {}

    def add(name: str, actor: Actor, op: Any, args: list[Any]) -> Node:
        nodes[name] = graph.add_node(Node(name, op, f"Stage.{name[:-1]}", actor, name[:-1], args=args))
        return nodes[name]

    c1 = Collective("coll0", "allreduce", [a.actor_id, b.actor_id], reduce_op="SUM")
    c2 = Collective("coll1", "allreduce", [a.actor_id, b.actor_id], reduce_op="SUM")
    for actor, tag in ((a, "a"), (b, "b")):
        add(f"x{tag}", actor, "call", [Ref(inp, (FirstArg(),))])
        for coll, name, src in ((c1, "c1", "x"), (c2, "c2", "c1")):
            member = add(f"{name}{tag}", actor, "collective", [Ref(nodes[f"{src}{tag}"])])
            member.meta["collective"] = coll
            coll.members.append(member)
    add("ta", a, "call", [Ref(nodes["xa"])])
    add("ub", b, "call", [Ref(nodes["ta"])])
    outs = [Ref(nodes[n]) for n in ("c2a", "c2b", "ub")]
    graph.add_node(Node("out", "output", "output", args=outs, meta={"multi_output": True}))
    for name in a_order:
        nodes[f"{name}a" if name != "t" else "ta"].meta["bind_index"] = a_order.index(name)
    for name in b_order:
        nodes[f"{name}b" if name != "u" else "ub"].meta["bind_index"] = b_order.index(name)
    return graph


def test_hand_built_collectives_and_a_transfer_in_opposite_orders() -> None:
    graph = _collective_graph(["x", "t", "c1", "c2"], ["x", "c1", "c2", "u"])
    schedule(graph)
    assert _schedule_lines(graph) == [
        "schedule[stage0] = %xa, %ta, %c1a, %c2a",
        "schedule[stage1] = %xb, %c1b, %c2b, %ub",
    ]


def test_two_collectives_bound_in_opposite_orders_are_refused() -> None:
    graph = _collective_graph(["x", "c2", "c1", "t"], ["x", "c1", "c2", "u"])
    with pytest.raises(ValueError, match=r"^This DAG cannot be compiled because it will deadlock") as info:
        schedule(graph)
    message = str(info.value)
    assert "Stage.c2 (%c2a) reads Stage.c1 (%c1a)" in message or "enters coll" in message
    assert "%c1a" in message and "%c2a" in message


def test_a_transfer_a_collective_waits_for_is_refused() -> None:
    # stage0 runs the collective before t; stage1 runs u (which reads t) before it.
    graph = _collective_graph(["x", "c1", "c2", "t"], ["x", "u", "c1", "c2"])
    with pytest.raises(ValueError) as info:
        schedule(graph)
    assert str(info.value).split("waits on itself: ")[1] == (
        "actor Stage(aaaaaa) computes Stage.c2 (%c2a), then Stage.t (%ta); "
        "Stage.u (%ub) reads Stage.t (%ta); "
        "actor Stage(bbbbbb) computes Stage.u (%ub), then Stage.c1 (%c1b); "
        "Stage.c1 (%c1a) enters coll0 only with Stage.c1 (%c1b); Stage.c2 (%c2a) reads Stage.c1 (%c1a); "
        "bind each actor's tasks in an order its inputs allow"
    )
