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

from raycg.transports import ChannelClosed, ShmRing
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


def _job_channel(comm: Any, rank: int, device: str, meta: Any) -> list[str]:
    from raycg.transports import ShmRingReader, ShmRingWriter
    from raycg.transports._tensor_channel import TensorReader, TensorWriter

    bad = []
    shapes = [(3,), (2, 5), (0, 4), (7,)]
    if rank == 0:
        w = TensorWriter(comm, [1], ShmRingWriter(meta))
        for i, shape in enumerate(shapes):
            w.write(torch.full(shape, float(i), device=device), timeout_s=30)
        static = TensorWriter(comm, [1], static=((4,), torch.float32))
        static.write(torch.ones(4, device=device))
        try:
            static.write(torch.ones(5, device=device))
            bad.append("the broken static promise was not refused")
        except ValueError:
            pass
    else:
        r = TensorReader(comm, 0, ShmRingReader(meta, 0))
        for i, shape in enumerate(shapes):
            got = r.read(timeout_s=30)
            if tuple(got.shape) != shape or not torch.equal(got.cpu(), torch.full(shape, float(i))):
                bad.append(f"channel {shape}")
        got = TensorReader(comm, 0, static=((4,), torch.float32)).read(30)
        if not torch.equal(got.cpu(), torch.ones(4)):
            bad.append("static channel")
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


JOBS = {"collectives": _job_collectives, "p2p": _job_p2p, "channel": _job_channel, "stall": _job_stall}


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
def test_tensor_channel_dynamic_and_static_shapes(kind: str) -> None:
    with ShmRing(4, 1, name="twin.meta") as meta:
        assert _run(kind, "channel", meta.spec) == [[]] * WORLD


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
