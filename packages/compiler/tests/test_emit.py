"""_emit: the Plan, checked on a chain, a diamond, a fan-in, shared inputs and outputs."""

from __future__ import annotations

import re
from typing import Any

import pytest
import ray
from compiler_helpers import OPTIONS, compile_debug
from ray.dag import InputNode, MultiOutputNode

import raycg.collective as raycg_collective
from raycg.compiler import run_passes
from raycg.compiler._emit import emit_plan
from raycg.compiler.ir import Actor, FirstArg, Graph, Node, Ref
from raycg.proto import ArgPlan, CollectiveKind, CollectivePlan, Participant, Plan, Projection, Transport


def _who(p: Participant, names: dict[str, str]) -> str:
    return "driver" if p.HasField("driver") else names[p.actor_id]


def _names(*handles: Any) -> dict[str, str]:
    return {h._actor_id.hex(): "abc"[i] for i, h in enumerate(handles)}


def _channels(plan: Plan, names: dict[str, str]) -> list[str]:
    """One line per channel: 'ch1 SHM a -> b,driver slots=10'."""
    return [
        f"{c.channel_id} {Transport.Name(c.transport)} {_who(c.writer, names)} -> "
        f"{','.join(_who(r, names) for r in c.readers)} slots={c.num_slots}"
        for c in plan.channels
    ]


def _tasks(plan: Plan, names: dict[str, str]) -> list[str]:
    """One line per task: 'a.add#1 in=[ch0] out=[ch1]'."""
    return [
        f"{names[actor.actor_id]}.{t.method}#{t.task_id} in={list(t.inputs)} out={list(t.outputs)}"
        for actor in plan.actors
        for t in actor.tasks
    ]


def _slot(arg: ArgPlan) -> tuple[int, list[Projection]]:
    return arg.input_slot, list(arg.projections)


def test_chain(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp))
    compiled = compile_debug(dag)
    plan, names = compiled.plan, _names(a, b)
    assert _channels(plan, names) == [
        "ch0 SHM driver -> a slots=10",
        "ch1 SHM a -> b slots=10",
        "ch2 SHM b -> driver slots=10",
    ]
    assert _tasks(plan, names) == ["a.echo#1 in=['ch0'] out=['ch1']", "b.echo#2 in=['ch1'] out=['ch2']"]
    assert _slot(plan.actors[0].tasks[0].args[0]) == (0, [Projection(first_arg=True)])
    assert _slot(plan.actors[1].tasks[0].args[0]) == (0, [])
    assert plan.input_channel_id == "ch0" and not plan.multi_output
    assert [(o.channel_id, o.display_name) for o in plan.outputs] == [("ch2", "Echo.echo")]
    assert [p.actor_label for p in plan.actors] == [f"Echo({h._actor_id.hex()[:6]})" for h in (a, b)]
    driver = ray.get_runtime_context().get_node_id()
    assert {p.node_id for p in plan.actors} == {driver}
    assert plan.channels[1].label == "echo0.echo -> echo1.echo"
    assert plan.channels[0].slot_size_bytes == OPTIONS.buffer_size_bytes
    assert plan.options == OPTIONS
    assert re.fullmatch(r"[0-9a-f]{32}", plan.graph_id)
    assert compiled.actors == {a._actor_id.hex(): a, b._actor_id.hex(): b}


def test_diamond(actors: list[Any]) -> None:
    a, b, c = actors
    with InputNode() as inp:
        x = a.add.bind(inp)
        dag = a.add.bind(b.add.bind(x), c.add.bind(x))
    plan, names = compile_debug(dag).plan, _names(a, b, c)
    assert _channels(plan, names) == [
        "ch0 SHM driver -> a slots=10",
        "ch1 SHM a -> b,c slots=10",
        "ch2 SHM b -> a slots=10",
        "ch3 SHM c -> a slots=10",
        "ch4 SHM a -> driver slots=10",
    ]
    assert _tasks(plan, names) == [
        "a.add#1 in=['ch0'] out=['ch1']",
        "a.add#4 in=['ch2', 'ch3'] out=['ch4']",
        "b.add#2 in=['ch1'] out=['ch2']",
        "c.add#3 in=['ch1'] out=['ch3']",
    ]
    join = plan.actors[0].tasks[1]
    assert [_slot(arg) for arg in join.args] == [(0, []), (1, [])]


def test_fan_in_of_indexed_inputs(actors: list[Any]) -> None:
    a, b, c = actors
    with InputNode() as inp:
        dag = c.add.bind(a.add.bind(inp[0]), b.add.bind(inp.k))
    plan, names = compile_debug(dag).plan, _names(a, b, c)
    assert _channels(plan, names) == [
        "ch0 SHM driver -> a,b slots=10",
        "ch1 SHM a -> c slots=10",
        "ch2 SHM b -> c slots=10",
        "ch3 SHM c -> driver slots=10",
    ]
    assert _slot(plan.actors[0].tasks[0].args[0]) == (0, [Projection(index=0)])
    assert _slot(plan.actors[1].tasks[0].args[0]) == (0, [Projection(key="k")])
    assert _tasks(plan, names)[2] == "c.add#3 in=['ch1', 'ch2'] out=['ch3']"


def test_tasks_of_one_actor_share_channels(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        x = a.add.bind(inp)
        y = a.add.bind(x, inp)  # same actor: x in-process, the input read once per execution
        dag = MultiOutputNode([b.add.bind(x, y), y])
    plan, names = compile_debug(dag).plan, _names(a, b)
    assert _channels(plan, names) == [
        "ch0 SHM driver -> a slots=10",
        "ch1 SHM a -> b slots=10",
        "ch2 INPROC a -> a slots=1",
        "ch3 SHM a -> b,driver slots=10",
        "ch4 SHM b -> driver slots=10",
    ]
    assert _tasks(plan, names) == [
        "a.add#1 in=['ch0'] out=['ch1', 'ch2']",
        "a.add#2 in=['ch2', 'ch0'] out=['ch3']",
        "b.add#3 in=['ch1', 'ch3'] out=['ch4']",
    ]
    assert [(o.channel_id, list(o.projections)) for o in plan.outputs] == [("ch4", []), ("ch3", [])]


def test_multi_output_of_a_multi_return_task(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        left, right = a.split.options(num_returns=2).bind(inp)
        dag = MultiOutputNode([right, b.echo.bind(left), left])
    plan, names = compile_debug(dag).plan, _names(a, b)
    assert _channels(plan, names) == [
        "ch0 SHM driver -> a slots=10",
        "ch1 SHM a -> b,driver slots=10",
        "ch2 SHM b -> driver slots=10",
    ]
    split = plan.actors[0].tasks[0]
    assert split.num_returns == 2
    assert _slot(plan.actors[1].tasks[0].args[0]) == (0, [Projection(index=0)])
    assert plan.multi_output
    outputs = [(o.channel_id, [p.index for p in o.projections]) for o in plan.outputs]
    assert outputs == [("ch1", [1]), ("ch2", []), ("ch1", [0])]


def test_constants_are_pickled_once(actors: list[Any]) -> None:
    with InputNode() as inp:
        dag = actors[0].add.bind(inp, 2, z={"k": [1, 2]})
    task = compile_debug(dag).plan.actors[0].tasks[0]
    assert ray.cloudpickle.loads(task.args[1].constant) == 2
    assert task.kwargs[0].name == "z"
    assert ray.cloudpickle.loads(task.kwargs[0].value.constant) == {"k": [1, 2]}


class _Unpicklable:
    """Pickles while Ray scans bind()'s arguments, then no more (as a lock taken later)."""

    broken = False

    def __reduce__(self) -> Any:
        if self.broken:
            raise TypeError("not today")
        return (_Unpicklable, ())


def test_unpicklable_constant_is_refused(actors: list[Any]) -> None:
    with InputNode() as inp:
        dag = actors[0].add.bind(inp, _Unpicklable())
    _Unpicklable.broken = True
    with pytest.raises(ValueError, match=r"^Echo.add: argument 1 \(_Unpicklable\) cannot be pickled"):
        compile_debug(dag)


def test_each_compile_is_a_fresh_graph(actors: list[Any]) -> None:
    with InputNode() as inp:
        dag = actors[0].echo.bind(inp)
    assert compile_debug(dag).plan.graph_id != compile_debug(dag).plan.graph_id


def _three_node_graph() -> Graph:
    """inp -> a (node-1) -> b (node-2), c (node-3, reads inp too) -> a2 (node-1) -> driver."""
    graph = Graph(OPTIONS)
    graph.driver_node_id = "node-1"
    actors = [Actor(ch * 32, "Echo", f"echo{i}", None, node_id=f"node-{n}") for i, (ch, n) in enumerate(
        [("a", 1), ("b", 2), ("c", 3)]
    )]  # fmt: skip
    a, b, c = actors
    inp = graph.add_node(Node("inp", "input", "InputNode"))
    x = graph.add_node(Node("echo0_echo", "call", "Echo.echo", a, "echo", args=[Ref(inp, (FirstArg(),))]))
    y = graph.add_node(Node("echo1_echo", "call", "Echo.echo", b, "echo", args=[Ref(x)]))
    z = graph.add_node(
        Node("echo2_echo", "call", "Echo.echo", c, "echo", args=[Ref(x), Ref(inp, (FirstArg(),))])
    )
    w = graph.add_node(Node("echo0_add", "call", "Echo.add", a, "add", args=[Ref(x), Ref(y), Ref(z)]))
    graph.add_node(Node("out", "output", "output", args=[Ref(w), Ref(y)], meta={"multi_output": True}))
    for actor in actors:
        graph.actors[actor.actor_id] = actor
    return graph


def test_cross_node_edges_get_one_grpc_channel_per_producer() -> None:
    graph = _three_node_graph()
    run_passes(graph, debug=True)
    plan = emit_plan(graph)
    names = {"a" * 32: "a", "b" * 32: "b", "c" * 32: "c"}
    assert _channels(plan, names) == [
        "ch0 SHM driver -> a slots=10",
        "ch1 GRPC driver -> c slots=10",
        "ch2 GRPC a -> b,c slots=10",  # read on node-2 and node-3: one channel, grouped by node
        "ch3 INPROC a -> a slots=1",
        "ch4 GRPC b -> a,driver slots=10",
        "ch5 GRPC c -> a slots=10",
        "ch6 SHM a -> driver slots=10",
    ]
    assert plan.driver_node_id == "node-1"
    assert [(p.actor_label, p.node_id) for p in plan.actors] == [
        ("Echo(aaaaaa)", "node-1"),
        ("Echo(bbbbbb)", "node-2"),
        ("Echo(cccccc)", "node-3"),
    ]
    assert list(plan.input_channel_ids) == ["ch0", "ch1"] and plan.input_channel_id == "ch0"
    assert str(graph).splitlines()[1:4] == [
        "%echo0_echo = call[echo0.echo](%inp)  transport=grpc,inproc slots=10,1",
        "%echo1_echo = call[echo1.echo](%echo0_echo)  transport=grpc slots=10",
        "%echo2_echo = call[echo2.echo](%echo0_echo, %inp)  transport=grpc slots=10",
    ]


def test_an_input_read_only_on_other_nodes_goes_out_by_grpc_alone() -> None:
    graph = _three_node_graph()
    graph.driver_node_id = "node-2"
    run_passes(graph, debug=True)
    plan = emit_plan(graph)
    names = {"a" * 32: "a", "b" * 32: "b", "c" * 32: "c"}
    assert _channels(plan, names)[0] == "ch0 GRPC driver -> a,c slots=10"
    assert list(plan.input_channel_ids) == ["ch0"] and plan.input_channel_id == "ch0"


def test_a_collective_is_each_member_actors_task(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        xs = [a.add.bind(inp), b.add.bind(inp)]
        dag = MultiOutputNode(raycg_collective.broadcast.bind(xs, src_rank=1))
    compiled = compile_debug(dag)
    plan, names = compiled.plan, _names(a, b)
    parts = [t for actor in plan.actors for t in actor.tasks if t.HasField("collective")]
    assert [
        (names[p.actor_id], t.display_name, t.method) for p, t in zip(plan.actors, parts, strict=True)
    ] == [
        ("a", "broadcast(Echo.add)", ""),
        ("b", "broadcast(Echo.add)", ""),
    ]
    assert [(c.collective.rank, c.collective.src_rank) for c in parts] == [(0, 1), (1, 1)]
    assert parts[0].collective == CollectivePlan(
        collective_id="coll0",
        kind=CollectiveKind.BROADCAST,
        members=[a._actor_id.hex(), b._actor_id.hex()],
        rank=0,
        src_rank=1,
        transport="cpu",  # transport=None on actors without GPUs: raycg's CPU communicator
    )
    assert [t.inputs for t in parts] == [["ch1"], ["ch2"]]  # each member's own tensor (in process)
    line = "%echo0_broadcast = collective[echo0.broadcast](%echo0_add)  transport=shm slots=10"
    assert f"{line} coll0 rank=0/2 via=cpu" in str(compiled.graph)
