"""The tensor channel's own logic, in one process: how a value is split into a header
and tensors and put back together, what ``static_shape`` leaves out of the header, and
what it refuses. A loopback communicator (a queue per pair) stands in for a real one;
test_nccl.py runs the channel between processes over raycg's CPU and NCCL ones."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from raycg.transports import (
    ChannelBroken,
    ChannelTimeout,
    Communicator,
    InprocRing,
    ReduceOp,
    ValueNotSerializable,
)
from raycg.transports._tensor_channel import TensorReader, TensorWriter

torch = pytest.importorskip("torch")

Point = collections.namedtuple("Point", "x y")


class Loopback(Communicator):
    """Rank 0 sends to rank 1 through a deque: enough for one writer and one reader."""

    def __init__(self, pipe: collections.deque, rank: int, fail: bool = False):
        self.pipe, self.rank, self.fail = pipe, rank, fail

    def initialize(self, rank: int) -> None:
        self.rank = rank

    def get_rank(self) -> int | None:
        return self.rank

    def get_world_size(self) -> int:
        return 2

    def send(self, tensor: Any, peer_rank: int, timeout_s: float | None = None) -> None:
        if self.fail:
            raise RuntimeError("the user's send failed")
        self.pipe.append(tensor.clone())

    def recv(
        self, shape: Any, dtype: Any, peer_rank: int, allocator: Any = None, timeout_s: Any = None
    ) -> Any:
        t = self.pipe.popleft()
        assert (tuple(t.shape), t.dtype) == (tuple(shape), dtype)
        return t

    def allreduce(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: Any = None
    ) -> None:
        raise NotImplementedError

    def allgather(self, send_buf: Any, recv_buf: Any, timeout_s: Any = None) -> None:
        raise NotImplementedError

    def reducescatter(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: Any = None
    ) -> None:
        raise NotImplementedError

    def broadcast(self, buf: Any, root_rank: int, timeout_s: Any = None) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        pass

    def destroy(self) -> None:
        pass

    def get_transport_name(self) -> str:
        return "cpu"


def _pair(
    static: bool = False, fail: bool = False
) -> tuple[TensorWriter, TensorReader, Any, collections.deque]:
    pipe: collections.deque = collections.deque()
    ring = InprocRing(8, 2)  # reader 1 peeks at the headers
    w = TensorWriter(Loopback(pipe, 0, fail), [1], ring.writer(), static_shape=static, device="cpu")
    r = TensorReader(Loopback(pipe, 1), 0, ring.reader(0))
    return w, r, ring.reader(1), pipe


def test_a_value_is_a_header_and_its_tensors_and_comes_back_equal() -> None:
    w, r, headers, pipe = _pair()
    value = {"p": Point(torch.arange(3), [torch.ones(2, 2).t(), "s"]), "n": 1, "c": (torch.tensor(1j),)}
    w.write(value)
    skeleton, meta = headers.read(0)
    assert "tensor(" not in repr(skeleton) and meta == [
        ((3,), "int64"),
        ((2, 2), "float32"),
        ((), "complex64"),
    ]
    assert len(pipe) == 3
    got = r.read(0)
    assert isinstance(got["p"], Point) and got["n"] == 1
    assert torch.equal(got["p"].x, value["p"].x) and torch.equal(got["p"].y[0], value["p"].y[0])
    assert got["p"].y[1] == "s" and torch.equal(got["c"][0], value["c"][0])


def test_a_value_without_tensors_travels_in_its_header_alone() -> None:
    w, r, headers, pipe = _pair()
    w.write([1, "two", {"three": 3}])
    assert headers.read(0) == ([1, "two", {"three": 3}], []) and not pipe
    assert r.read(0) == [1, "two", {"three": 3}]


def test_static_shape_sends_the_metadata_only_when_it_changes() -> None:
    w, r, headers, _ = _pair(static=True)
    for v in (torch.ones(4), torch.zeros(4), "a failure", torch.ones(4)):
        w.write(v)
    metas = [headers.read(0)[1] for _ in range(4)]
    assert metas == [[((4,), "float32")], None, [], [((4,), "float32")]]
    got = [r.read(0) for _ in range(4)]
    assert (
        torch.equal(got[1], torch.zeros(4)) and got[2] == "a failure" and torch.equal(got[3], torch.ones(4))
    )


def test_a_tensor_on_another_device_is_refused_before_anything_is_written() -> None:
    w, _, headers, pipe = _pair()
    with pytest.raises(ValueNotSerializable, match=r"tensor 1 of the value is on meta"):
        w.write([torch.ones(1), torch.ones(1, device="meta")])
    with pytest.raises(ChannelTimeout):
        headers.read(0)
    assert not pipe


def test_a_failing_user_communicator_breaks_the_channel() -> None:
    w, *_ = _pair(fail=True)
    with pytest.raises(ChannelBroken, match=r"failed in send: RuntimeError: the user's send failed"):
        w.write(torch.ones(2))


def test_a_header_that_is_not_one_breaks_the_reader() -> None:
    pipe: collections.deque = collections.deque()
    ring = InprocRing(2, 1)
    ring.writer().write("not a header")
    with pytest.raises(ChannelBroken, match=r"is not a header"):
        TensorReader(Loopback(pipe, 1), 0, ring.reader(0)).read(0)


class Tensors(list):
    """A user's list subclass."""


def test_dict_and_list_subclasses_come_back_as_themselves() -> None:
    # A module's state_dict() is an OrderedDict: it came back a plain dict, and a
    # defaultdict lost its default factory.
    w, r, _, _ = _pair()
    state = collections.OrderedDict([("b", torch.ones(2)), ("a", torch.zeros(1))])
    counts: collections.defaultdict = collections.defaultdict(list, {"x": torch.ones(1)})
    w.write((state, counts, Tensors([torch.ones(3), 1])))
    got_state, got_counts, got_list = r.read(0)
    assert type(got_state) is collections.OrderedDict and list(got_state) == ["b", "a"]
    assert torch.equal(got_state["b"], torch.ones(2))
    assert type(got_counts) is collections.defaultdict and got_counts["missing"] == []
    assert type(got_list) is Tensors and torch.equal(got_list[0], torch.ones(3)) and got_list[1] == 1


class Queued(Loopback):
    """A communicator that can queue a receive (as NCCL's does): ``recv_batch_queued``
    hands back the buffers at once and a ``wait`` that fills them."""

    def __init__(self, pipe: collections.deque, rank: int, fail_wait: bool = False):
        super().__init__(pipe, rank)
        self.fail_wait, self.waits = fail_wait, 0

    def recv_batch_queued(self, recvs: list[Any], timeout_s: Any = None) -> tuple[list[Any], Any]:
        bufs = [torch.empty(shape, dtype=dtype) for shape, dtype, _, _ in recvs]

        def wait() -> None:
            self.waits += 1
            if self.fail_wait:
                raise RuntimeError("the queued receive failed")
            for buf in bufs:
                buf.copy_(self.pipe.popleft())

        return bufs, wait


def test_read_pending_queues_the_receive_and_result_waits_for_it() -> None:
    pipe: collections.deque = collections.deque()
    ring = InprocRing(8, 1)
    w = TensorWriter(Loopback(pipe, 0), [1], ring.writer(), device="cpu")
    comm = Queued(pipe, 1)
    r = TensorReader(comm, 0, ring.reader(0))
    w.write({"t": torch.arange(4), "n": 1})
    pending = r.read_pending(0)
    assert comm.waits == 0  # queued, not waited for
    got = pending.result()
    assert comm.waits == 1 and got["n"] == 1 and torch.equal(got["t"], torch.arange(4))
    w.write("no tensor")
    assert r.read_pending(0).result() == "no tensor" and comm.waits == 1
    w.write(torch.ones(2))
    assert torch.equal(r.read(0), torch.ones(2))  # read() waits in place


def test_a_queued_receive_that_fails_breaks_the_channel_when_waited_for() -> None:
    pipe: collections.deque = collections.deque()
    ring = InprocRing(8, 1)
    w = TensorWriter(Loopback(pipe, 0), [1], ring.writer(), device="cpu")
    r = TensorReader(Queued(pipe, 1, fail_wait=True), 0, ring.reader(0))
    w.write(torch.ones(2))
    pending = r.read_pending(0)
    with pytest.raises(ChannelBroken, match="the queued receive failed"):
        pending.result()
