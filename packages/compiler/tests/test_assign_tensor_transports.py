"""assign_tensor_transports: each hinted edge's tensor transport and device, from the hint
and from where (and on which GPUs) the ends run; NCCL refused where it cannot run."""

from __future__ import annotations

import re
from typing import Any

import pytest
from compiler_helpers import OPTIONS, compile_debug
from ray.dag import InputNode, MultiOutputNode
from ray.experimental.channel.torch_tensor_type import TorchTensorType
from ray.experimental.util.types import Device

from raycg.compiler import run_passes
from raycg.compiler._emit import emit_plan
from raycg.compiler.ir import Actor, Collective, FirstArg, Graph, Node, Ref, TensorHint
from raycg.proto import Device as PlanDevice
from raycg.proto import TensorTransport


def test_auto_on_cpu_actors_is_shared_memory(actors: list[Any]) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport())
    compiled = compile_debug(dag)
    assert str(compiled.graph).splitlines()[1] == (
        "%echo0_echo = call[echo0.echo](%inp)  transport=shm slots=10 tensor=shm device=default"
    )
    hint = compiled.plan.channels[1].tensor
    assert (hint.transport, hint.device, hint.static_shape) == (TensorTransport.TENSOR_SHM, 0, False)
    assert not compiled.plan.channels[0].HasField("tensor")  # no hint: a plain value


@pytest.mark.parametrize("device", [Device.GPU, "gpu", "cuda"])
def test_type_hint_with_device_and_promises(actors: list[Any], device: Any) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        x = a.echo.bind(inp)
        x.type_hint = TorchTensorType(device=device, _static_shape=True, _direct_return=True)
        dag = b.echo.bind(x)
    compiled = compile_debug(dag)
    assert str(compiled.graph).splitlines()[1].endswith("tensor=shm device=gpu static_shape direct_return")
    hint = compiled.plan.channels[1].tensor
    assert (hint.device, hint.static_shape, hint.direct_return) == (PlanDevice.DEVICE_GPU, True, True)


def test_an_unknown_device_is_refused(actors: list[Any]) -> None:
    with InputNode() as inp:
        x = actors[0].echo.bind(inp)
        x.type_hint = TorchTensorType(device="tpu")
    with pytest.raises(ValueError, match=r"^Echo.echo: tensor device 'tpu' is not one of"):
        compile_debug(actors[1].echo.bind(x))


@pytest.mark.parametrize("transport", ["nccl", "accelerator"])
def test_nccl_without_gpus_is_refused_naming_the_node(actors: list[Any], transport: str) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.add.bind(inp).with_tensor_transport(transport=transport))
    label = re.escape(f"Echo({a._actor_id.hex()[:6]})")
    with pytest.raises(
        ValueError, match=rf"^Echo.add: its tensor transport is NCCL .* but actor {label} has no GPU"
    ):
        compile_debug(dag)


def test_nccl_on_the_input_is_refused(actors: list[Any]) -> None:
    with InputNode() as inp:
        dag = actors[0].echo.bind(inp.with_tensor_transport(transport="nccl"))
    with pytest.raises(ValueError, match=r"^DAG inputs cannot be transferred via accelerator .*: InputNode"):
        compile_debug(dag)
    with InputNode() as inp:
        dag = actors[0].echo.bind(inp[0].with_tensor_transport(transport="nccl"))
    with pytest.raises(ValueError, match=r"participate in the communicator group: inp\[0\]"):
        compile_debug(dag)


def _gpu_graph(transport: str, device: str = "default") -> Graph:
    """a (GPU 0) -> b (GPU 1), c (no GPU), driver; a's result hinted."""
    graph = Graph(OPTIONS)
    graph.driver_node_id = "n"
    a = Actor("a" * 32, "Stage", "stage0", None, node_id="n", gpu_ids=["0"])
    b = Actor("b" * 32, "Stage", "stage1", None, node_id="n", gpu_ids=["1"])
    c = Actor("c" * 32, "Stage", "stage2", None, node_id="n")
    inp = graph.add_node(Node("inp", "input", "InputNode"))
    x = graph.add_node(Node("x", "call", "Stage.fwd", a, "fwd", args=[Ref(inp, (FirstArg(),))]))
    x.meta["tensor_hint"] = TensorHint(transport, device, written=f"Stage.fwd: {transport}")
    y = graph.add_node(Node("y", "call", "Stage.fwd", b, "fwd", args=[Ref(x)]))
    z = graph.add_node(Node("z", "call", "Stage.fwd", c, "fwd", args=[Ref(x)]))
    graph.add_node(
        Node("out", "output", "output", args=[Ref(y), Ref(z), Ref(x)], meta={"multi_output": True})
    )
    for actor in (a, b, c):
        graph.actors[actor.actor_id] = actor
    return graph


def test_auto_between_gpus_is_nccl_and_shared_memory_elsewhere() -> None:
    graph = _gpu_graph("auto")
    run_passes(graph, debug=True)
    x = graph.nodes[1]
    assert {u.name: t for u, t in x.meta["tensor_to"].items()} == {
        "y": TensorTransport.TENSOR_ACCELERATOR,
        "z": TensorTransport.TENSOR_SHM,
        "out": TensorTransport.TENSOR_SHM,
    }
    plan = emit_plan(graph)
    from_x = [c for c in plan.channels if c.writer.actor_id == "a" * 32]
    assert [(c.label, TensorTransport.Name(c.tensor.transport)) for c in from_x] == [
        ("stage0.fwd -> stage2.fwd, driver", "TENSOR_SHM"),  # one channel per transport kind
        ("stage0.fwd -> stage1.fwd", "TENSOR_ACCELERATOR"),
    ]
    assert [list(p.gpu_ids) for p in plan.actors] == [["0"], ["1"], []]
    assert str(graph).splitlines()[1].endswith("tensor=shm,nccl device=default")


def test_auto_to_the_cpu_device_and_shm_never_use_nccl() -> None:
    for graph in (_gpu_graph("auto", device="cpu"), _gpu_graph("shm")):
        run_passes(graph, debug=True)
        assert set(graph.nodes[1].meta["tensor_to"].values()) == {TensorTransport.TENSOR_SHM}


def test_explicit_nccl_to_a_cpu_actor_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"^Stage.fwd: .* but actor Stage\(cccccc\) has no GPU \(edge Stage.fwd"
    ):
        run_passes(_gpu_graph("accelerator"))


def test_explicit_nccl_to_the_driver_is_refused(actors: list[Any]) -> None:
    with InputNode() as inp:
        dag = MultiOutputNode([actors[0].echo.bind(inp).with_tensor_transport(transport="nccl")])
    with pytest.raises(ValueError, match="has no GPU"):
        compile_debug(dag)


def test_a_collective_without_transport_picks_nccl_only_when_every_member_has_a_gpu() -> None:
    for gpus, chosen in (([["0"], ["1"]], "nccl"), ([["0"], []], "cpu")):
        graph = Graph(OPTIONS)
        graph.driver_node_id = "n"
        inp = graph.add_node(Node("inp", "input", "InputNode"))
        coll = Collective("coll0", "allreduce", ["a" * 32, "b" * 32], reduce_op="SUM")
        for tag, ids in zip("ab", gpus, strict=True):
            actor = Actor(tag * 32, "Stage", f"stage_{tag}", None, node_id="n", gpu_ids=ids)
            graph.actors[actor.actor_id] = actor
            x = graph.add_node(Node(f"x{tag}", "call", "Stage.x", actor, "x", args=[Ref(inp, (FirstArg(),))]))
            member = graph.add_node(
                Node(f"c{tag}", "collective", "allreduce.SUM(Stage.x)", actor, "c", args=[Ref(x)])
            )
            member.meta["collective"] = coll
            coll.members.append(member)
        graph.add_node(
            Node("out", "output", "output", args=[Ref(m) for m in coll.members], meta={"multi_output": True})
        )
        run_passes(graph, debug=True)
        assert coll.transport == chosen
        assert str(graph).splitlines()[3].endswith(f"coll0 rank=0/2 via={chosen}")
