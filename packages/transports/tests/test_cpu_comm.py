"""The CPU communicator among real processes: results equal torch's reference for every
ReduceOp and several dtypes; p2p; stalls and deaths end in the documented errors and
leave nothing blocked."""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import pytest

from raycg.transports import ChannelBroken, ChannelClosed, ChannelTimeout
from raycg.transports._communicator import ReduceOp
from raycg.transports._cpu_comm import CpuCommGroup, CpuCommunicator

torch = pytest.importorskip("torch")

SPAWN = multiprocessing.get_context("spawn")
WORLD = 4
DTYPES = ["float32", "float64", "bfloat16", "float16", "int32", "int64"]
# Small capacity: the large cases take several epochs, and reduce split by chunks.
CAPACITY = 128 << 10


def _input(rank: int, case: int, dtype: Any, n: int, op: ReduceOp | None = None) -> Any:
    g = torch.Generator().manual_seed(1000 * case + rank)
    if dtype.is_floating_point:
        x = torch.rand(n, generator=g, dtype=torch.float64) + (0.5 if op is ReduceOp.PRODUCT else -0.5)
        return x.to(dtype)
    hi = 3 if op is ReduceOp.PRODUCT else 1000
    return torch.randint(1, hi, (n,), generator=g, dtype=dtype)


def _reference(op: ReduceOp, tensors: list[Any]) -> Any:
    fn = {ReduceOp.PRODUCT: torch.mul, ReduceOp.MAX: torch.maximum, ReduceOp.MIN: torch.minimum}.get(
        op, torch.add
    )
    out = functools.reduce(fn, tensors)
    return out / len(tensors) if op is ReduceOp.AVG else out


def _cases() -> list[tuple[str, ReduceOp, int]]:
    cases = []
    for d in DTYPES:
        for op in ReduceOp:
            if op is ReduceOp.AVG and not d.startswith(("float", "bfloat")):
                continue
            cases.append((d, op, 257))  # one epoch, each member reduces it all
    # Several epochs, the first split by chunks among the members.
    cases += [("float32", op, 40_000) for op in ReduceOp] + [("int64", ReduceOp.SUM, 20_000)]
    return cases


def _check_collectives(comm: CpuCommunicator, rank: int) -> list[str]:
    """Every collective against the reference, computed here from every rank's inputs."""
    bad = []
    for case, (d, op, n) in enumerate(_cases()):
        dtype = getattr(torch, d)
        ins = [_input(r, case, dtype, n, op) for r in range(WORLD)]
        out = torch.empty(n, dtype=dtype)
        comm.allreduce(ins[rank], out, op)
        if not torch.equal(out, _reference(op, ins)):
            bad.append(f"allreduce {d} {op.name} n={n}")
        if op in (ReduceOp.SUM, ReduceOp.MAX):
            big = [_input(r, case, dtype, WORLD * n, op) for r in range(WORLD)]
            part = torch.empty(n, dtype=dtype)
            comm.reducescatter(big[rank], part, op)
            if not torch.equal(part, _reference(op, big)[rank * n : (rank + 1) * n]):
                bad.append(f"reducescatter {d} {op.name} n={n}")
    for n in (5, 40_000):  # one epoch; three
        mine = torch.arange(n, dtype=torch.float32) + 1000 * rank
        gathered = torch.empty(WORLD, n)  # a 2-D buffer: filled in rank order
        comm.allgather(mine, gathered)
        if not torch.equal(
            gathered, torch.stack([torch.arange(n, dtype=torch.float32) + 1000 * r for r in range(WORLD)])
        ):
            bad.append(f"allgather n={n}")
        for root in range(WORLD):
            buf = torch.full((n,), float(rank), dtype=torch.float64)
            comm.broadcast(buf, root)
            if not torch.equal(buf, torch.full((n,), float(root), dtype=torch.float64)):
                bad.append(f"broadcast n={n} root={root}")
    # A non-contiguous output and an in-place allreduce.
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4) * (rank + 1)
    out = torch.empty(4, 3).t()
    comm.allreduce(x, out)
    comm.allreduce(x, x)
    want = torch.arange(12, dtype=torch.float32).reshape(3, 4) * sum(range(1, WORLD + 1))
    if not (torch.equal(out, want) and torch.equal(x, want)):
        bad.append("non-contiguous / in-place allreduce")
    return bad


def _check_p2p(comm: CpuCommunicator, rank: int) -> list[str]:
    bad = []
    nxt, prev = (rank + 1) % WORLD, (rank - 1) % WORLD
    for n in (3, 300_000):  # small (copied) and large (zero-copy in the ring)
        comm.send(torch.full((n,), rank, dtype=torch.int64), nxt)
        got = comm.recv(
            (n,), torch.int64, prev, allocator=lambda shape, dtype: torch.zeros(shape, dtype=dtype)
        )
        if not torch.equal(got, torch.full((n,), prev, dtype=torch.int64)):
            bad.append(f"p2p n={n}")
    comm.send(torch.ones(2, 3, dtype=torch.bfloat16), nxt)
    got = comm.recv((2, 3), torch.bfloat16, prev)
    if not torch.equal(got, torch.ones(2, 3, dtype=torch.bfloat16)):
        bad.append("p2p bfloat16")
    # destroy() closes this member's rings: only once every peer has read what it sent.
    comm.allreduce(torch.zeros(1), torch.zeros(1))
    return bad


def _member(spec: Any, rank: int, job: str, conn: Any, stall_rank: int | None = None) -> None:
    """A member in its own process: runs ``job``, sends back its outcome."""
    import torch

    if stall_rank is not None:
        from raycg.transports._communicator_faults import Stall, install

        install([Stall(rank=stall_rank, op="allreduce")])
    comm = CpuCommunicator(spec, timeout_s=60)
    try:
        comm.initialize(rank)
        t0 = time.monotonic()
        if job == "collectives":
            outcome: Any = _check_collectives(comm, rank)
        elif job == "p2p":
            outcome = _check_p2p(comm, rank)
        else:  # "stall", "death": one allreduce with a short timeout
            conn.send("ready")
            x = torch.ones(1000)
            try:
                comm.allreduce(x, x, timeout_s=3)
                outcome = ("ok", time.monotonic() - t0)
            except Exception as e:
                outcome = (type(e).__name__, time.monotonic() - t0, str(e))
        conn.send(outcome)
    finally:
        comm.destroy()


def _run(spec: Any, job: str, stall_rank: int | None = None) -> list[Any]:
    pipes, procs = [], []
    for r in range(WORLD):
        parent, child = SPAWN.Pipe()
        p = SPAWN.Process(target=_member, args=(spec, r, job, child, stall_rank), daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    try:
        if job in ("stall",):
            assert [c.recv() for c in pipes] == ["ready"] * WORLD
        return [c.recv() for c in pipes]
    finally:
        for p in procs:
            p.join(60)  # every member returns: nothing stays blocked
            assert p.exitcode == 0, p.exitcode
            p.close()
        for c in pipes:
            c.close()


def test_collectives_equal_torch_reference_for_every_op_and_dtype() -> None:
    with CpuCommGroup(WORLD, capacity_bytes=CAPACITY, p2p=False, name="coll") as group:
        assert _run(group.spec, "collectives") == [[]] * WORLD


def test_point_to_point_between_processes() -> None:
    with CpuCommGroup(WORLD, capacity_bytes=CAPACITY, name="p2p") as group:
        assert _run(group.spec, "p2p") == [[]] * WORLD


def test_a_member_that_never_joins_times_out_and_aborts_the_group() -> None:
    # The stall_communicator scenario: rank 2 stalls in allreduce (the fault hook).
    with CpuCommGroup(WORLD, p2p=False, name="stall") as group:
        outcomes = _run(group.spec, "stall", stall_rank=2)
    kinds = [o[0] for o in outcomes]
    assert "ChannelTimeout" in kinds, outcomes
    assert set(kinds) <= {"ChannelTimeout", "ChannelClosed"}, outcomes
    assert kinds[2] == "ChannelClosed"  # the abort ended its stall; it never joined
    for kind, elapsed, message in outcomes:
        assert elapsed < 30, outcomes  # the 3 s timeout, not the 60 s default or the stall
        if kind == "ChannelTimeout":
            assert "rank(s) 2 never joined" in message and "aborted" in message


def test_a_dead_member_is_reported_broken() -> None:
    with CpuCommGroup(2, p2p=False, name="dead") as group:
        a = CpuCommunicator(group.spec, 0, timeout_s=60)
        parent, child = SPAWN.Pipe()
        p = SPAWN.Process(target=_idle_member, args=(group.spec, 1, child), daemon=True)
        p.start()
        child.close()
        assert parent.recv() == "joined"
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        p.join()
        with pytest.raises(ChannelBroken, match=r"rank 1 \(pid \d+\) died"):
            a.allreduce(torch.ones(3), torch.empty(3))
        with pytest.raises(ChannelClosed):  # the death aborted the group
            a.allreduce(torch.ones(3), torch.empty(3))
        a.destroy()
        p.close()
        parent.close()


def _idle_member(spec: Any, rank: int, conn: Any) -> None:
    CpuCommunicator(spec, rank)
    conn.send("joined")
    time.sleep(600)


def test_abort_wakes_a_waiter_in_another_thread() -> None:
    with CpuCommGroup(2, name="abort") as group:
        a, b = CpuCommunicator(group.spec, 0, timeout_s=None), CpuCommunicator(group.spec, 1)
        errors: list[BaseException] = []

        def blocked(call: Any) -> None:
            try:
                call()
            except BaseException as e:
                errors.append(e)

        threads = [
            threading.Thread(target=blocked, args=(lambda: a.allreduce(torch.ones(4), torch.empty(4)),)),
            threading.Thread(target=blocked, args=(lambda: b.recv((2,), torch.float32, 0, timeout_s=None),)),
        ]
        for t in threads:
            t.start()
        time.sleep(0.3)
        b.abort()  # from yet another thread: every waiter of every member wakes
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        assert [type(e) for e in errors] == [ChannelClosed, ChannelClosed]
        with pytest.raises(ChannelClosed, match="aborted"):
            a.broadcast(torch.ones(2), 0)
        a.destroy()
        b.destroy()


def test_an_abort_wakes_a_transfer_between_two_other_members() -> None:
    # a aborts; b waits on c's ring to it (a receive) and on its own full ring to c (a
    # send): neither ring is a's, and both wake with ChannelClosed, not at their timeouts.
    with CpuCommGroup(3, name="abort3") as group:
        a, b, c = (CpuCommunicator(group.spec, r, timeout_s=None) for r in range(3))
        for k in range(4):  # the ring from b to c holds 4 values: the fifth send waits
            b.send(torch.full((2,), float(k)), 2)
        errors: list[BaseException] = []

        def blocked(call: Any) -> None:
            try:
                call()
            except BaseException as e:
                errors.append(e)

        threads = [
            threading.Thread(target=blocked, args=(lambda: b.recv((2,), torch.float32, 2),)),
            threading.Thread(target=blocked, args=(lambda: b.send(torch.ones(2), 2),)),
        ]
        for t in threads:
            t.start()
        time.sleep(0.3)
        assert not errors
        a.abort()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        assert [type(e) for e in errors] == [ChannelClosed, ChannelClosed], errors
        for comm in (a, b, c):
            comm.destroy()


def test_bad_arguments_are_named() -> None:
    with CpuCommGroup(2, name="bad") as group:
        c = CpuCommunicator(group.spec, 0)
        with pytest.raises(ValueError, match="rank 0 cannot send to rank 0"):
            c.send(torch.ones(1), 0)
        with pytest.raises(ValueError, match="cannot receive from rank 5"):
            c.recv((1,), torch.float32, 5)
        with pytest.raises(TypeError, match=r"AVG of torch\.int64"):
            c.allreduce(torch.ones(2, dtype=torch.int64), torch.empty(2, dtype=torch.int64), ReduceOp.AVG)
        with pytest.raises(ValueError, match="send_buf has 4 elements, recv_buf 3"):
            c.allreduce(torch.ones(4), torch.empty(3))
        with pytest.raises(ValueError, match="unknown reduce op 'mean'"):
            c.allreduce(torch.ones(4), torch.empty(4), "mean")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"float32 but recv_buf is torch\.float64"):
            c.allgather(torch.ones(2), torch.empty(4, dtype=torch.float64))
        with pytest.raises(TypeError, match=r"takes torch tensors, got numpy\.ndarray"):
            import numpy as np

            c.send(np.ones(2), 1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="rank 2 out of range"):
            CpuCommunicator(group.spec, 2)
        with pytest.raises(ValueError, match="initialized already"):
            c.initialize(1)
        c.destroy()
        with pytest.raises(ChannelClosed, match="destroyed"):
            c.allreduce(torch.ones(2), torch.empty(2))


def test_a_lone_timeout_raises_channel_timeout_in_time() -> None:
    with CpuCommGroup(2, p2p=False, name="lone") as group:
        c = CpuCommunicator(group.spec, 0)
        t0 = time.monotonic()
        with pytest.raises(ChannelTimeout, match=r"rank\(s\) 1 never joined"):
            c.allreduce(torch.ones(2), torch.empty(2), timeout_s=0.5)
        assert c.aborted and time.monotonic() - t0 < 20
        c.destroy()
