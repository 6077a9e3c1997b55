"""runtime._visualize: DOT and ASCII drawings of hand-written Plans (no Ray cluster)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from runtime_plans import add_channel, crossnode_plan

from raycg.proto import CollectiveKind, Device, Plan, TensorHint, TensorTransport, Transport
from raycg.runtime._visualize import to_ascii, to_dot, visualize

pytestmark = pytest.mark.timeout(30)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "observability.md"
MB = 1_000_000  # the default buffer_size_bytes


def _channel(
    plan: Plan, cid: str, transport: int, writer: str | None, readers: list[str | None], slots: int = 10
) -> None:
    add_channel(plan, cid, transport, writer, readers, slots, MB)


def _task(plan: Plan, actor: str, name: str, inputs: list[str], outputs: list[str], returns: int = 1) -> None:
    (a,) = [a for a in plan.actors if a.actor_id == actor]
    method = name.split(".")[1]
    a.tasks.add(method=method, display_name=name, inputs=inputs, outputs=outputs, num_returns=returns)


def chain_plan() -> Plan:
    """The quickstart's chain: driver -> A.echo -> B.echo -> driver."""
    plan = Plan(graph_id="0c4a1e2f" + "0" * 24, input_channel_id="ch0")
    plan.actors.add(actor_id="aa", actor_label="A")
    plan.actors.add(actor_id="bb", actor_label="B")
    _channel(plan, "ch0", Transport.SHM, None, ["aa"])
    _channel(plan, "ch1", Transport.SHM, "aa", ["bb"])
    _channel(plan, "ch2", Transport.SHM, "bb", [None])
    _task(plan, "aa", "Echo.echo", ["ch0"], ["ch1"])
    _task(plan, "bb", "Echo.echo", ["ch1"], ["ch2"])
    plan.outputs.add(channel_id="ch2", display_name="Echo.echo")
    return plan


def diamond_plan() -> Plan:
    """As the compiler emits it for, on actors a, b, c of class Worker::

    x = a.echo.bind(inp)
    dag = MultiOutputNode([c.add.bind(x, b.inc.bind(inp)), a.double.bind(x)])
    """
    a, b, c = "3f9a1c" + "0" * 26, "8b20d4" + "0" * 26, "c71e55" + "0" * 26
    plan = Plan(graph_id="5f2c9e01" + "0" * 24, input_channel_id="ch0", multi_output=True)
    for actor in (a, b, c):
        plan.actors.add(actor_id=actor, actor_label=f"Worker({actor[:6]})")
    _channel(plan, "ch0", Transport.SHM, None, [a, b])
    _channel(plan, "ch1", Transport.SHM, a, [c])
    _channel(plan, "ch2", Transport.INPROC, a, [a], slots=1)
    _channel(plan, "ch3", Transport.SHM, b, [c])
    _channel(plan, "ch4", Transport.SHM, c, [None])
    _channel(plan, "ch5", Transport.SHM, a, [None])
    _task(plan, a, "Worker.echo", ["ch0"], ["ch1", "ch2"])
    _task(plan, a, "Worker.double", ["ch2"], ["ch5"])
    _task(plan, b, "Worker.inc", ["ch0"], ["ch3"])
    _task(plan, c, "Worker.add", ["ch1", "ch3"], ["ch4"])
    plan.outputs.add(channel_id="ch4", display_name="Worker.add")
    plan.outputs.add(channel_id="ch5", display_name="Worker.double")
    return plan


def multi_output_plan() -> Plan:
    """A.split returns 2 values, both graph outputs from one channel; B.echo is output 2."""
    plan = Plan(graph_id="9d9d9d9d" + "0" * 24, input_channel_id="in", multi_output=True)
    plan.actors.add(actor_id="aa", actor_label="A")
    plan.actors.add(actor_id="bb", actor_label="B")
    _channel(plan, "in", Transport.SHM, None, ["aa", "bb"], slots=4)
    _channel(plan, "split", Transport.SHM, "aa", [None], slots=4)
    _channel(plan, "echo", Transport.SHM, "bb", [None], slots=4)
    _task(plan, "aa", "Splitter.split", ["in"], ["split"], returns=2)
    _task(plan, "bb", "Echo.echo", ["in"], ["echo"])
    plan.outputs.add(channel_id="split").projections.add(index=0)
    plan.outputs.add(channel_id="split").projections.add(index=1)
    plan.outputs.add(channel_id="echo")
    return plan


def _edges(dot: str) -> list[tuple[str, str, str]]:
    """(source, destination, label) of every edge in ``dot``."""
    return re.findall(r"^\s*(\w+) -> (\w+) \[label=\"([^\"]*)\"", dot, re.MULTILINE)


def test_chain_dot_has_clusters_tasks_and_labelled_edges() -> None:
    dot = to_dot(chain_plan())
    assert dot.startswith("digraph raycg {") and dot.rstrip().endswith("}")
    assert "subgraph cluster_0" in dot and 'label="A"' in dot
    assert "subgraph cluster_1" in dot and 'label="B"' in dot
    assert dot.count('label="1. Echo.echo"') == 2
    assert '"driver input"' in dot and '"driver output"' in dot
    assert _edges(dot) == [
        ("input", "a0_t1", "shm x10 1MB"),
        ("a0_t1", "a1_t1", "shm x10 1MB"),
        ("a1_t1", "output", "shm x10 1MB\\n[0]"),
    ]


def test_chain_ascii() -> None:
    assert to_ascii(chain_plan()) == (
        "raycg graph 0c4a1e2f: 2 actors, 3 channels, 1 output\n"
        "actors\n"
        "  A\n"
        "    1. Echo.echo\n"
        "  B\n"
        "    1. Echo.echo\n"
        "channels\n"
        "  input --shm x10--> A.echo\n"
        "  A.echo --shm x10--> B.echo\n"
        "  B.echo --shm x10--> driver[0]\n"
    )


def test_diamond_dot_fans_out_and_in_and_styles_inproc() -> None:
    dot = to_dot(diamond_plan())
    for i, label in enumerate(["Worker(3f9a1c)", "Worker(8b20d4)", "Worker(c71e55)"]):
        assert f"subgraph cluster_{i}" in dot and f'label="{label}"' in dot
    for title in ["1. Worker.echo", "2. Worker.double", "1. Worker.inc", "1. Worker.add"]:
        assert f'label="{title}"' in dot
    assert '"driver outputs"' in dot
    assert _edges(dot) == [
        ("input", "a0_t1", "shm x10 1MB"),
        ("input", "a1_t1", "shm x10 1MB"),
        ("a0_t1", "a2_t1", "shm x10 1MB"),
        ("a0_t1", "a0_t2", "inproc"),
        ("a1_t1", "a2_t1", "shm x10 1MB"),
        ("a2_t1", "output", "shm x10 1MB\\n[0]"),
        ("a0_t2", "output", "shm x10 1MB\\n[1]"),
    ]
    (inproc,) = [line for line in dot.splitlines() if 'label="inproc"' in line]
    assert "style=dashed" in inproc
    assert all("style=dashed" not in line for line in dot.splitlines() if "shm x10" in line)


def test_diamond_ascii_is_the_one_in_the_docs() -> None:
    text = to_ascii(diamond_plan())
    assert "  Worker(3f9a1c).echo --inproc--> Worker(3f9a1c).double\n" in text
    assert "  input --shm x10--> Worker(3f9a1c).echo, Worker(8b20d4).inc\n" in text
    assert "  Worker(c71e55).add --shm x10--> driver[0]\n" in text
    assert f"```text\n{text}```" in DOCS.read_text(), "docs/observability.md shows an outdated drawing"


def test_multi_output_labels_every_output_index() -> None:
    plan = multi_output_plan()
    dot = to_dot(plan)
    assert ("a0_t1", "output", "shm x4 1MB\\n[0]") in _edges(dot)
    assert ("a0_t1", "output", "shm x4 1MB\\n[1]") in _edges(dot)
    assert ("a1_t1", "output", "shm x4 1MB\\n[2]") in _edges(dot)
    assert 'label="1. Splitter.split (2 returns)"' in dot
    lines = to_ascii(plan).splitlines()
    assert "  A.split --shm x4--> driver[0], driver[1]" in lines
    assert "  B.echo --shm x4--> driver[2]" in lines
    assert "    1. Splitter.split (2 returns)" in lines


def test_a_method_scheduled_twice_on_one_actor_gets_its_position() -> None:
    plan = chain_plan()
    _channel(plan, "ch3", Transport.INPROC, "aa", ["aa"], slots=1)
    plan.actors[0].tasks[0].outputs.append("ch3")
    _task(plan, "aa", "Echo.echo", ["ch3"], [])
    assert "  A.echo#1 --inproc--> A.echo#2" in to_ascii(plan).splitlines()


@pytest.mark.parametrize(
    ("size_bytes", "text"),
    [(500, "500B"), (4096, "4.1KB"), (1_000_000, "1MB"), (1 << 20, "1.05MB"), (2 * 10**9, "2GB")],
)
def test_slot_sizes_read_as_decimal_units(size_bytes: int, text: str) -> None:
    plan = chain_plan()
    plan.channels[1].slot_size_bytes = size_bytes
    assert ("a0_t1", "a1_t1", f"shm x10 {text}") in _edges(to_dot(plan))


def test_labels_are_quoted_for_dot() -> None:
    plan = chain_plan()
    plan.actors[0].actor_label = 'Odd"name\\'
    assert 'label="Odd\\"name\\\\"' in to_dot(plan)


def test_ascii_returns_the_drawing_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.chdir(tmp_path)
    assert visualize(diamond_plan(), format="ascii") == to_ascii(diamond_plan())
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""


def test_ascii_view_prints_the_drawing(capsys: pytest.CaptureFixture[str]) -> None:
    text = visualize(chain_plan(), format="ascii", view=True)
    assert text == to_ascii(chain_plan())
    assert capsys.readouterr().out == text


def test_dot_returns_the_source_and_writes_it_without_graphviz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    source = visualize(diamond_plan(), filename=str(tmp_path / "g"), format="dot")
    assert source == to_dot(diamond_plan())
    # Ray's files: the source as `filename`, the drawing as `filename.format`.
    assert (tmp_path / "g.dot").read_text() == source
    assert (tmp_path / "g").read_text() == source


def test_channel_details_name_each_channel(tmp_path: Path) -> None:
    plan = chain_plan()
    plan.channels[1].label = "a.echo -> b.echo"
    edges = _edges(to_dot(plan, channel_details=True))
    assert ("a0_t1", "a1_t1", "shm x10 1MB\\nch1: a.echo -> b.echo, 1 reader") in edges
    assert ("a1_t1", "output", "shm x10 1MB\\nch2, 1 reader\\n[0]") in edges
    source = visualize(plan, filename=tmp_path / "g", format="dot", channel_details=True)
    assert source == to_dot(plan, channel_details=True)


def test_channel_details_with_ascii_is_refused_in_rays_words() -> None:
    with pytest.raises(
        ValueError, match=r"^Parameters 'channel_details' are not compatible with 'ascii' format\."
    ):
        visualize(chain_plan(), format="ascii", channel_details=True)


@pytest.mark.skipif(
    shutil.which("dot") is None, reason="needs Graphviz's dot binary (./dev setup installs it)"
)
@pytest.mark.parametrize(("fmt", "magic"), [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_images_are_rendered_by_dot(fmt: str, magic: bytes, tmp_path: Path) -> None:
    plan = diamond_plan()
    plan.actors[0].actor_label = 'Odd"name\\<b>'
    source = visualize(plan, filename=str(tmp_path / "g"), format=fmt)
    assert source == to_dot(plan)
    assert (tmp_path / f"g.{fmt}").read_bytes().startswith(magic)
    assert (tmp_path / "g").read_text() == source


def test_an_image_without_dot_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(RuntimeError, match=r"`dot` binary.*format='dot' or format='ascii'"):
        visualize(chain_plan(), filename=str(tmp_path / "g"), format="png")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_format_names_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"'bmpx'.*'ascii', 'dot', 'png', 'svg', 'pdf', 'jpg', 'jpeg', 'gif'"
    ):
        visualize(chain_plan(), filename=str(tmp_path / "g"), format="bmpx")
    assert list(tmp_path.iterdir()) == []


CROSSNODE_ASCII = """\
raycg graph 7e11a0c5: 3 actors on 2 nodes, 8 channels, 1 collective, 2 outputs
actors
  node 9f1c1111 (driver)
    Stage(a1a1a1) [GPU 0]
      1. Stage.embed
  node 4be02222
    Stage(b2b2b2) [GPU 0]
      1. Stage.forward
      2. allreduce.SUM(Stage.forward)
    Stage(c3c3c3)
      1. Stage.forward
      2. allreduce.SUM(Stage.forward)
channels
  input --shm x10--> Stage(a1a1a1).embed
  input --grpc x10--> Stage(b2b2b2).forward, Stage(c3c3c3).forward
  Stage(a1a1a1).embed --grpc x10--> Stage(c3c3c3).forward  (tensors -> cpu)
  Stage(a1a1a1).embed --grpc x10--> Stage(b2b2b2).forward  (nccl -> cuda)
  Stage(b2b2b2).forward --inproc--> Stage(b2b2b2).allreduce
  Stage(c3c3c3).forward --inproc--> Stage(c3c3c3).allreduce
  Stage(b2b2b2).allreduce --grpc x10--> driver[0]
  Stage(c3c3c3).allreduce --grpc x10--> driver[1]
collectives
  coll0: allreduce SUM via cpu communicator, ranks Stage(b2b2b2).allreduce, Stage(c3c3c3).allreduce
"""


def _cluster(dot: str, name: str) -> str:
    """The text of ``subgraph name { ... }`` in ``dot``, nested clusters included."""
    start = dot.index(f"subgraph {name} {{")
    depth, i = 0, start
    while True:
        depth += {"{": 1, "}": -1}.get(dot[i], 0)
        if depth == 0 and dot[i] == "}":
            return dot[start : i + 1]
        i += 1


def test_crossnode_ascii_groups_actors_by_node_and_lists_the_collective() -> None:
    assert to_ascii(crossnode_plan()) == CROSSNODE_ASCII
    assert f"```text\n{CROSSNODE_ASCII}```" in DOCS.read_text(), "docs/observability.md is outdated"


def test_crossnode_dot_boxes_each_node_with_its_actors_and_the_driver() -> None:
    dot = to_dot(crossnode_plan())
    driver_node, other = _cluster(dot, "cluster_node_0"), _cluster(dot, "cluster_node_1")
    assert 'label="node 9f1c1111 (driver)"' in driver_node and 'label="node 4be02222"' in other
    assert "input [" in driver_node and "output [" in driver_node and "input [" not in other
    assert "subgraph cluster_0 " in driver_node and 'label="Stage(a1a1a1)\\nGPU 0"' in driver_node
    assert "subgraph cluster_1 " in other and "subgraph cluster_2 " in other and "cluster_0 " not in other
    assert 'label="Stage(c3c3c3)"' in other  # no GPU, no GPU line
    assert len(re.findall(r"^\s*(input|output) \[", dot, re.MULTILINE)) == 2  # drawn once each


def test_crossnode_dot_names_each_edges_transport_and_tensors() -> None:
    plan = crossnode_plan()
    dot = to_dot(plan)
    edges = _edges(dot)
    assert ("input", "a0_t1", "shm x10 1MB") in edges
    assert ("input", "a1_t1", "grpc x10 1MB") in edges and ("input", "a2_t1", "grpc x10 1MB") in edges
    assert ("a0_t1", "a1_t1", "grpc x10 1MB\\nnccl -> cuda") in edges
    assert ("a0_t1", "a2_t1", "grpc x10 1MB\\ntensors -> cpu") in edges
    assert ("a1_t2", "output", "grpc x10 1MB\\n[0]") in edges
    (nccl,) = [line for line in dot.splitlines() if "nccl -> cuda" in line]
    assert "#7b3fa0" in nccl  # drawn as the communicator's, not as the channel's
    detailed = _edges(to_dot(plan, channel_details=True))
    assert ("a0_t1", "a1_t1", "grpc x10 1MB\\nnccl -> cuda\\nch3, 1 reader") in detailed
    assert ("a2_t2", "output", "grpc x10 1MB\\nch7, 1 reader\\n[1]") in detailed


def test_crossnode_dot_joins_a_collectives_members_to_one_node() -> None:
    dot = to_dot(crossnode_plan())
    (coll,) = [line for line in dot.splitlines() if line.strip().startswith("coll_0 [")]
    assert 'label="coll0: allreduce SUM\\nvia cpu communicator"' in coll and "hexagon" in coll
    joins = [e for e in _edges(dot) if e[1] == "coll_0"]
    assert joins == [("a1_t2", "coll_0", "rank 0"), ("a2_t2", "coll_0", "rank 1")]
    assert all("dir=none" in line for line in dot.splitlines() if "-> coll_0" in line)


@pytest.mark.parametrize(
    ("kind", "reduce_op", "src_rank", "transport", "title"),
    [
        (CollectiveKind.ALLREDUCE, "MAX", 0, "nccl", "coll0: allreduce MAX, via nccl"),
        (CollectiveKind.ALLGATHER, "", 0, "communicator", "coll0: allgather, via user's communicator"),
        (CollectiveKind.REDUCESCATTER, "AVG", 0, "cpu", "coll0: reducescatter AVG, via cpu communicator"),
        (CollectiveKind.BROADCAST, "", 1, "cpu", "coll0: broadcast from rank 1, via cpu communicator"),
    ],
)
def test_a_collective_says_its_op_and_communicator(
    kind: int, reduce_op: str, src_rank: int, transport: str, title: str
) -> None:
    plan = crossnode_plan()
    for actor in plan.actors[1:]:
        coll = actor.tasks[1].collective
        coll.kind, coll.reduce_op, coll.src_rank, coll.transport = kind, reduce_op, src_rank, transport
    head, via = title.split(", ")
    assert f'label="{head}\\n{via}"' in to_dot(plan)
    name = CollectiveKind.Name(kind).lower()
    line = f"  {head} {via}, ranks Stage(b2b2b2).{name}, Stage(c3c3c3).{name}"
    assert line in to_ascii(plan).splitlines()


def _hinted_chain(transport: int, device: int = Device.DEVICE_DEFAULT, **promises: bool) -> Plan:
    plan = chain_plan()
    plan.channels[1].tensor.CopyFrom(TensorHint(transport=transport, device=device, **promises))
    plan.channels[2].tensor.CopyFrom(TensorHint(transport=TensorTransport.TENSOR_SHM, device=device))
    return plan


@pytest.mark.parametrize(
    ("transport", "device", "b_gpus", "words"),
    [
        (TensorTransport.TENSOR_SHM, Device.DEVICE_CPU, ["0"], "tensors -> cpu"),
        (TensorTransport.TENSOR_SHM, Device.DEVICE_GPU, [], "tensors -> cuda"),
        (TensorTransport.TENSOR_SHM, Device.DEVICE_DEFAULT, [], "tensors -> cpu"),
        (TensorTransport.TENSOR_SHM, Device.DEVICE_DEFAULT, ["1"], "tensors -> cuda"),
        (TensorTransport.TENSOR_ACCELERATOR, Device.DEVICE_DEFAULT, ["1"], "nccl -> cuda"),
        (TensorTransport.TENSOR_COMMUNICATOR, Device.DEVICE_CPU, [], "communicator -> cpu"),
        (TensorTransport.TENSOR_TRANSPORT_UNSPECIFIED, Device.DEVICE_CPU, [], "tensors -> cpu"),
    ],
)
def test_a_tensor_edge_says_where_its_tensors_go(
    transport: int, device: int, b_gpus: list[str], words: str
) -> None:
    plan = _hinted_chain(transport, device)
    plan.actors[1].gpu_ids.extend(b_gpus)
    assert ("a0_t1", "a1_t1", f"shm x10 1MB\\n{words}") in _edges(to_dot(plan))
    assert f"  A.echo --shm x10--> B.echo  ({words})" in to_ascii(plan).splitlines()


def test_a_tensor_edge_names_its_promises_and_the_driver_gets_cpu_tensors() -> None:
    plan = _hinted_chain(TensorTransport.TENSOR_SHM, static_shape=True, direct_return=True)
    edges = _edges(to_dot(plan))
    assert ("a0_t1", "a1_t1", "shm x10 1MB\\ntensors -> cpu, static shape, direct return") in edges
    assert ("a1_t1", "output", "shm x10 1MB\\ntensors -> cpu\\n[0]") in edges  # default: the driver's CPU


def test_an_inproc_tensor_edge_names_only_its_promises() -> None:
    plan = diamond_plan()
    plan.channels[2].tensor.CopyFrom(TensorHint(transport=TensorTransport.TENSOR_SHM, static_shape=True))
    assert ("a0_t1", "a0_t2", "inproc\\nstatic shape") in _edges(to_dot(plan))
    assert "  Worker(3f9a1c).echo --inproc--> Worker(3f9a1c).double  (static shape)" in to_ascii(plan)


def test_readers_on_different_devices_are_named_each() -> None:
    plan = multi_output_plan()  # "in" is read by A and B
    plan.channels[0].tensor.CopyFrom(TensorHint(transport=TensorTransport.TENSOR_SHM))
    plan.actors[1].gpu_ids.append("0")
    line = "  input --shm x4--> A.split, B.echo  (A.split: tensors -> cpu; B.echo: tensors -> cuda)"
    assert line in to_ascii(plan).splitlines()


def test_one_node_draws_no_node_boxes() -> None:
    plan = chain_plan()
    plan.driver_node_id = "ab" * 28
    for actor in plan.actors:
        actor.node_id = plan.driver_node_id
    assert "cluster_node" not in to_dot(plan)
    assert to_ascii(plan) == to_ascii(chain_plan())


def test_an_unrecorded_driver_node_stays_outside_the_node_boxes() -> None:
    plan = chain_plan()
    plan.actors[0].node_id, plan.actors[1].node_id = "ab" * 28, ""
    dot = to_dot(plan)
    assert 'label="node abababab"' in _cluster(dot, "cluster_node_0")
    assert 'label="node unknown"' in _cluster(dot, "cluster_node_1")
    assert "input [" not in _cluster(dot, "cluster_node_0") + _cluster(dot, "cluster_node_1")
    assert "(driver)" not in dot and "  node unknown" in to_ascii(plan).splitlines()


def test_node_ids_sharing_a_prefix_are_told_apart() -> None:
    plan = chain_plan()
    plan.driver_node_id = plan.actors[0].node_id = "abcdef01" + "0" * 48
    plan.actors[1].node_id = "abcdef01" + "1" * 48
    lines = to_ascii(plan).splitlines()
    assert "  node abcdef010000 (driver)" in lines and "  node abcdef011111" in lines


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot binary")
@pytest.mark.parametrize("details", [False, True])
def test_a_crossnode_plan_renders(details: bool, tmp_path: Path) -> None:
    source = visualize(crossnode_plan(), filename=tmp_path / "g", format="png", channel_details=details)
    assert source == to_dot(crossnode_plan(), channel_details=details)
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    assert visualize(crossnode_plan(), format="ascii") == CROSSNODE_ASCII
