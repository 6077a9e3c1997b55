"""Tensor edges and collectives over communicators, on a real local Ray.

- raycg's NCCL edge path, run on CPU actors through its CPU twin (``CpuTwin``: the same
  runtime code with raycg's CPU communicator plugged in where NCCL would be): values
  with tensors at any depth arrive equal, on fan-out too, with ``_static_shape``.
- A user's own Ray ``Communicator`` subclass (:class:`Delegating`, written here as a
  user would: it wraps raycg's CPU communicator, as a process group the actors share
  would be wrapped) as an edge's transport, as a collective's, and as
  ``default_communicator`` (``raycg.compile`` and Ray's ``experimental_compile``); two
  instances serving one graph.
- Bad communicators are refused at compile, naming them.
- A writer that stalls in its send: ``RayChannelTimeoutError`` within the get timeout;
  teardown returns; nothing stays blocked.
- The NCCL edge itself between two GPU actors (``gpu``: skipped without 2 GPUs and cupy).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import ray
import torch
from ray.dag import InputNode, MultiOutputNode
from ray.exceptions import RayChannelTimeoutError
from ray.experimental.channel.communicator import Communicator

import raycg
import raycg.collective
from raycg.runtime import actor_running_graphs
from raycg.runtime.testing import CpuTwin
from raycg.transports import CpuCommGroup, CpuCommunicator

from .conftest import Worker

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


class Delegating(Communicator):
    """A user's communicator: raycg's CPU communicator (the group made by the test, in
    the driver) behind Ray's interface. Pickled to each member, initialized there."""

    def __init__(self, group: CpuCommGroup, actors: list[Any]):
        self._spec, self._actors = group.spec, list(actors)
        self._comm: CpuCommunicator | None = None

    def initialize(self, rank: int) -> None:
        self._comm = CpuCommunicator(self._spec, rank, timeout_s=60)

    def get_actor_handles(self) -> list[Any]:
        return self._actors

    def get_rank(self, actor: Any) -> int:
        return [a._actor_id for a in self._actors].index(actor._actor_id)

    def get_self_rank(self) -> int | None:
        return None if self._comm is None else self._comm.get_rank()

    def get_world_size(self) -> int:
        return len(self._actors)

    def send(self, value: Any, peer_rank: int) -> None:
        assert self._comm is not None
        self._comm.send(value, peer_rank)

    def recv(self, shape: Any, dtype: Any, peer_rank: int, allocator: Any = None) -> Any:
        assert self._comm is not None
        return self._comm.recv(shape, dtype, peer_rank, allocator)

    @property
    def recv_stream(self) -> Any:
        return None

    @property
    def send_stream(self) -> Any:
        return None

    def allgather(self, send_buf: Any, recv_buf: Any) -> None:
        assert self._comm is not None
        self._comm.allgather(send_buf, recv_buf)

    def allreduce(self, send_buf: Any, recv_buf: Any, op: Any = None) -> None:
        assert self._comm is not None
        self._comm.allreduce(send_buf, recv_buf, op or "sum")

    def reducescatter(self, send_buf: Any, recv_buf: Any, op: Any = None) -> None:
        assert self._comm is not None
        self._comm.reducescatter(send_buf, recv_buf, op or "sum")

    def destroy(self) -> None:
        if self._comm is not None:
            self._comm.destroy()

    def abort(self) -> None:
        if self._comm is not None:
            self._comm.abort()

    def get_transport_name(self) -> str:
        return "cpu"

    @classmethod
    def generate_communicator_id(cls) -> str:
        return "delegating"


def _values() -> list[Any]:
    grad = torch.ones(3, requires_grad=True)
    return [
        torch.arange(6.0).reshape(2, 3),
        {"a": torch.zeros(0, 4), "b": [1, (torch.tensor(2.5, dtype=torch.bfloat16), "x")]},
        "no tensor at all",
        (grad * 2, torch.arange(10)[::3], torch.tensor([True, False])),
    ]


def _equal(got: Any, want: Any) -> bool:
    if isinstance(want, torch.Tensor):
        want = want.detach()
        return (
            isinstance(got, torch.Tensor)
            and got.dtype == want.dtype
            and got.shape == want.shape
            and not got.requires_grad
            and torch.equal(got, want)
        )
    if isinstance(want, (list, tuple)):
        return type(got) is type(want) and len(got) == len(want) and all(map(_equal, got, want))
    if isinstance(want, dict):
        return (
            isinstance(got, dict) and got.keys() == want.keys() and all(_equal(got[k], want[k]) for k in want)
        )
    return bool(got == want)


@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize("static", [False, True])
def test_the_nccl_edge_path_on_its_cpu_twin_carries_values_with_tensors(actors: list, static: bool) -> None:
    a, b, c = actors[:3]
    with InputNode() as inp:
        made = a.echo.bind(inp).with_tensor_transport(transport=CpuTwin([a, b, c]), _static_shape=static)
        dag = MultiOutputNode([b.echo.bind(made), c.echo.bind(made)])  # fan-out: one send per reader
    graph = raycg.compile(dag, get_timeout=60)
    try:
        assert "communicator_id" in str(graph.plan)
        values = [_values()[0]] * 3 if static else _values() * 2
        for value in values:
            got_b, got_c = ray.get(graph.execute(value))
            assert _equal(got_b, value) and _equal(got_c, value), (got_b, got_c, value)
    finally:
        graph.teardown()


@pytest.mark.usefixtures("no_leaks")
def test_default_communicator_carries_nccl_edges_and_collectives(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        x = a.echo.bind(inp).with_tensor_transport(transport="nccl")
        y = b.echo.bind(x)
        outs = raycg.collective.allreduce.bind([a.echo.bind(inp), y])
        dag = MultiOutputNode(outs)
    graph = raycg.compile(dag, get_timeout=60, default_communicator=CpuTwin([a, b]))
    try:
        got = ray.get(graph.execute(torch.ones(4)))
        assert [t.tolist() for t in got] == [[2.0] * 4] * 2
        assert all(
            c.written.startswith("raycg.runtime._communicators.CpuTwin") for c in graph.plan.communicators
        )
    finally:
        graph.teardown()


def test_rays_experimental_compile_takes_a_default_communicator(actors: list) -> None:
    a, b = actors[:2]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(transport="accelerator"))
    raycg.patch_ray()
    try:
        graph = dag.experimental_compile(_default_communicator=CpuTwin([a, b]))
    finally:
        raycg.unpatch_ray()
    try:
        assert torch.equal(ray.get(graph.execute(torch.arange(3.0))), torch.arange(3.0))
    finally:
        graph.teardown()


def test_a_users_communicators_carry_edges_and_a_collective_in_one_graph(ray_local: None) -> None:
    handles = [Worker.remote() for _ in range(3)]
    a, b, c = handles
    groups = [CpuCommGroup(2, name="user.ab"), CpuCommGroup(3, name="user.abc")]
    try:
        ab, abc = Delegating(groups[0], [b, a]), Delegating(groups[1], [a, b, c])  # b is rank 0 of ab
        with InputNode() as inp:
            x = a.echo.bind(inp).with_tensor_transport(transport=ab)
            y = b.echo.bind(x).with_tensor_transport(transport=abc)
            z = c.echo.bind(y)
            made = [a.echo.bind(inp), b.echo.bind(inp), z]
            dag = MultiOutputNode(raycg.collective.allreduce.bind(made, transport=abc))
        graph = raycg.compile(dag, get_timeout=60)
        try:
            assert len(graph.plan.communicators) == 2
            for k in range(3):
                got = ray.get(graph.execute(torch.full((5,), float(k))))
                assert [t.tolist() for t in got] == [[3.0 * k] * 5] * 3
        finally:
            graph.teardown()
        assert all(not actor_running_graphs(h) for h in handles)
    finally:
        for h in handles:
            ray.kill(h)
        for g in groups:
            g.close()


@pytest.mark.usefixtures("no_leaks")
def test_a_collective_over_rays_cpu_communicator_runs_every_kind(actors: list) -> None:
    from ray.experimental.channel.cpu_communicator import CPUCommunicator

    a, b = actors[:2]
    comm = CPUCommunicator(2, [a, b])
    with InputNode() as inp:
        made = [a.echo.bind(inp), b.echo.bind(inp)]
        gathered = raycg.collective.allgather.bind(made, transport=comm)
        dag = MultiOutputNode(raycg.collective.broadcast.bind(gathered, src_rank=1, transport=comm))
    graph = raycg.compile(dag, get_timeout=60)
    try:
        got = ray.get(graph.execute(torch.arange(2.0)))
        assert [t.tolist() for t in got] == [[0.0, 1.0, 0.0, 1.0]] * 2
    finally:
        graph.teardown()


def test_bad_communicators_are_refused_at_compile_naming_them(actors: list) -> None:
    a, b, c = actors[:3]
    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(transport="nccl"))
    with pytest.raises(ValueError, match=r"default_communicator=42 is not 'create' or a Communicator"):
        raycg.compile(dag, default_communicator=42)
    with InputNode() as inp:  # b reads, but is not one of the communicator's actors
        x = a.echo.bind(inp).with_tensor_transport(transport=CpuTwin([a, c]))
        dag = MultiOutputNode([b.echo.bind(x), c.echo.bind(inp)])
    with pytest.raises(
        ValueError, match=r"CpuTwin \(transport of Worker\.echo.*it is not one of the communicator"
    ):
        raycg.compile(dag)
    with InputNode() as inp:  # c is in the communicator but not in the graph
        dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(transport=CpuTwin([a, b, c])))
    with pytest.raises(ValueError, match=r"takes no part in this graph"):
        raycg.compile(dag)
    with InputNode() as inp:  # the driver is in no communicator
        dag = a.echo.bind(inp).with_tensor_transport(transport=CpuTwin([a, b]))
    with pytest.raises(ValueError, match=r"the driver cannot take part in a communicator"):
        raycg.compile(dag)
    with InputNode() as inp:  # nor as the writer
        inp.with_tensor_transport(transport=CpuTwin([a, b]))
        dag = a.echo.bind(inp)
    with pytest.raises(ValueError, match=r"DAG inputs cannot be transferred via a communicator"):
        raycg.compile(dag)

    class Lying(CpuTwin):
        def get_world_size(self) -> int:
            return 3

    with InputNode() as inp:
        dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(transport=Lying([a, b])))
    with pytest.raises(
        ValueError, match=r"Lying \(transport of Worker\.echo\): its world size is 3 but it has 2"
    ):
        raycg.compile(dag)


def _refuse_to_load() -> object:
    raise ValueError("this object cannot be unpickled here")


class Unloadable:
    """Pickles, but raises when unpickled (a class the reader cannot rebuild)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_refuse_to_load, ())


@ray.remote(num_cpus=0)
class Packer:
    def pack(self, x: Any) -> Any:
        return (x, Unloadable()) if float(x[0]) < 0 else x


def test_an_undecodable_value_on_a_communicator_edge_fails_alone(ray_local: None) -> None:
    # The reader cannot rebuild the first value: that execution fails, its tensors are
    # received all the same, so the next value's are not taken for them.
    a, b = Packer.remote(), Worker.remote()
    try:
        with InputNode() as inp:
            dag = b.echo.bind(a.pack.bind(inp).with_tensor_transport(transport=CpuTwin([a, b])))
        graph = raycg.compile(dag, get_timeout=60)
        try:
            with pytest.raises(TypeError, match="could not be deserialized"):
                ray.get(graph.execute(torch.full((2,), -1.0)))
            assert ray.get(graph.execute(torch.full((2,), 2.0))).tolist() == [2.0, 2.0]
        finally:
            graph.teardown()
    finally:
        ray.kill(a)
        ray.kill(b)


def _plan_over(inst_cid: str, collective: bool, nodes: dict[str, str]) -> Any:
    """A plan by hand: actors a and b (on ``nodes``), the driver on node "n1", and an
    edge a -> b or a collective of a and b over communicator ``inst_cid``."""
    from raycg.proto import Plan, TensorTransport

    plan = Plan(graph_id="g" * 16, driver_node_id="n1")
    plan.communicators.add(communicator_id=inst_cid, members=["a", "b"], written="CpuTwin (transport of A.f)")
    for actor in ("a", "b"):
        ap = plan.actors.add(actor_id=actor, actor_label=f"Worker({actor})", node_id=nodes[actor])
        if collective:
            task = ap.tasks.add()
            task.collective.collective_id = "coll0"
            task.collective.transport = "communicator"
            task.collective.communicator_id = inst_cid
    if not collective:
        ch = plan.channels.add(channel_id="ch0", label="A.f -> B.g")
        ch.writer.actor_id = "a"
        ch.readers.add(actor_id="b")
        ch.tensor.transport = TensorTransport.TENSOR_COMMUNICATOR
        ch.tensor.communicator_id = inst_cid
    return plan


def test_a_cpu_group_made_by_the_caller_is_refused_for_actors_on_another_node() -> None:
    # raycg's CPU communicator stands in for CpuTwin (and Ray's CPUCommunicator in a
    # collective) as a group the caller makes, a memfd that a member on another node
    # cannot open (its setup failed, unclearly): refused before anything is made.
    from ray.experimental.channel.cpu_communicator import CPUCommunicator

    from raycg.runtime import _communicators

    twin, rays = CpuTwin([]), CPUCommunicator(2, [])
    for inst, collective in ((twin, False), (twin, True), (rays, True)):
        away = _plan_over("comm0", collective, {"a": "n2", "b": "n2"})  # both on one other node
        with pytest.raises(NotImplementedError, match=r"CpuTwin \(transport of A\.f\).*Worker\(a\) runs on"):
            _communicators.refuse_unsupported(away, {"comm0": inst})
        here = _plan_over("comm0", collective, {"a": "n1", "b": "n1"})
        _communicators.refuse_unsupported(here, {"comm0": inst})  # the caller's node: fine


def test_two_edges_one_task_takes_in_another_order_than_sent_are_refused(actors: list) -> None:
    # a sends f then g over one communicator; b's one task names g first, so it read g's
    # header and received f's tensors as g's (silently swapped values): refused.
    a, b = actors[:2]
    twin = CpuTwin([a, b])
    with InputNode() as inp:
        f = a.echo.bind(inp).with_tensor_transport(transport=twin)
        g = a.add.bind(inp, 1).with_tensor_transport(transport=twin)
        dag = b.concat.bind(g, f)
    with pytest.raises(
        ValueError, match=r"receives Worker\.add then Worker\.echo over it, but .* sends them"
    ):
        raycg.compile(dag)
    with InputNode() as inp:  # the same arguments in the writer's order compile and run
        f = a.echo.bind(inp).with_tensor_transport(transport=twin)
        g = a.add.bind(inp, 1).with_tensor_transport(transport=twin)
        dag = b.concat.bind(f, g)
    graph = raycg.compile(dag, get_timeout=60)
    try:
        assert ray.get(graph.execute(torch.zeros(2))) == f"{torch.zeros(2)}{torch.ones(2)}"
    finally:
        graph.teardown()


class Locked(Delegating):
    """A user's communicator that cannot be pickled (it holds a lock)."""

    def __init__(self, group: CpuCommGroup, actors: list[Any]):
        super().__init__(group, actors)
        self._lock = threading.Lock()


def test_a_communicator_that_cannot_be_pickled_is_refused_naming_it(actors: list) -> None:
    a, b = actors[:2]
    with CpuCommGroup(2, name="locked") as group:
        with InputNode() as inp:
            dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(transport=Locked(group, [a, b])))
        with pytest.raises(ValueError, match=r"Locked \(transport of Worker\.echo\): .*cannot be pickled"):
            raycg.compile(dag, get_timeout=60)
    assert not actor_running_graphs(a) and not actor_running_graphs(b)


def test_a_writer_that_never_sends_times_out_and_teardown_returns(ray_local: None) -> None:
    stall = [{"rank": 0, "op": "send", "after": 2, "seconds": 3600}]
    env = {"env_vars": {"RAYCG_COMM_FAULTS": json.dumps(stall)}}
    a, b = Worker.options(runtime_env=env).remote(), Worker.remote()
    try:
        with InputNode() as inp:
            dag = b.echo.bind(a.echo.bind(inp).with_tensor_transport(transport=CpuTwin([a, b])))
        graph = raycg.compile(dag, get_timeout=2)
        for k in range(2):  # one send per execution: the third stalls
            assert ray.get(graph.execute(torch.full((2,), float(k)))).tolist() == [float(k)] * 2
        with pytest.raises(RayChannelTimeoutError):
            ray.get(graph.execute(torch.ones(2)))
        graph.teardown()  # returns: the communicator is aborted, nothing stays blocked
        assert not actor_running_graphs(a) and not actor_running_graphs(b)
    finally:
        ray.kill(a)
        ray.kill(b)


def _gpus() -> int:
    import importlib.util

    return torch.cuda.device_count() if importlib.util.find_spec("cupy") and torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 GPUs and cupy-cuda12x")
@pytest.mark.parametrize("static", [False, True])
def test_a_nccl_edge_between_gpu_actors(ray_local: None, static: bool) -> None:
    """The GPU run of test_the_nccl_edge_path_on_its_cpu_twin_carries_values_with_tensors."""

    @ray.remote(num_gpus=1)
    class OnGpu:
        def make(self, n: int) -> Any:
            return {"x": torch.arange(n, dtype=torch.float32, device="cuda"), "n": n}

        def check(self, value: Any) -> Any:
            assert value["x"].device.type == "cuda"
            return value["x"].cpu(), value["n"]

    a, b = OnGpu.remote(), OnGpu.remote()
    try:
        with InputNode() as inp:
            dag = b.check.bind(a.make.bind(inp).with_tensor_transport(transport="nccl", _static_shape=static))
        graph = raycg.compile(dag, get_timeout=60)
        try:
            for n in (4, 4) if static else (3, 0, 7):
                t, got_n = ray.get(graph.execute(n))
                assert got_n == n and torch.equal(t, torch.arange(n, dtype=torch.float32))
        finally:
            graph.teardown()
    finally:
        ray.kill(a)
        ray.kill(b)
