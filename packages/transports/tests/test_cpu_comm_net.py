"""The cross-node CPU communicator among real processes, two "nodes" on loopback: each
node its own segment, rings and gRPC server, its members in their own processes.
Results equal torch's reference for every ReduceOp (the same checks as the one-node
communicator's); p2p within and across nodes; stalls, aborts and deaths end in the
documented errors on every node and leave nothing blocked."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from grpc_testing import warm_up_grpc
from test_cpu_comm import SPAWN, _check_collectives, _check_p2p

from raycg.transports import ChannelBroken, ChannelClosed, ChannelTimeout, GrpcServer
from raycg.transports._cpu_comm_net import CpuNetCommunicator
from raycg.transports._cpu_comm_net_node import CpuNetNode, CpuNetSpec, join_specs

torch = pytest.importorskip("torch")

WORLD = 4
CAPACITY = 128 << 10  # small: large cases take several epochs, and allreduce splits


@pytest.fixture(scope="module", autouse=True)
def _grpc_pollers() -> None:
    warm_up_grpc()


@contextlib.contextmanager
def group(ranks: Sequence[Sequence[int]], *, p2p: bool = False, name: str = "net") -> Iterator[CpuNetSpec]:
    """Every node's part, each with a loopback server of its own (one per "node")."""
    servers = [GrpcServer("127.0.0.1:0") for _ in ranks]
    parts: list[CpuNetNode] = []
    try:
        for n, server in enumerate(servers):
            gid = parts[0].group_id if parts else None
            parts.append(
                CpuNetNode(ranks, n, server, group_id=gid, name=name, capacity_bytes=CAPACITY, p2p=p2p)
            )
        yield join_specs(name, parts[0].group_id, ranks, [p.spec for p in parts])
    finally:
        for p in parts:
            p.close()
        for s in servers:
            s.stop(grace_s=0.2)


def _member(spec: CpuNetSpec, rank: int, job: str, conn: Any, stall_rank: int | None = None) -> None:
    """A member in its own process: runs ``job``, sends back its outcome."""
    if stall_rank is not None:
        from raycg.transports._communicator_faults import Stall, install

        install([Stall(rank=stall_rank, op="allreduce")], CpuNetCommunicator)
    comm = CpuNetCommunicator(spec, timeout_s=60)
    try:
        comm.initialize(rank)
        t0 = time.monotonic()
        if job == "collectives":
            outcome: Any = _check_collectives(comm, rank)  # type: ignore[arg-type]
        elif job == "p2p":
            outcome = _check_p2p(comm, rank)  # type: ignore[arg-type]
        elif job == "idle":
            conn.send("joined")
            time.sleep(600)
            return
        else:  # "stall": one allreduce with a short timeout
            conn.send("ready")
            x = torch.ones(1000)
            try:
                comm.allreduce(x, x, timeout_s=3)
                outcome = ("ok", time.monotonic() - t0, "")
            except Exception as e:
                outcome = (type(e).__name__, time.monotonic() - t0, str(e))
        conn.send(outcome)
        # A collective returns on a node once that node has its result, maybe before the
        # other nodes have read its data: leave once every member is done (at teardown).
        conn.poll(60)
    finally:
        comm.destroy()


def _run(spec: CpuNetSpec, job: str, stall_rank: int | None = None) -> list[Any]:
    pipes, procs = [], []
    for r in range(spec.world_size):
        parent, child = SPAWN.Pipe()
        p = SPAWN.Process(target=_member, args=(spec, r, job, child, stall_rank), daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    try:
        if job == "stall":
            assert [c.recv() for c in pipes] == ["ready"] * spec.world_size
        outcomes = [c.recv() for c in pipes]
        for c in pipes:
            c.send("leave")
        return outcomes
    finally:
        for p in procs:
            p.join(60)  # every member returns: nothing stays blocked
            assert p.exitcode == 0, p.exitcode
            p.close()
        for c in pipes:
            c.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks", [((0, 2), (1, 3)), ((0,), (1, 2, 3))], ids=["interleaved", "uneven"])
def test_collectives_equal_torch_reference_across_nodes(ranks: Any) -> None:
    with group(ranks) as spec:
        assert _run(spec, "collectives") == [[]] * WORLD


def test_point_to_point_within_and_across_nodes() -> None:
    # 0 -> 1 and 2 -> 3 within a node, 1 -> 2 and 3 -> 0 across.
    with group(((0, 1), (2, 3)), p2p=True) as spec:
        assert _run(spec, "p2p") == [[]] * WORLD


@pytest.mark.parametrize("stall_rank", [2, 3], ids=["leader", "member"])
def test_a_member_that_never_joins_times_out_and_aborts_every_node(stall_rank: int) -> None:
    # The stall_communicator scenario on two nodes: rank 2 leads node 1, rank 3 does not.
    with group(((0, 1), (2, 3))) as spec:
        outcomes = _run(spec, "stall", stall_rank=stall_rank)
    kinds = [o[0] for o in outcomes]
    assert "ChannelTimeout" in kinds, outcomes
    assert set(kinds) <= {"ChannelTimeout", "ChannelClosed"}, outcomes
    assert kinds[stall_rank] == "ChannelClosed", outcomes  # the abort ended its stall
    for _kind, elapsed, _message in outcomes:
        assert elapsed < 30, outcomes  # the 3 s timeout, not the 60 s default or the stall


def _blocked(call: Any, errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            call()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_abort_on_one_node_wakes_the_waiters_of_the_other() -> None:
    with group(((0,), (1,)), p2p=True) as spec:
        a, b = CpuNetCommunicator(spec, 0, timeout_s=None), CpuNetCommunicator(spec, 1, timeout_s=None)
        errors: list[BaseException] = []
        threads = [
            _blocked(lambda: a.allreduce(torch.ones(4), torch.empty(4)), errors),
            _blocked(lambda: a.recv((2,), torch.float32, 1), errors),
        ]
        time.sleep(0.3)
        b.abort()  # node 1: node 0's waits (on its link, on its ring) end too
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        assert [type(e) for e in errors] == [ChannelClosed, ChannelClosed], errors
        with pytest.raises(ChannelClosed, match="aborted"):
            a.broadcast(torch.ones(2), 0)
        a.destroy()
        b.destroy()


def test_an_abort_wakes_a_transfer_between_two_other_members() -> None:
    # Rank 0 aborts; rank 1 (its node) waits to receive from rank 2 (the other node):
    # that ring is not rank 0's, and the wait ends with ChannelClosed all the same.
    with group(((0, 1), (2,)), p2p=True) as spec:
        comms = [CpuNetCommunicator(spec, r, timeout_s=None) for r in range(3)]
        errors: list[BaseException] = []
        thread = _blocked(lambda: comms[1].recv((2,), torch.float32, 2), errors)
        time.sleep(0.3)
        assert not errors
        comms[0].abort()
        thread.join(10)
        assert not thread.is_alive()
        assert [type(e) for e in errors] == [ChannelClosed], errors
        for comm in comms:
            comm.destroy()


def test_a_lone_member_times_out_naming_the_other_node() -> None:
    with group(((0,), (1,))) as spec:
        a = CpuNetCommunicator(spec, 0)
        b = CpuNetCommunicator(spec, 1)  # joined, but never calls
        t0 = time.monotonic()
        with pytest.raises(ChannelTimeout, match=r"nothing came from node 1 \(ranks 1\)"):
            a.allreduce(torch.ones(2), torch.empty(2), timeout_s=0.5)
        assert a.aborted and time.monotonic() - t0 < 20
        with pytest.raises(ChannelClosed, match="aborted"):  # the abort reaches node 1
            for _ in range(2):  # the first call may still meet a's contribution, sent before
                b.allreduce(torch.ones(2), torch.empty(2), timeout_s=10)
        a.destroy()
        b.destroy()


def test_a_local_timeout_names_the_rank_in_the_whole_group() -> None:
    with group(((0, 2), (1,))) as spec:
        a = CpuNetCommunicator(spec, 0)
        c = CpuNetCommunicator(spec, 2)  # node 0's other member: it never calls
        with pytest.raises(ChannelTimeout, match=r"rank\(s\) 2 never joined"):
            a.allreduce(torch.ones(2), torch.empty(2), timeout_s=0.5)
        a.destroy()
        c.destroy()


def test_a_dead_remote_leader_breaks_the_link() -> None:
    with group(((0,), (1,))) as spec:
        a = CpuNetCommunicator(spec, 0, timeout_s=30)
        parent, child = SPAWN.Pipe()
        p = SPAWN.Process(target=_member, args=(spec, 1, "idle", child), daemon=True)
        p.start()
        child.close()
        assert parent.recv() == "joined"
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        p.join()
        with pytest.raises(ChannelBroken):
            a.allreduce(torch.ones(3), torch.empty(3))
        with pytest.raises(ChannelClosed):  # the failure aborted the group
            a.allreduce(torch.ones(3), torch.empty(3))
        a.destroy()
        p.close()
        parent.close()


def test_bad_arguments_are_named() -> None:
    with group(((0,), (1,))) as spec:
        c = CpuNetCommunicator(spec, 0)
        with pytest.raises(ValueError, match="without p2p rings"):
            c.send(torch.ones(1), 1)
        with pytest.raises(ValueError, match="rank 5 out of range"):
            CpuNetCommunicator(spec, 5)
        with pytest.raises(ValueError, match="initialized already"):
            c.initialize(1)
        with pytest.raises(ValueError, match="root_rank 3 out of range"):
            c.broadcast(torch.ones(1), 3)
        with pytest.raises(ValueError, match="send_buf has 4 elements, recv_buf 3"):
            c.allreduce(torch.ones(4), torch.empty(3))
        c.destroy()
        with pytest.raises(ChannelClosed, match="destroyed"):
            c.allreduce(torch.ones(2), torch.empty(2))
    server = GrpcServer("127.0.0.1:0")
    try:
        with pytest.raises(ValueError, match=r"not 0\.\.3, each once"):
            CpuNetNode(((0, 1), (1, 2)), 0, server)
        with pytest.raises(ValueError, match="at least one rank"):
            CpuNetNode(((0, 1), ()), 0, server)
        with pytest.raises(ValueError, match="node 2 out of range"):
            CpuNetNode(((0,), (1,)), 2, server)
    finally:
        server.stop(grace_s=0.2)


def test_a_dropped_member_is_freed_at_once_without_a_collection() -> None:
    """Nothing of a node leader refers back to it: dropped without destroy, it goes with
    its last reference (its rings' and streams' finalizers run then), not at a collection."""
    with group(((0,), (1,))) as spec:
        b = CpuNetCommunicator(spec, 1)
        gc.collect()
        gc.disable()
        try:
            a = CpuNetCommunicator(spec, 0)
            gone = weakref.ref(a)
            del a
            assert gone() is None
        finally:
            gc.enable()
        b.destroy()
