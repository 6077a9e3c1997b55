"""The NCCL communicator and the tensor channel over it, with their CPU twins.

Each test runs once per kind: "cpu" (raycg's CPU communicator: runs everywhere, in CI)
and "nccl" (marked ``gpu``: skipped without cupy and 2 CUDA devices). Both kinds run
the same member code in spawned processes, at transports level (no Ray), so a GPU
machine without Ray can run them: ``pytest -m gpu packages/transports/tests``.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest

from raycg.transports import ChannelClosed, ChannelError, ShmRing
from raycg.transports._cpu_comm import CpuCommGroup

torch = pytest.importorskip("torch")

SPAWN = multiprocessing.get_context("spawn")
WORLD = 2


def _gpus() -> int:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


GPU = [pytest.mark.gpu, pytest.mark.skipif(_gpus() < WORLD, reason=f"needs cupy and {WORLD} CUDA devices")]
KINDS = ["cpu", pytest.param("nccl", marks=GPU)]


def _open(kind: str, group: Any, rank: int, timeout_s: float) -> tuple[Any, str]:
    if kind == "cpu":
        from raycg.transports import CpuCommunicator

        return CpuCommunicator(group, rank, timeout_s=timeout_s), "cpu"
    from raycg.transports._nccl import NcclCommunicator

    torch.cuda.set_device(rank)
    return NcclCommunicator(group, WORLD, rank, device=rank, timeout_s=timeout_s), f"cuda:{rank}"


def _job_collectives(comm: Any, rank: int, device: str, extra: Any) -> list[str]:
    from raycg.transports import ReduceOp

    bad = []
    ins = [torch.arange(1000, dtype=torch.float32) * (r + 1) for r in range(WORLD)]
    for op, want in (
        (ReduceOp.SUM, ins[0] + ins[1]),
        (ReduceOp.MAX, torch.maximum(ins[0], ins[1])),
        (ReduceOp.AVG, (ins[0] + ins[1]) / 2),
    ):
        out = torch.empty(1000, device=device)
        comm.allreduce(ins[rank].to(device), out, op)
        if not torch.allclose(out.cpu(), want):
            bad.append(f"allreduce {op.name}")
    gathered = torch.empty(WORLD * 1000, device=device)
    comm.allgather(ins[rank].to(device), gathered)
    if not torch.equal(gathered.cpu(), torch.cat(ins)):
        bad.append("allgather")
    part = torch.empty(500, device=device)
    comm.reducescatter(ins[rank].to(device), part)
    if not torch.equal(part.cpu(), (ins[0] + ins[1])[rank * 500 : (rank + 1) * 500]):
        bad.append("reducescatter")
    buf = torch.full((64,), float(rank), device=device)
    comm.broadcast(buf, 1)
    if not torch.equal(buf.cpu(), torch.full((64,), 1.0)):
        bad.append("broadcast")
    return bad


def _job_p2p(comm: Any, rank: int, device: str, extra: Any) -> list[str]:
    peer = 1 - rank
    bad = []
    for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.bool):
        mine = (torch.arange(300) % 2 + rank).to(dtype)
        if rank == 0:  # opposite orders on the two sides
            comm.send(mine.to(device), peer)
            got = comm.recv((300,), dtype, peer)
        else:
            got = comm.recv((300,), dtype, peer)
            comm.send(mine.to(device), peer)
        if not torch.equal(got.cpu(), (torch.arange(300) % 2 + peer).to(dtype)):
            bad.append(f"p2p {dtype}")
    comm.allreduce(torch.zeros(1, device=device), torch.zeros(1, device=device))  # before destroy
    return bad


def _values(device: str) -> list[Any]:
    """What the tensor channel carries: tensors alone and inside tuples, lists, dicts
    (at depth), values without tensors, 0-d and empty tensors, several dtypes."""
    return [
        torch.full((3,), 1.0, device=device),
        {"a": torch.arange(10.0, device=device).reshape(2, 5), "b": [1, torch.zeros(0, 4, device=device)]},
        (torch.tensor([True, False, True], device=device), "text", 5),
        "no tensor at all",
        torch.tensor(2.5, dtype=torch.bfloat16, device=device),
        [torch.arange(6, dtype=torch.int64, device=device)[::2], {"deep": (torch.ones(2, device=device),)}],
    ]


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, torch.Tensor):
        return (
            isinstance(got, torch.Tensor)
            and got.dtype == want.dtype
            and tuple(got.shape) == tuple(want.shape)
            and got.device == want.device
            and torch.equal(got.cpu(), want.cpu())
        )
    if isinstance(want, (list, tuple)):
        return type(got) is type(want) and len(got) == len(want) and all(map(_same, got, want))
    if isinstance(want, dict):
        return (
            isinstance(got, dict) and got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
        )
    return bool(got == want)


def _job_channel(comm: Any, rank: int, device: str, metas: Any) -> list[str]:
    from raycg.transports import ShmRingReader, ShmRingWriter, ValueNotSerializable
    from raycg.transports._tensor_channel import TensorReader, TensorWriter

    bad = []
    values = _values(device)
    static = [torch.ones(4, device=device), torch.zeros(4, device=device), torch.ones(5, device=device)]
    kind = "cpu" if device == "cpu" else "cuda"
    if rank == 0:
        w = TensorWriter(comm, [1], ShmRingWriter(metas[0]), device=kind)
        for v in values:
            w.write(v, timeout_s=30)
        try:  # another device than the communicator's: refused before anything is sent
            w.write(torch.ones(2, device="meta" if kind == "cpu" else "cpu"))
            bad.append("a tensor on the wrong device was not refused")
        except ValueNotSerializable:
            pass
        s = TensorWriter(comm, [1], ShmRingWriter(metas[1]), static_shape=True, device=kind)
        for v in static:
            s.write(v, timeout_s=30)
    else:
        r = TensorReader(comm, 0, ShmRingReader(metas[0], 0), recv_timeout_s=30)
        for i, want in enumerate(values):
            # every other value as overlap_gpu_communication reads it: NCCL queues the
            # receive and waits in result(); a CPU communicator receives at once
            got = r.read_pending(timeout_s=30).result() if i % 2 else r.read(timeout_s=30)
            if not _same(got, want):
                bad.append(f"value {i}: {got!r} != {want!r}")
        r = TensorReader(comm, 0, ShmRingReader(metas[1], 0), recv_timeout_s=30)
        for i, want in enumerate(static):
            got = r.read(timeout_s=30)
            if not _same(got, want):
                bad.append(f"static value {i}: {got!r} != {want!r}")
    comm.allreduce(torch.zeros(1, device=device), torch.zeros(1, device=device))
    return bad


def _job_stall(comm: Any, rank: int, device: str, extra: Any) -> Any:
    if rank == 1:
        time.sleep(8)  # never joins within rank 0's timeout
        return ("stalled",)
    t0 = time.monotonic()
    try:
        comm.allreduce(torch.ones(4, device=device), torch.empty(4, device=device), timeout_s=2)
        return ("ok",)
    except Exception as e:
        outcome = (type(e).__name__, time.monotonic() - t0)
    try:
        comm.allreduce(torch.ones(4, device=device), torch.empty(4, device=device))
    except ChannelClosed:
        return (*outcome, "then closed")
    return (*outcome, "then open")


def _job_transfer_stall(comm: Any, rank: int, device: str, meta: Any) -> Any:
    """The writer sends a value's header and never its tensor: the reader's bounded
    receive times out and aborts the communicator; the writer then finds it closed."""
    from raycg.transports import ShmRingReader, ShmRingWriter
    from raycg.transports._tensor_channel import TensorReader, TensorWriter

    if rank == 0:
        w = TensorWriter(comm, [1], ShmRingWriter(meta))
        comm.send_batch = lambda sends, timeout_s=None: time.sleep(8)  # never joins the transfer
        w.write({"t": torch.ones(4, device=device)}, timeout_s=30)
        try:  # CPU: the reader's abort closed the group for every member; NCCL: the
            # peer's ncclCommAbort makes this member's next call fail, or time out
            comm.allreduce(torch.ones(1, device=device), torch.empty(1, device=device), timeout_s=5)
        except ChannelClosed:
            return ("stalled", "then closed")
        except ChannelError:
            return ("stalled", "then failed")
        return ("stalled", "then open")
    r = TensorReader(comm, 0, ShmRingReader(meta, 0), recv_timeout_s=2)
    t0 = time.monotonic()
    try:
        r.read(timeout_s=30)
        return ("ok",)
    except Exception as e:
        return (type(e).__name__, time.monotonic() - t0, "aborted" if _aborted(comm, device) else "open")


def _aborted(comm: Any, device: str) -> bool:
    try:
        comm.allreduce(torch.ones(1, device=device), torch.empty(1, device=device), timeout_s=1)
    except ChannelClosed:
        return True
    except Exception:
        return False
    return False


JOBS = {
    "collectives": _job_collectives,
    "p2p": _job_p2p,
    "channel": _job_channel,
    "stall": _job_stall,
    "transfer_stall": _job_transfer_stall,
}


def _member(kind: str, group: Any, rank: int, job: str, extra: Any, conn: Any) -> None:
    comm, device = _open(kind, group, rank, timeout_s=60)
    try:
        conn.send(JOBS[job](comm, rank, device, extra))
    except Exception as e:
        conn.send([f"{type(e).__name__}: {e}"])
    finally:
        comm.destroy()


def _run(kind: str, job: str, extra: Any = None) -> list[Any]:
    if kind == "cpu":
        owner: Any = CpuCommGroup(WORLD, name=f"twin.{job}")
        group = owner.spec
    else:
        from raycg.transports._nccl import nccl_unique_id

        owner, group = None, nccl_unique_id()
    pipes, procs = [], []
    try:
        for r in range(WORLD):
            parent, child = SPAWN.Pipe()
            p = SPAWN.Process(target=_member, args=(kind, group, r, job, extra, child), daemon=True)
            p.start()
            child.close()
            pipes.append(parent)
            procs.append(p)
        return [c.recv() for c in pipes]
    finally:
        for p in procs:
            p.join(60)
            assert p.exitcode == 0, p.exitcode  # every member returned: nothing blocked
            p.close()
        for c in pipes:
            c.close()
        if owner is not None:
            owner.close()


@pytest.mark.parametrize("kind", KINDS)
def test_collectives(kind: str) -> None:
    assert _run(kind, "collectives") == [[]] * WORLD


@pytest.mark.parametrize("kind", KINDS)
def test_point_to_point_in_opposite_orders(kind: str) -> None:
    assert _run(kind, "p2p") == [[]] * WORLD


@pytest.mark.parametrize("kind", KINDS)
def test_tensor_channel_carries_values_with_tensors_dynamic_and_static(kind: str) -> None:
    with ShmRing(8, 1, name="twin.meta") as meta, ShmRing(8, 1, name="twin.static") as static:
        assert _run(kind, "channel", (meta.spec, static.spec)) == [[]] * WORLD


@pytest.mark.parametrize("kind", KINDS)
def test_a_member_that_never_joins_times_out_and_aborts(kind: str) -> None:
    first, second = _run(kind, "stall")
    assert second == ("stalled",)
    assert first[0] == "ChannelTimeout" and first[1] < 30 and first[2] == "then closed", first


def test_nccl_module_imports_without_cupy_and_says_what_to_install() -> None:
    from raycg.transports import _nccl

    if _gpus():
        pytest.skip("cupy is installed here")
    with pytest.raises(ImportError, match=r"raycg\[gpu\]"):
        _nccl.nccl_unique_id()


@pytest.mark.parametrize("kind", KINDS)
def test_a_writer_that_never_sends_its_tensors_times_out_the_reader_and_aborts(kind: str) -> None:
    with ShmRing(4, 1, name="twin.stall") as meta:
        writer, reader = _run(kind, "transfer_stall", meta.spec)
    assert reader[0] == "ChannelTimeout" and reader[1] < 30 and reader[2] == "aborted", reader
    assert writer == ("stalled", "then closed") or (
        kind == "nccl" and writer == ("stalled", "then failed")
    ), writer


# --- the NCCL code's stream order and polling, read through fakes (no GPU, no cupy) ----


class _FakeStream:
    def __init__(self, name: str, log: list[tuple[str, ...]]):
        self.name, self.log, self.cuda_stream = name, log, id(self)

    def wait_stream(self, other: _FakeStream) -> None:
        self.log.append(("wait", self.name, other.name))

    def wait_event(self, event: Any) -> None:
        self.log.append(("wait_event", self.name))


class _FakeTensor:
    """Enough of a CUDA tensor for NcclCommunicator: a copy is logged on `current`."""

    def __init__(self, log: list[tuple[str, ...]], contiguous: bool = True):
        self.log, self._contiguous = log, contiguous
        self.device, self.dtype = type("D", (), {"type": "cuda", "index": 0})(), "torch.float32"

    def detach(self) -> _FakeTensor:
        return self

    def contiguous(self) -> _FakeTensor:
        if self._contiguous:
            return self
        self.log.append(("copy", "current"))
        return _FakeTensor(self.log)

    def is_contiguous(self) -> bool:
        return self._contiguous

    def numel(self) -> int:
        return 4

    def data_ptr(self) -> int:
        return 0

    def record_stream(self, stream: Any) -> None:
        pass


def _fake_nccl(done: bool = True) -> tuple[Any, list[tuple[str, ...]], list[int]]:
    """A NcclCommunicator whose cupy, torch and CUDA are fakes; its log of stream
    events, and how many times its CUDA events were polled."""
    from types import SimpleNamespace

    from raycg.transports._nccl import NcclCommunicator

    log: list[tuple[str, ...]] = []
    polls = [0]
    current = _FakeStream("current", log)

    class Event:
        def record(self, stream: Any) -> None:
            log.append(("record", stream.name))

        def query(self) -> bool:
            polls[0] += 1
            return done

    def op(name: str) -> Any:
        return lambda *args: log.append(("nccl", name))

    comm = NcclCommunicator((0,), 2, timeout_s=None)
    comm._torch = SimpleNamespace(cuda=SimpleNamespace(current_stream=lambda device: current, Event=Event))
    comm._nccl = SimpleNamespace(groupStart=lambda: None, groupEnd=lambda: None)
    comm._comm = SimpleNamespace(
        send=op("send"), recv=op("recv"), allReduce=op("allReduce"), check_async_error=lambda: None,
        abort=lambda: None, destroy=lambda: None,
    )  # fmt: skip
    comm._rank, comm._device = 0, 0
    comm._streams = {k: _FakeStream(k, log) for k in ("send", "recv", "coll")}
    return comm, log, polls


def test_nccl_streams_wait_for_the_copy_of_a_non_contiguous_tensor() -> None:
    # A non-contiguous tensor is copied on the caller's stream: NCCL's stream must wait
    # for that copy, so the wait comes after it (it came before: NCCL could read the
    # copy's memory before the copy was done).
    comm, log, _ = _fake_nccl()
    comm.send(_FakeTensor(log, contiguous=False), 1)
    assert (
        log.index(("copy", "current")) < log.index(("wait", "send", "current")) < log.index(("nccl", "send"))
    )
    log.clear()
    comm.allreduce(_FakeTensor(log, contiguous=False), _FakeTensor(log))
    assert log.index(("copy", "current")) < log.index(("wait", "coll", "current"))
    assert log.index(("wait", "coll", "current")) < log.index(("nccl", "allReduce"))


def test_nccl_waits_on_a_late_peer_poll_slower_after_the_first_milliseconds() -> None:
    from raycg.transports import ChannelTimeout

    comm, _, polls = _fake_nccl(done=False)
    with pytest.raises(ChannelTimeout, match="a member never joined"):
        comm._wait(_FakeStream("recv", []), 1.0, "recv from rank(s) [1]")
    # 2 ms at 20 µs, then at most 2 ms between polls: about 600 in the second (it was a
    # poll every 20 µs throughout: tens of thousands, a core kept busy).
    assert polls[0] < 800, polls[0]


def test_a_queued_nccl_receive_returns_before_it_completes_and_waits_when_asked() -> None:
    # overlap_gpu_communication: the receive is queued on the receive stream and the
    # caller's stream waits for it only in wait(), when the task that reads it starts.
    comm, log, polls = _fake_nccl()
    alloc = lambda shape, dtype: _FakeTensor(log)  # noqa: E731
    tensors, wait = comm.recv_batch_queued([((4,), "torch.float32", 1, alloc)])
    assert len(tensors) == 1 and polls[0] == 0
    assert log[-2:] == [("nccl", "recv"), ("record", "recv")]
    assert ("wait_event", "current") not in log
    wait()
    assert polls[0] >= 1 and log[-1] == ("wait_event", "current")


def test_a_queued_nccl_receive_that_never_completes_times_out_in_wait() -> None:
    from raycg.transports import ChannelTimeout

    comm, log, _ = _fake_nccl(done=False)
    _, wait = comm.recv_batch_queued(
        [((4,), "torch.float32", 1, lambda shape, dtype: _FakeTensor(log))], timeout_s=0.05
    )
    with pytest.raises(ChannelTimeout, match="a member never joined"):
        wait()
