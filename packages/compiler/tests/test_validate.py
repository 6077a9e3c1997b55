"""validate: every refusal API.md names, its exception type, the node it names, and
that the DAG, once fixed, compiles."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from compiler_helpers import OPTIONS, Echo, compile_debug, kill_and_wait, plain_function
from ray.dag import InputNode, MultiOutputNode

import raycg.collective as raycg_collective
from raycg.compiler.ir import Actor, Collective, FirstArg, Graph, Node, Ref
from raycg.compiler.passes import validate
from raycg.proto import Projection


def test_function_task_is_not_implemented(actors: list[Any]) -> None:
    with InputNode() as inp:
        dag = actors[0].echo.bind(plain_function.bind(inp))
    with pytest.raises(
        NotImplementedError,
        match=r"^Compiled DAGs currently only support actor method nodes: plain_function is a function task",
    ):
        compile_debug(dag)
    with InputNode() as inp:  # fixed: an actor method instead
        dag = actors[0].echo.bind(actors[1].echo.bind(inp))
    compile_debug(dag)


@pytest.mark.parametrize("where", ["list", "dict", "tuple", "kwarg"])
def test_dag_node_inside_a_container(actors: list[Any], where: str) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        x = a.echo.bind(inp)
        arg: object = {"list": [x], "dict": {"k": x}, "tuple": (x, 1), "kwarg": [x]}[where]
        dag = b.echo.bind(inp, y=arg) if where == "kwarg" else b.echo.bind(arg)
    position = "keyword argument 'y'" if where == "kwarg" else "argument 0"
    with pytest.raises(ValueError, match=r"^Found 1 DAGNodes from the arg ") as info:
        compile_debug(dag)
    assert str(info.value).startswith(
        f"Found 1 DAGNodes from the arg {position} ({type(arg).__name__}) in Echo.echo: Echo.echo. "
        "Please ensure that the argument is a single DAGNode"
    )


def test_a_nested_node_is_named_by_its_method(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind([a.split.bind(inp), inp[0]])
    named = "from the arg argument 0 (list) in Echo.echo: Echo.split, inp[0]."
    with pytest.raises(ValueError, match=re.escape(named)):
        compile_debug(dag)


def test_no_input_node(actors: list[Any]) -> None:
    dag = actors[0].echo.bind(actors[1].echo.bind(1))
    with pytest.raises(ValueError, match=r"^Compiled DAGs currently require exactly one InputNode: Echo"):
        compile_debug(dag)


def test_task_depending_on_no_input(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = MultiOutputNode([a.echo.bind(inp), b.add.bind(1)])
    with pytest.raises(ValueError, match=r"^Compiled DAGs require each task .*: Echo.add on .* depends on"):
        compile_debug(dag)


def test_leaf_node_then_fixed_with_the_same_input(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = a.echo.bind(inp)
        leaf = b.add.bind(inp)
    with pytest.raises(ValueError, match=r"^Compiled DAG doesn't support leaf nodes, i\.e\.") as info:
        compile_debug(dag)
    label = f"Echo({b._actor_id.hex()[:6]})"
    assert f"There are 1 leaf nodes in the DAG: Echo.add on actor {label}. " in str(info.value)
    compile_debug(MultiOutputNode([dag, leaf]))  # fixed: the leaf is now an output


def test_result_read_by_a_task_that_is_not_compiled(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = a.echo.bind(inp)
        b.echo.bind(dag)  # reads the graph's end: a leaf below the output
    with pytest.raises(ValueError, match="leaf"):
        compile_debug(dag)


def test_dead_actor_then_fixed(new_actor: Callable[[], Any], actors: list[Any]) -> None:
    doomed = new_actor()
    kill_and_wait(doomed)
    with InputNode() as inp:
        dag = actors[0].echo.bind(doomed.echo.bind(inp))
    label = re.escape(f"Echo({doomed._actor_id.hex()[:6]})")
    with pytest.raises(ValueError, match=rf"^Echo.echo: actor {label} is dead"):
        compile_debug(dag)
    with InputNode() as inp:
        dag = actors[0].echo.bind(new_actor().echo.bind(inp))
    compile_debug(dag)


def test_mixing_input_and_indexed_input(actors: list[Any]) -> None:
    with InputNode() as inp:
        dag = actors[0].add.bind(inp, inp[0])
    with pytest.raises(ValueError, match=r"^All tasks must either use InputNode\(\) directly.*: Echo.add"):
        compile_debug(dag)


def test_unused_input_attribute(actors: list[Any]) -> None:
    with InputNode() as inp:
        _ = inp.unused
        dag = actors[0].echo.bind(inp[0])
    with pytest.raises(ValueError, match="'unused'"):
        compile_debug(dag)


def test_two_input_nodes(actors: list[Any]) -> None:
    with InputNode() as one, InputNode() as two:
        dag = actors[0].add.bind(one, two)
    with pytest.raises(ValueError, match="2 InputNodes"):
        compile_debug(dag)


def test_output_that_is_the_input(actors: list[Any]) -> None:
    with InputNode() as inp:
        dag = MultiOutputNode([actors[0].echo.bind(inp), inp])
    with pytest.raises(ValueError, match=r"^MultiOutputNode: output 1 is the InputNode"):
        compile_debug(dag)


def test_actor_created_inside_the_dag(ray_local: None) -> None:
    with InputNode() as inp:
        dag = Echo.bind().echo.bind(inp)
    with pytest.raises(ValueError, match=r"^Compiled DAGs can only bind methods to an actor that is already"):
        compile_debug(dag)


def test_zero_num_returns(actors: list[Any]) -> None:
    with InputNode() as inp:
        dag = actors[0].echo.options(num_returns=0).bind(inp)
    with pytest.raises(ValueError, match=r"^Echo.echo: num_returns=0 cannot be compiled"):
        compile_debug(dag)


def test_an_unread_return_of_a_read_task_is_a_leaf(actors: list[Any]) -> None:
    a = actors[0]
    with InputNode() as inp:
        left, right = a.split.options(num_returns=2).bind(inp)
    label = f"Echo({a._actor_id.hex()[:6]})"
    leaf = f"leaf nodes in the DAG: output 1 of Echo.split on actor {label}. "
    with pytest.raises(ValueError, match=re.escape(leaf)):
        compile_debug(left)  # as Ray: return_idx_1 has no downstream node
    compiled = compile_debug(MultiOutputNode([left, right]))  # fixed: both outputs are read
    outputs = [list(o.projections) for o in compiled.plan.outputs]
    assert outputs == [[Projection(index=0)], [Projection(index=1)]]


def test_every_leaf_is_named(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = a.echo.bind(inp)
        b.add.bind(inp)
        b.split.options(num_returns=3).bind(inp)[1]  # none of the 3 outputs is read
    with pytest.raises(ValueError, match=r"There are 4 leaf nodes in the DAG: Echo\.add on actor") as info:
        compile_debug(dag)
    for i in range(3):
        assert f"; output {i} of Echo.split on actor" in str(info.value)


def test_the_input_alone_is_no_graph(ray_local: None) -> None:
    with InputNode() as inp:
        pass
    with pytest.raises(ValueError, match=r"^the DAG ends with the InputNode"):
        compile_debug(inp)


def test_a_collective_repeating_an_actor_is_refused_at_bind(actors: list[Any]) -> None:
    a = actors[0]
    with InputNode() as inp, pytest.raises(ValueError, match="Expected unique actor handles"):
        raycg_collective.allreduce.bind([a.add.bind(inp), a.add.bind(inp)])


def test_a_collective_repeating_an_actor_is_refused_at_compile() -> None:
    graph = Graph(OPTIONS)
    a = Actor("aa" * 16, "Stage", "stage0", None, node_id="n")
    graph.actors[a.actor_id] = a
    inp = graph.add_node(Node("inp", "input", "InputNode"))
    coll = Collective("coll0", "allreduce", [a.actor_id, a.actor_id], reduce_op="SUM")
    for i in range(2):
        x = graph.add_node(Node(f"x{i}", "call", "Stage.x", a, "x", args=[Ref(inp, (FirstArg(),))]))
        member = graph.add_node(Node(f"c{i}", "collective", "allreduce.SUM(Stage.x)", a, "c", args=[Ref(x)]))
        member.meta["collective"] = coll
        coll.members.append(member)
    outs = [Ref(m) for m in coll.members]
    graph.add_node(Node("out", "output", "output", args=outs, meta={"multi_output": True}))
    with pytest.raises(
        ValueError, match=r"allreduce\.SUM \(coll0\) takes part twice on actor Stage\(aaaaaa\)"
    ):
        validate(graph)


def test_a_nccl_collective_on_cpu_actors_is_refused(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = MultiOutputNode(
            raycg_collective.allreduce.bind([a.add.bind(inp), b.add.bind(inp)], transport="nccl")
        )
    label = re.escape(f"Echo({a._actor_id.hex()[:6]})")
    with pytest.raises(ValueError, match=rf"allreduce\.SUM over NCCL .* but actor {label} has none"):
        compile_debug(dag)
