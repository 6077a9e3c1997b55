"""The Communicator interface, and a Ray-style communicator behind it (duck-typed)."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from raycg.transports import Communicator, ForeignCommunicator, ReduceOp, as_communicator
from raycg.transports._communicator import RayStyleCommunicator
from raycg.transports._cpu_comm import CpuCommGroup, CpuCommunicator

torch = pytest.importorskip("torch")


class RaysReduceOp(enum.Enum):  # as ray.experimental.util.types.ReduceOp
    SUM = 0
    PRODUCT = 1
    MAX = 2
    MIN = 3
    AVG = 4


class UsersCommunicator:
    """A user's own communicator with Ray's signatures, for a group of one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.rank: int | None = None
        self.inbox: list[Any] = []

    def initialize(self, rank: int) -> None:
        self.rank = rank

    def get_self_rank(self) -> int | None:
        return self.rank

    def get_world_size(self) -> int:
        return 1

    def send(self, value: Any, peer_rank: int) -> None:
        self.inbox.append(value.clone())

    def recv(self, shape: Any, dtype: Any, peer_rank: int, allocator: Any = None) -> Any:
        return self.inbox.pop(0)

    def allreduce(self, send_buf: Any, recv_buf: Any, op: Any) -> None:
        self.calls.append(("allreduce", op))
        recv_buf.copy_(send_buf)

    def allgather(self, send_buf: Any, recv_buf: Any) -> None:
        recv_buf.copy_(send_buf)

    def reducescatter(self, send_buf: Any, recv_buf: Any, op: Any) -> None:
        self.calls.append(("reducescatter", op))
        recv_buf.copy_(send_buf)

    def destroy(self) -> None:
        self.calls.append(("destroy", None))

    def get_transport_name(self) -> str:
        return "accelerator"


def test_reduce_op_of_names_and_foreign_enums() -> None:
    assert ReduceOp.of("sum") is ReduceOp.SUM and ReduceOp.of(RaysReduceOp.AVG) is ReduceOp.AVG
    assert ReduceOp.of(ReduceOp.MAX) is ReduceOp.MAX
    with pytest.raises(
        ValueError, match="unknown reduce op 'median': use one of SUM, PRODUCT, MAX, MIN, AVG"
    ):
        ReduceOp.of("median")


def test_a_ray_style_communicator_works_behind_the_interface() -> None:
    user = UsersCommunicator()
    assert isinstance(user, RayStyleCommunicator)
    comm = as_communicator(user, reduce_op=lambda op: RaysReduceOp[op.name])
    assert isinstance(comm, Communicator) and comm.get_transport_name() == "accelerator"
    comm.initialize(0)
    assert comm.get_rank() == comm.get_self_rank() == 0 and comm.get_world_size() == 1
    x, out = torch.arange(4.0), torch.empty(4)
    comm.allreduce(x, out, ReduceOp.MAX)
    comm.reducescatter(x, out, "avg")  # type: ignore[arg-type]
    assert torch.equal(out, x) and user.calls == [
        ("allreduce", RaysReduceOp.MAX),
        ("reducescatter", RaysReduceOp.AVG),
    ]
    comm.send(x, 0)
    assert torch.equal(comm.recv((4,), torch.float32, 0), x)
    comm.broadcast(out, 0)  # no broadcast of its own: send/recv from the root (here: itself)
    assert comm.send_stream is None and comm.recv_stream is None
    comm.abort()  # no abort of its own: destroy
    assert user.calls[-1] == ("destroy", None)


def test_ours_passes_through_and_non_communicators_are_refused() -> None:
    with CpuCommGroup(1, name="one") as group:
        ours = CpuCommunicator(group.spec, 0)
        assert as_communicator(ours) is ours and ours.get_transport_name() == "cpu"
        ours.destroy()
    with pytest.raises(TypeError, match="str is not a communicator: it has no send, recv, allreduce"):
        ForeignCommunicator("nccl")
