"""raycg's CPU communicator across nodes: shared memory within a node, gRPC between.

A member opens ``CpuNetCommunicator(spec, rank)`` with the :class:`CpuNetSpec` joined
from every node's :class:`CpuNetNode` (_cpu_comm_net_node). Same interface, semantics
and errors as :class:`CpuCommunicator`, whose segment protocol it reuses.

Why hierarchical. The members of one node share their node's CpuCommGroup segment, as
on one node (a copy in, a futex, a copy out: microseconds); only each node's *leader*
(its lowest rank) talks to other nodes, over the project's cross-node channel, a gRPC
stream into a ring on the other node (_cpu_comm_net_links). So a value crosses the
network once per pair of nodes, not once per pair of members; a group needs one stream
per ordered pair of nodes, not of ranks; and the links keep that channel's order, flow
control, keepalives and broken-stream detection. A flat ring or star over gRPC among
all members would send k times the bytes out of a node of k members, and pay a
Python gRPC hop (~100 µs here) at every member instead of one per node.

Results equal torch's reference bit for bit: every element is reduced by one process,
in rank order, from every rank's own contribution (never from a node's partial sums,
whose order would differ). Above 64 KiB an allreduce is split by nodes: leader ``n``
gets chunk ``n`` of every other node's contributions, reduces it, and sends it back to
every other leader (for 2 nodes of 2 members, each leader sends 1.5x the data, as in a
ring allreduce); below, the leaders swap whole contributions and each reduces it all
(one network trip instead of two).

Epoch ``e`` (one per piece of at most capacity_bytes), on each node::

    every member   wait until all are DONE e-1; copy in; ARRIVED e
    the leader     wait until all ARRIVED e; exchange with the other leaders, writing
                   the node's result region; REDUCED e
    the others     REDUCED e; wait until all are REDUCED e (the leader last)
    every member   copy its result out; DONE e

A wait past its timeout aborts the communicator and raises ChannelTimeout. An abort
reaches every node: the leader's waits on its segment check its links between sleeps,
its waits on links check the segment, and a leader that meets an abort closes its links
(in the background: a gRPC close waits for the other side), so every member of every
node wakes with ChannelClosed within about 0.1 s.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ._channel import Channel
from ._communicator import Allocator, ReduceOp
from ._cpu_comm import DEFAULT_TIMEOUT_S, SegmentMember, _check_cpu, _put, sliced
from ._cpu_comm_net_leader import Leader
from ._cpu_comm_net_links import Links
from ._cpu_comm_net_node import CpuNetSpec, p2p_id
from ._cpu_comm_segment import ARRIVED, DONE, REDUCED, MemberSegment
from ._deadline import deadline_after
from ._errors import ChannelClosed, ChannelError
from ._shm_reader import ShmRingReader
from ._shm_writer import ShmRingWriter

__all__ = ["CpuNetCommunicator"]

_CLOSE_JOIN_S = 10.0

# put(my region); exchange(regions, deadline, what) on the leader; take(regions)
Put = Callable[[Any], object]
Exchange = Callable[[list[Any], float, str], None]
Take = Callable[[list[Any]], object]


class CpuNetCommunicator(SegmentMember):
    """One member of a cross-node CPU communicator.

    Args:
        spec: the group's spec (:func:`~raycg.transports._cpu_comm_net_node.join_specs`).
        rank: join at once as this rank (else call :meth:`initialize`).
        timeout_s: the default timeout of every blocking call (None: wait forever).
    """

    def __init__(
        self, spec: CpuNetSpec, rank: int | None = None, *, timeout_s: float | None = DEFAULT_TIMEOUT_S
    ):
        self.spec = spec
        self.timeout_s = timeout_s
        self._rank: int | None = None
        self._seg: MemberSegment | None = None
        self._links: Links | None = None  # a node leader's, and its side of each collective:
        self._leader: Leader | None = None
        self._epoch = 0
        self._writers: dict[int, Channel] = {}  # peer -> ShmRingWriter, or GrpcWriter (lazily)
        self._readers: dict[int, ShmRingReader] = {}
        self._lock = threading.Lock()  # guards _closer (abort may come from any thread)
        self._closer: threading.Thread | None = None
        self._destroyed = False
        # rank -> (its node, its index there)
        self._where = {r: (n, i) for n, ranks in enumerate(spec.ranks) for i, r in enumerate(ranks)}
        if rank is not None:
            self.initialize(rank)

    def __repr__(self) -> str:
        return (
            f"CpuNetCommunicator({self.spec.name!r}, rank={self._rank}, world_size={self.get_world_size()})"
        )

    # --- membership -------------------------------------------------------------

    def initialize(self, rank: int) -> None:
        """Join as ``rank``; a node's leader connects to the other nodes' leaders.

        Raises:
            ValueError: ``rank`` out of range, or already initialized.
            ChannelBroken: this node's part is gone, or another node cannot be reached.
        """
        spec = self.spec
        if self._rank is not None:
            raise ValueError(f"{self!r} is initialized already")
        if rank not in self._where:
            raise ValueError(f"rank {rank} out of range for a group of {spec.world_size}")
        self._node, self._index = self._where[rank]
        mine, part = spec.ranks[self._node], spec.nodes[self._node]
        self._seg = MemberSegment(part.local, self._index, labels=mine)
        self._rank = rank
        try:
            for (src, dst), ring in part.local.p2p.items():
                if src == self._index:
                    self._writers[mine[dst]] = ShmRingWriter(ring)
                elif dst == self._index:
                    self._readers[mine[src]] = ShmRingReader(ring, 0)
            for src in self._where:
                ring_spec = part.inbound.get(p2p_id(spec.group_id, src, rank))
                if ring_spec is not None:
                    self._readers[src] = ShmRingReader(ring_spec, 0)
            if self._index == 0:
                # A weak reference: the links must not hold their communicator (a cycle
                # would keep a dropped, never destroyed, member's rings and streams
                # until the collector ran, not until its last reference went).
                this = weakref.ref(self)
                self._links = Links(spec, self._node, lambda: (c := this()) is None or c.aborted)
                self._leader = Leader(spec, self._node, self._links)
        except BaseException:
            self.destroy()
            raise

    # --- point to point ---------------------------------------------------------

    def send(self, tensor: Any, peer_rank: int, timeout_s: float | None = None) -> None:
        """Send ``tensor`` (CPU) to ``peer_rank``: into its ring if it is on this node,
        else over a gRPC stream into its ring there (opened at the first send).

        Raises:
            ValueError: a bad peer rank, or a tensor not on the CPU.
            ChannelTimeout: the peer did not take earlier sends in time (aborted).
        """
        self._check_open()
        _check_cpu(tensor, "send")
        writer = self._writers.get(peer_rank)
        if writer is None:
            writer = self._open_remote_writer(peer_rank)
        value, timeout = tensor.detach(), self._timeout(timeout_s)

        def write() -> None:
            if isinstance(writer, ShmRingWriter):  # another member's abort wakes no ring of ours
                sliced(lambda t: writer.write(value, t), timeout, lambda: self.aborted)
            else:  # a gRPC stream's write may have sent part of a value when it times out
                writer.write(value, timeout)

        self._guard(write, f"send to rank {peer_rank}")

    def _open_remote_writer(self, peer: int) -> Channel:
        from ._grpc_stream import GrpcTarget  # grpcio loads on the first remote send only
        from ._grpc_writer import GrpcChannelSpec, GrpcWriter

        node = self._where.get(peer, (self._node, -1))[0]
        sid = p2p_id(self.spec.group_id, self._rank, peer)  # type: ignore[arg-type]
        ring = self.spec.nodes[node].inbound.get(sid)
        if peer == self._rank or ring is None:
            raise self._bad_peer(peer, "send to")
        target = GrpcTarget(self.spec.nodes[node].address, sid)
        writer = self._guard(
            lambda: GrpcWriter(GrpcChannelSpec(ring.name, ring.nslots, (target,))), f"send to rank {peer}"
        )
        self._writers[peer] = writer
        return writer

    def recv(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        peer_rank: int,
        allocator: Allocator | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """The next tensor from ``peer_rank``; in ``allocator(shape, dtype)`` if given.

        Raises:
            ValueError: a bad peer rank.
            ChannelBroken: the peer sent something else than a ``shape`` ``dtype`` tensor.
            ChannelTimeout: nothing came in time (the communicator is aborted).
        """
        self._check_open()
        reader = self._readers.get(peer_rank)
        if reader is None or peer_rank == self._rank:
            raise self._bad_peer(peer_rank, "receive from")
        return self._received(reader, shape, dtype, peer_rank, allocator, timeout_s)

    def _bad_peer(self, peer: int, what: str) -> ValueError:
        if not self.spec.nodes[self._node].local.p2p and self.spec.world_size > 1:
            return ValueError(f"communicator {self.spec.name!r} was made without p2p rings")
        return ValueError(
            f"rank {self._rank} cannot {what} rank {peer}: peers are 0..{self.spec.world_size - 1}, "
            "other than itself"
        )

    # --- collectives ------------------------------------------------------------

    def allreduce(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: float | None = None
    ) -> None:
        """``recv_buf`` = the reduction of every member's ``send_buf``, in rank order.

        Raises:
            ValueError/TypeError: mismatched buffers, AVG of integers, an unknown op.
            ChannelTimeout: a member did not join in time (the communicator is aborted).
        """
        op = ReduceOp.of(op)
        send, out, finish = self._buffers(send_buf, recv_buf, 1, op, "allreduce")
        per = self._seg_capacity() // send.element_size()
        for p in range(0, send.numel(), per):
            k = min(per, send.numel() - p)
            self._collective(
                "allreduce",
                timeout_s,
                send.dtype,
                functools.partial(_put, send[p : p + k]),
                functools.partial(self._exchange("allreduce"), k, op),
                functools.partial(_take_result, out[p : p + k], self._nlocal, 0),
            )
        finish()

    def allgather(self, send_buf: Any, recv_buf: Any, timeout_s: float | None = None) -> None:
        """``recv_buf`` = every member's ``send_buf``, in rank order (world_size x the
        elements of ``send_buf``).

        Raises:
            ValueError/TypeError: mismatched buffers.
            ChannelTimeout: a member did not join in time (the communicator is aborted).
        """
        world = self.spec.world_size
        send, out, finish = self._buffers(send_buf, recv_buf, -world, None, "allgather")
        m = send.numel()
        per = max(1, self._seg_capacity() // send.element_size() // world)  # every piece in one region

        def take(p: int, k: int, regions: list[Any]) -> None:
            for r in range(world):
                n, i = self._where[r]
                src = regions[i][:k] if n == self._node else regions[self._nlocal][r * k : (r + 1) * k]
                out[r * m + p : r * m + p + k].copy_(src)

        for p in range(0, m, per):
            k = min(per, m - p)
            put = functools.partial(_put, send[p : p + k])
            self._collective(
                "allgather",
                timeout_s,
                send.dtype,
                put,
                functools.partial(self._exchange("allgather"), k),
                functools.partial(take, p, k),
            )
        finish()

    def reducescatter(
        self, send_buf: Any, recv_buf: Any, op: ReduceOp = ReduceOp.SUM, timeout_s: float | None = None
    ) -> None:
        """``recv_buf`` = chunk ``rank`` of the reduction of every ``send_buf`` (which has
        world_size x the elements of ``recv_buf``).

        Raises:
            ValueError/TypeError: mismatched buffers, AVG of integers, an unknown op.
            ChannelTimeout: a member did not join in time (the communicator is aborted).
        """
        op = ReduceOp.of(op)
        world = self.spec.world_size
        send, out, finish = self._buffers(send_buf, recv_buf, world, op, "reducescatter")
        m = out.numel()
        per = max(1, self._seg_capacity() // send.element_size() // world)

        def put(p: int, k: int, region: Any) -> None:  # chunk i of the piece at i * k
            for i in range(world):
                region[i * k : (i + 1) * k].copy_(send[i * m + p : i * m + p + k])

        for p in range(0, m, per):
            k = min(per, m - p)
            take = functools.partial(_take_result, out[p : p + k], self._nlocal, self._index * k)
            self._collective(
                "reducescatter",
                timeout_s,
                send.dtype,
                functools.partial(put, p, k),
                functools.partial(self._exchange("reducescatter"), k, op),
                take,
            )
        finish()

    def broadcast(self, buf: Any, root_rank: int, timeout_s: float | None = None) -> None:
        """``buf`` = ``root_rank``'s ``buf``, on every member.

        Raises:
            ValueError: a bad root rank.
            ChannelTimeout: a member did not join in time (the communicator is aborted).
        """
        if root_rank not in self._where:
            raise ValueError(f"root_rank {root_rank} out of range for a group of {self.spec.world_size}")
        flat, out, finish = self._buffers(buf, buf, 1, None, "broadcast")
        per = self._seg_capacity() // flat.element_size()
        root_node, root_index = self._where[root_rank]
        is_root = root_rank == self._rank
        # Where the root's piece is on this node: its region, or (elsewhere) the result.
        src = root_index if root_node == self._node else self._nlocal

        def put(p: int, k: int, region: Any) -> None:
            if is_root:
                region[:k].copy_(flat[p : p + k])

        def take(p: int, k: int, regions: list[Any]) -> None:
            if not is_root:
                out[p : p + k].copy_(regions[src][:k])

        for p in range(0, flat.numel(), per):
            k = min(per, flat.numel() - p)
            parts = [functools.partial(f, p, k) for f in (put, take)]
            exchange = functools.partial(self._exchange("broadcast"), root_rank, k)
            self._collective("broadcast", timeout_s, flat.dtype, parts[0], exchange, parts[1])
        finish()

    # --- the epoch protocol -----------------------------------------------------

    def _collective(
        self, name: str, timeout_s: float | None, dtype: Any, put: Put, exchange: Exchange, take: Take
    ) -> None:
        """One epoch (see the module's docstring); any fault aborts the communicator."""
        self._check_open()
        self._epoch += 1
        e = self._epoch
        deadline = deadline_after(self._timeout(timeout_s))
        what = f"{name} #{e}"
        seg = self._seg
        assert seg is not None
        leader = self._links is not None
        poll = self._links.check if self._links is not None else None
        try:
            seg.wait_all(DONE, e - 1, deadline, what, self.abort, poll)  # our regions are free
            regions = seg.regions(dtype)
            put(regions[self._index])
            seg.mark(ARRIVED, e)
            if leader:
                seg.wait_all(ARRIVED, e, deadline, what, self.abort, poll)
                exchange(regions, deadline, what)
                seg.mark(REDUCED, e)
            else:
                seg.mark(REDUCED, e)
                seg.wait_all(REDUCED, e, deadline, what, self.abort)
            take(regions)
            seg.mark(DONE, e)
        except ChannelClosed as err:
            self.abort()  # a leader passes an abort on to the other nodes
            raise self._aborted_error() from err
        except ChannelError:
            self.abort()
            raise

    def _exchange(self, name: str) -> Any:
        """The leader's side of collective ``name`` (never called on another member)."""
        return _only_leaders if self._leader is None else getattr(self._leader, name)

    @property
    def _nlocal(self) -> int:
        return len(self.spec.ranks[self._node])

    def _seg_capacity(self) -> int:
        return self.spec.nodes[self._node].local.capacity_bytes

    def _abort_seen(self) -> None:
        self.abort()  # a leader that meets an abort passes it on to the other nodes

    # --- the end ----------------------------------------------------------------

    def abort(self) -> None:
        """Stop every member's calls (ChannelClosed), on every node, and wake their
        waits. Idempotent; never blocks (the links close on a thread of their own)."""
        if self._seg is not None:
            self._seg.abort()
        for end in [*self._readers.values(), *self._writers.values()]:
            if isinstance(end, (ShmRingReader, ShmRingWriter)):
                end.close()  # a ring close wakes its waiters at once, in every process
        if self._links is not None:
            self._links.close_inbound()
        with self._lock:
            if self._closer is None and not self._destroyed and self._network_ends():
                self._closer = threading.Thread(
                    target=self._close_network, name=f"raycg-comm-abort:{self.spec.name}", daemon=True
                )
                self._closer.start()

    def _network_ends(self) -> list[Any]:
        remote = [w for w in self._writers.values() if not isinstance(w, ShmRingWriter)]
        return remote + ([self._links] if self._links is not None else [])

    def _close_network(self) -> None:
        for end in self._network_ends():
            end.close()

    def destroy(self) -> None:
        """Leave: close this member's rings, links and streams, unmap the segment.
        Idempotent.

        Closing a ring closes it for the peer too, so destroy once every peer has
        received what this member sent (at teardown, as Ray's destroy is called).
        """
        with self._lock:
            closer, self._destroyed = self._closer, True  # no abort starts a closer now
        if closer is not None:
            closer.join(_CLOSE_JOIN_S)  # an abort's: it closes the links and streams
        else:
            self._close_network()
        for end in [*self._readers.values(), *self._writers.values()]:
            try:
                end.close()
            except ChannelError:
                pass
        self._writers.clear()
        self._readers.clear()
        self._links = self._leader = None
        seg, self._seg = self._seg, None
        if seg is not None:
            seg.close()


def _only_leaders(*args: object) -> None:
    raise AssertionError("only a node's leader exchanges with the other nodes")


def _take_result(out: Any, result_index: int, offset: int, regions: list[Any]) -> None:
    out.copy_(regions[result_index][offset : offset + out.numel()])


if os.environ.get("RAYCG_COMM_FAULTS"):  # chaos runs only: see _communicator_faults
    from ._communicator_faults import install_from_env

    install_from_env(CpuNetCommunicator)
